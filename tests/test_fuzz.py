"""Fuzzing (reliability): generated graphs and mutated files.

* Generated graphs (hypothesis): random chains/DAGs of Conv (dense, depthwise, 1x1),
  Gemm/MatMul heads, Add/Mul/Concat, pools, Relu/Clip/Sigmoid/HardSwish/LeakyRelu, Reshape,
  Transpose, some inside If branches or a Loop body (weights captured from the outer
  scope); random node and tensor names (empty, duplicated, and names onnxq itself generates
  such as ``t_scale``); opsets 13–21; shared initializers; a dynamic batch axis. Property:
  ``quantize`` either raises an ``OnnxqError`` or returns a model that passes the full ONNX
  checker, loads in onnxruntime, has FP32's outputs and shapes, agrees with FP32 on the
  calibration feeds (cosine ≥ 0.95: the naming bugs this catches gave 0.01–0.4; from 0.8
  only where the report's self-check names the output as disagreeing — ``onnxq.self_check``:
  a pooled residual int8 cannot carry is told, never silent), is byte-identical when run
  again, and leaves the input unchanged.
* Mutations: bit flips, truncation and header edits of a serialized model and of an ``.npz``,
  through the CLI in a child process with a time limit. Property: exit 0 or 2, never 1 (an
  internal error), never a crash or a hang.

CI runs a bounded, derandomized profile; ``make fuzz`` runs a long random one
(``ONNXQ_FUZZ_EXAMPLES``, ``ONNXQ_FUZZ_MUTATIONS``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.errors import OnnxqError
from tests.conftest import cosine, run_model

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

EXAMPLES = int(os.environ.get("ONNXQ_FUZZ_EXAMPLES", "40"))
MUTATIONS = int(os.environ.get("ONNXQ_FUZZ_MUTATIONS", "24"))
LONG = "ONNXQ_FUZZ_EXAMPLES" in os.environ  # `make fuzz`: random, not the fixed CI profile

_NAMES = ["", "", "a", "b", "t", "t_scale", "t_quantized", "t_dequantized", "conv", "x_scale",
          "Conv_0", "w", "y_float"]


class _Net:
    """Builds one random network; tensors are (name, channels) at a fixed H = W."""

    def __init__(self, draw, opset: int) -> None:
        self.draw, self.opset = draw, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        self.count = 0

    def name(self, kind: str) -> str:
        """A node name: often empty or repeated, sometimes one onnxq would generate."""
        self.count += 1
        pick = self.draw(st.sampled_from(_NAMES + [f"{kind}{self.count}"] * 4))
        return pick

    def tensor(self, kind: str) -> str:
        self.count += 1
        base = self.draw(st.sampled_from(["t", "x_scale", "t_quantized", "v", "out"]))
        return f"{base}_{kind}{self.count}" if self.draw(st.booleans()) else f"{base}{self.count}"

    def const(self, value: np.ndarray, reuse: bool = True) -> str:
        if reuse:  # shared initializers: the same array used twice keeps one tensor
            for name, arr in self.inits.items():
                if arr.shape == value.shape and arr.dtype == value.dtype and self.draw(
                        st.booleans()):
                    return name
        name = f"w{len(self.inits)}"
        self.inits[name] = value.astype(np.float32)
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.tensor(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out


def _step(net: _Net, draw, tensors: list[tuple[str, int]]) -> tuple[str, int]:
    x, c = draw(st.sampled_from(tensors))
    op = draw(st.sampled_from(["conv", "conv", "dw", "pw", "act", "add", "mul", "concat",
                               "pool", "reshape", "transpose"]))
    rng = net.rng
    if op in ("conv", "dw", "pw"):
        k = 1 if op == "pw" else 3
        out_c = c if op == "dw" else draw(st.sampled_from([4, 8]))
        shape = (out_c, 1 if op == "dw" else c, k, k)
        w = rng.standard_normal(shape) * (0.5 / np.sqrt(np.prod(shape[1:])))
        inputs = [x, net.const(w, reuse=False)]
        if draw(st.booleans()):
            inputs.append(net.const(rng.standard_normal(out_c) * 0.1, reuse=False))
        return net.node("Conv", inputs, pads=[k // 2] * 4, group=c if op == "dw" else 1), out_c
    if op == "act":
        kind = draw(st.sampled_from(["Relu", "Clip", "Sigmoid", "HardSwish", "LeakyRelu"]))
        if kind == "Clip":
            return net.node("Clip", [x, net.const(np.float32(0.0)),
                                     net.const(np.float32(6.0))]), c
        if kind == "HardSwish" and net.opset < 14:
            kind = "Relu"
        return net.node(kind, [x]), c
    same = [t for t in tensors if t[1] == c]
    if op == "add":
        return net.node("Add", [x, draw(st.sampled_from(same))[0]]), c
    if op == "mul":
        return net.node("Mul", [x, net.const(rng.uniform(0.5, 1.5, (1, c, 1, 1)))]), c
    if op == "concat":
        y, cy = draw(st.sampled_from(tensors))
        return net.node("Concat", [x, y], axis=1), c + cy
    if op == "pool":
        kind = draw(st.sampled_from(["MaxPool", "AveragePool"]))
        return net.node(kind, [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), c
    if op == "reshape":
        shape = np.array([-1, c, 6, 6], np.int64)
        name = f"shape{len(net.inits)}"
        net.inits[name] = shape
        return net.node("Reshape", [x, name]), c
    return net.node("Transpose", [x], perm=[0, 1, 3, 2]), c


def _head(net: _Net, draw, out: str, c: int) -> str:
    pooled = net.node("GlobalAveragePool", [out])
    flat = net.node("Flatten", [pooled])
    head = draw(st.sampled_from(["Gemm", "MatMul"]))
    w = net.rng.standard_normal((c, 5)) / np.sqrt(c)
    if head == "Gemm":
        return net.node("Gemm", [flat, net.const(w, reuse=False),
                                 net.const(np.zeros(5), reuse=False)])
    return net.node("MatMul", [flat, net.const(w, reuse=False)])


def _body(net: _Net, build) -> tuple[list[onnx.NodeProto], str]:
    """Nodes that ``build()`` appends, taken out of the main graph (for a subgraph); their
    weights stay main-graph initializers (outer-scope captures)."""
    outer, net.nodes = net.nodes, []
    try:
        out = build()
        return net.nodes, out
    finally:
        net.nodes = outer


def _if_head(net: _Net, draw, tensors: list[tuple[str, int]]) -> str:
    """If(mean(input) > 0): each branch runs its own chain from an outer tensor + a head."""
    mean = net.node("ReduceMean", ["input"], keepdims=0)
    cond = net.node("Greater", [mean, net.const(np.float32(0.0), reuse=False)])
    branches = []
    for tag in ("then", "else"):
        def build():
            local = list(tensors)
            for _ in range(draw(st.integers(1, 3))):
                local.append(_step(net, draw, local))
            return _head(net, draw, *local[-1])
        nodes, out = _body(net, build)
        branches.append(helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(
            out, TensorProto.FLOAT, ["n", 5])]))
    y = net.tensor("if")
    net.nodes.append(helper.make_node("If", [cond], [y], name=net.name("If"),
                                      then_branch=branches[0], else_branch=branches[1]))
    return y


def _loop(net: _Net, draw, x: str, c: int) -> str:
    """Loop ×2 over a carried tensor: v = chain(v) with the channel count kept."""
    v_in, cond_in, i = net.tensor("v"), net.tensor("cond"), net.tensor("iter")

    def build():
        local = [(v_in, c)]
        for _ in range(draw(st.integers(1, 3))):
            y, cy = _step(net, draw, local)
            if cy != c:  # back to c channels with a 1x1 conv
                w = net.rng.standard_normal((c, cy, 1, 1)) / np.sqrt(cy)
                y = net.node("Conv", [y, net.const(w, reuse=False)])
            local.append((y, c))
        return local[-1][0]
    nodes, out = _body(net, build)
    cond_out = net.tensor("cond")
    nodes.append(helper.make_node("Identity", [cond_in], [cond_out], name=net.name("Id")))
    body = helper.make_graph(nodes, "body", [
        helper.make_tensor_value_info(i, TensorProto.INT64, []),
        helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
        helper.make_tensor_value_info(v_in, TensorProto.FLOAT, ["n", c, 6, 6])], [
        helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
        helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", c, 6, 6])])
    trips = f"trips{len(net.inits)}"
    net.inits[trips] = np.array(2, np.int64)
    y = net.tensor("loop")
    net.nodes.append(helper.make_node("Loop", [trips, "", x], [y], name=net.name("Loop"),
                                      body=body))
    return y


@st.composite
def graphs(draw):
    opset = draw(st.sampled_from([13, 14, 17, 19, 21]))
    net = _Net(draw, opset)
    tensors = [("input", 3)]
    for _ in range(draw(st.integers(1, 6))):
        tensors.append(_step(net, draw, tensors))
    flow = draw(st.sampled_from(["none", "none", "if", "loop"]))
    if flow == "loop":
        tensors.append((_loop(net, draw, *tensors[-1]), tensors[-1][1]))
    y = _if_head(net, draw, tensors) if flow == "if" else _head(net, draw, *tensors[-1])
    inits = [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k)
             for k, v in net.inits.items()]
    graph = helper.make_graph(
        net.nodes, "fuzz", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                          ["n", 3, 6, 6])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model, draw(st.integers(0, 2**16))


def _reference(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with unique node names: onnxruntime refuses duplicate node names, which
    onnxq must accept (ONNX node names are optional)."""
    from onnxq.scopes import renamed_nodes

    return renamed_nodes(model, "reference_")


def _feeds(seed: int, n: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.uniform(-1, 1, (2, 3, 6, 6)).astype(np.float32)} for _ in range(n)]


def _settings(examples: int):
    return hypothesis.settings(
        max_examples=examples, deadline=None, derandomize=not LONG, database=None,
        suppress_health_check=list(hypothesis.HealthCheck))


def _quantized(model: onnx.ModelProto, calib: list[dict], fmt: str):
    """onnxq's model (valid, the input untouched), or None where onnxq refused (cleanly)."""
    before = model.SerializeToString()
    try:
        result = onnxq.quantize(model, calib, progress=False, format=fmt, target="portable")
    except OnnxqError:
        result = None
    assert model.SerializeToString() == before
    if result is not None:
        onnx.checker.check_model(result.model, full_check=True)
    return result


def _agrees(reference, model, result, feeds, fmt: str, tiny: float, tol: float) -> None:
    """Outputs agree with the reference: cosine >= 0.95, or >= 0.8 where the self-check named
    the output (a residual int8 cannot carry: 0.84-0.95 seen; onnxq bugs gave 0.01-0.4)."""
    for feed in feeds:
        want = run_model(reference, feed)[0].astype(np.float32)
        got = run_model(result.model, feed)[0].astype(np.float32)
        assert want.shape == got.shape
        if np.abs(want).max() < tiny:  # e.g. everything clipped by a Relu: both must be ~0
            assert np.abs(got).max() < tol, (np.abs(got).max(), fmt)
        elif cosine(want, got) < 0.95:
            found = result.report.self_check or {}
            assert cosine(want, got) >= 0.8, (cosine(want, got), fmt)
            assert model.graph.output[0].name in found.get("below", []), (
                cosine(want, got), fmt, found)


@_settings(EXAMPLES)
@hypothesis.given(graphs(), st.sampled_from(["qdq", "qlinear"]))
def test_generated_graphs(case, fmt):
    model, seed = case
    reference = _reference(model)
    try:
        onnx.checker.check_model(reference, full_check=True)
        run_model(reference, _feeds(seed, 1)[0])
    except Exception:  # noqa: BLE001 - the generator made an invalid model: not our concern
        hypothesis.reject()
    # scored on the calibration feeds: min-max covers them, so any disagreement is onnxq's
    # doing, not a calibration set too small for a random network
    calib = _feeds(seed)
    result = _quantized(model, calib, fmt)
    if result is None:
        return
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    _agrees(reference, model, result, calib[:2], fmt, tiny=1e-6, tol=1e-3)
    again = onnxq.quantize(model, calib, progress=False, format=fmt, target="portable")
    assert again.model.SerializeToString() == result.model.SerializeToString()


@_settings(max(EXAMPLES // 4, 4))
@hypothesis.given(graphs(), st.sampled_from(["qdq", "qlinear"]))
def test_generated_graphs_in_float16(case, fmt):
    """The same graphs as half-precision exports (``builders.to_float16``): computed in
    float32 inside, float16 at the interface (``passes/float16.py``), same properties."""
    from tests import builders as B

    model, seed = case
    model = B.to_float16(model)
    reference = _reference(model)
    calib = [{k: v.astype(np.float16) for k, v in f.items()} for f in _feeds(seed)]
    try:
        onnx.checker.check_model(reference, full_check=True)
        outs = run_model(reference, calib[0])
    except Exception:  # noqa: BLE001 - the generator made an invalid model: not our concern
        hypothesis.reject()
    if not all(np.all(np.isfinite(o.astype(np.float32))) for o in outs):
        hypothesis.reject()  # float16 overflowed: FP32 inside is not comparable
    result = _quantized(model, calib, fmt)
    if result is None:
        return
    for got, want in zip(result.model.graph.output, model.graph.output, strict=True):
        assert (got.name, got.type.tensor_type.elem_type) == \
            (want.name, want.type.tensor_type.elem_type)
    _agrees(reference, model, result, calib[:2], fmt, tiny=1e-3, tol=1e-2)


# ---------------------------------------------------------------- mutated files through the CLI
_CHILD = """
import signal, sys
signal.alarm(60)
from onnxq.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    kind = rng.integers(0, 4)
    if kind == 0:  # bit flips
        for _ in range(int(rng.integers(1, 16))):
            i = int(rng.integers(0, len(buf)))
            buf[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:  # truncation
        buf = buf[: int(rng.integers(0, len(buf)))]
    elif kind == 2:  # a header region overwritten
        start = int(rng.integers(0, min(len(buf), 128)))
        buf[start:start + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
    else:  # a chunk duplicated
        a = int(rng.integers(0, len(buf)))
        buf[a:a] = buf[a:a + int(rng.integers(1, 64))]
    return bytes(buf)


def _cli(args: list[str], cwd: Path) -> int:
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode in (0, 2), (args, proc.returncode, proc.stderr[-2000:])
    return proc.returncode


@pytest.mark.parametrize("target", ["model", "npz"])
def test_mutated_files_exit_0_or_2(tmp_path, target):
    from tests import builders as B

    model = B.conv_bn_relu()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **B.feeds(model, batch=2, n=1, seed=1)[0])
    original = (tmp_path / ("m.onnx" if target == "model" else "c.npz")).read_bytes()
    rng = np.random.default_rng(None if LONG else 1234)
    codes = []
    for i in range(MUTATIONS // 2):
        name = f"mut{i}.onnx" if target == "model" else f"mut{i}.npz"
        (tmp_path / name).write_bytes(_mutate(original, rng))
        args = (["quantize", name, f"out{i}.onnx", "--calib-data", "c.npz", "--quiet"]
                if target == "model" else
                ["quantize", "m.onnx", f"out{i}.onnx", "--calib-data", name, "--quiet"])
        codes.append(_cli(args, tmp_path))
    assert 2 in codes  # the mutations did reach the error paths
