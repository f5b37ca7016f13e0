"""Constants shared between If branches are stored once, but never merged so that one node
reads the same tensor twice: a zero Gemm bias quantizes to int32 zeros, the bytes of its zero
point, and ``DequantizeLinear(b, scale, b)`` made onnxruntime's optimizer abort the whole
process (an assertion in its QDQ selectors; found by the fuzz suite)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxq
from tests.conftest import cosine, run_model


def _branch(name: str, rng) -> onnx.GraphProto:
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32) / 2,
                                f"{name}_w")
    fc = numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), f"{name}_fc")
    zero = numpy_helper.from_array(np.zeros(5, np.float32), f"{name}_b")
    return helper.make_graph(
        [helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_c"], name=f"{name}_conv"),
         helper.make_node("GlobalAveragePool", [f"{name}_c"], [f"{name}_g"],
                          name=f"{name}_gap"),
         helper.make_node("Flatten", [f"{name}_g"], [f"{name}_f"], name=f"{name}_flatten"),
         helper.make_node("Gemm", [f"{name}_f", f"{name}_fc", f"{name}_b"], [f"{name}_y"],
                          name=f"{name}_gemm")],
        name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)],
        [w, fc, zero])


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], name="mean", keepdims=0),
         helper.make_node("Greater", ["m", "zero"], ["cond"], name="greater"),
         helper.make_node("If", ["cond"], ["y"], name="if",
                          then_branch=_branch("then", rng), else_branch=_branch("else", rng))],
        "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _feeds(n: int = 6) -> list[dict]:
    rng = np.random.default_rng(1)
    return [{"x": (rng.uniform(-1, 1, (2, 3, 6, 6)) + (0.5 if i % 2 else -0.5))
             .astype(np.float32)} for i in range(n)]


def test_no_node_reads_one_merged_constant_twice(tmp_path):
    model = _model()
    result = onnxq.quantize(model, _feeds(), progress=False, objective="size")
    nodes = [n for g in [result.model.graph, *(a.g for n in result.model.graph.node
                                               for a in n.attribute if a.type == a.GRAPH)]
             for n in g.node]
    assert all(len(set(i for i in n.input if i)) == len([i for i in n.input if i])
               for n in nodes), [list(n.input) for n in nodes if n.op_type.endswith("Linear")]
    path = tmp_path / "q.onnx"
    result.save(path)
    # in a child: the defect aborted the process that builds the optimized session
    code = ("import onnxruntime as ort; o = ort.SessionOptions(); "
            "o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL; "
            f"ort.InferenceSession({str(path)!r}, o, providers=['CPUExecutionProvider'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    for feed in _feeds(2):
        assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) >= 0.99


def _outer_producer_model() -> onnx.ModelProto:
    """x → Conv → Transpose → Transpose (an identity onnxruntime's optimizer cancels, leaving a
    DequantizeLinear right before a QuantizeLinear) → If whose branches convolve it."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((3, 3, 1, 1)).astype(np.float32) / 2, "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("Transpose", ["c"], ["t1"], name="t1", perm=[0, 1, 3, 2]),
         helper.make_node("Transpose", ["t1"], ["t2"], name="t2", perm=[0, 1, 3, 2]),
         helper.make_node("ReduceMean", ["x"], ["m"], name="mean", keepdims=0),
         helper.make_node("Greater", ["m", "zero"], ["cond"], name="greater"),
         helper.make_node("If", ["cond"], ["y"], name="if",
                          then_branch=_branch_of("then", "t2", rng),
                          else_branch=_branch_of("else", "t2", rng))],
        "outer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [w, numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _branch_of(name: str, src: str, rng) -> onnx.GraphProto:
    branch = _branch(name, rng)
    for node in branch.node:
        node.input[:] = [src if i == "x" else i for i in node.input]
    return branch


def test_bodies_never_read_an_outer_quantized_tensor(tmp_path):
    """onnxruntime's DQ->Q cleanup rewires consumers by explicit input index; an If reading a
    QuantizeLinear output from the outer scope made it index past its inputs and abort the
    process (found by the fuzz suite). Bodies now read the outer dequantized value and
    quantize it themselves, with the same parameters."""
    model = _outer_producer_model()
    for fmt in ("qdq", "qlinear"):
        result = onnxq.quantize(model, _feeds(), progress=False, objective="size", format=fmt)
        quantized = {o for n in result.model.graph.node
                     if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for o in n.output}
        for node in result.model.graph.node:
            for attr in node.attribute:
                if attr.type == attr.GRAPH:
                    body = attr.g
                    local = {o for n in body.node for o in n.output} | {
                        t.name for t in body.initializer}
                    outer = {i for n in body.node for i in n.input if i and i not in local}
                    assert not outer & quantized, (fmt, outer & quantized)
        path = tmp_path / f"{fmt}.onnx"
        result.save(path)
        code = ("import onnxruntime as ort; "
                f"ort.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-500:]
        for feed in _feeds(2):
            assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) >= 0.99
