"""The OpenVINO EP's Q/DQ rules (``target_ep = "openvino"``, measured in
docs/execution-providers.md): int8 tensors are compute inputs only, every consumer of one reads
its single DequantizeLinear, both inputs of a residual Add are int8, zero points are 0 where
that costs little precision, and the zero-point-0 model is checked (on the OpenVINO EP when an
interpreter for it is at hand) and replaced by the u8 asymmetric one when it disagrees."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxq
from onnxq import ep_check
from onnxq.passes import qdq_insert
from onnxq.qtypes import TensorRange
from tests import builders as B


def _dq_fed(model: onnx.ModelProto) -> tuple[dict, dict, dict]:
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producers, consumers, {i.name: numpy_helper.to_array(i)
                                  for i in model.graph.initializer}


def test_int8_tensors_are_compute_inputs_read_through_one_dq():
    model = B.residual_block()
    result = onnxq.quantize(model, B.feeds(model, n=4), progress=False, target_ep="openvino")
    producers, consumers, consts = _dq_fed(result.model)
    adds = [n for n in result.model.graph.node if n.op_type == "Add"
            and all(i not in consts for i in n.input)]
    assert adds and all(producers[i].op_type == "DequantizeLinear"
                        for a in adds for i in a.input), "residual Add inputs are int8"
    for q in (n for n in result.model.graph.node if n.op_type == "QuantizeLinear"):
        if q.input[0] in consts:
            continue
        # one quantized copy: nothing else reads the float tensor a Q quantizes...
        assert [c.op_type for c in consumers[q.input[0]]] == ["QuantizeLinear"], q.input[0]
        # ...and no Q sits on a Conv's output (OpenVINO fuses conv, activation and next Q),
        # but where a Relu was folded into the conv (its output is the Relu's, clipped by Q)
        # or where the conv's output is a residual Add's input
        src = producers.get(q.input[0])
        readers = {c.op_type for d in consumers[q.output[0]] for c in consumers[d.output[0]]}
        assert src is None or src.op_type != "Conv" or readers == {"Add"} or q.input[0] in {
            f.target for f in result.plan.folds}, q.input[0]
    assert "Add" not in {op for _, op in result.report.quantized}  # the sum stays float


@pytest.mark.parametrize(("lo", "hi", "dtype", "zero"), [
    (0.0, 6.0, np.uint8, True),      # non-negative: u8, zero point 0
    (-1.0, 1.1, np.int8, True),      # signed, sides alike: s8 symmetric
    (-0.375, 6.0, np.uint8, False),  # a small negative tail (HardSwish): u8 asymmetric
])
def test_zero_point_zero_where_it_costs_little(lo, hi, dtype, zero):
    p = qdq_insert._sign_aware(TensorRange(lo, hi))
    assert p.zero_point.dtype == dtype and (int(p.zero_point) == 0) == zero


def test_the_zero_point_zero_model_is_checked_and_replaced_when_it_disagrees(monkeypatch):
    model = B.residual_block()
    feeds = B.feeds(model, n=4)
    scores = iter([(0.03, "the OpenVINO EP", 2.0), (0.98, "the OpenVINO EP", 1.5)])
    monkeypatch.setattr(ep_check, "_score", lambda *a: next(scores))
    result = onnxq.quantize(model, feeds, progress=False, target_ep="openvino")
    assert result.config.activation.symmetric is False  # the rebuilt, u8 asymmetric one
    assert any("instead" in n and "0.9800" in n for n in result.report.notes)
    assert any("ran at 1.50x FP32" in n and not n.startswith("warning")
               for n in result.report.notes)  # the kept model's speed-up on the EP
    zps = [numpy_helper.to_array(i) for i in result.model.graph.initializer
           if i.name.endswith("zero_point")]
    assert all(z.dtype != np.int8 for z in zps if z.ndim == 0)
    monkeypatch.setattr(ep_check, "_score", lambda *a: (0.999, "the OpenVINO EP", None))
    kept = onnxq.quantize(model, feeds, progress=False, target_ep="openvino")
    assert kept.config.activation.symmetric is True
    assert any("checked on the OpenVINO EP" in n for n in kept.report.notes)
    # a marginal gain (MiniLM: 0.9893 → 0.9898) does not pay for the slower u8 model
    scores = iter([(0.9893, "the OpenVINO EP", 0.9), (0.9898, "the OpenVINO EP", 0.8)])
    monkeypatch.setattr(ep_check, "_score", lambda *a: next(scores))
    marginal = onnxq.quantize(model, feeds, progress=False, target_ep="openvino")
    assert marginal.config.activation.symmetric is True
    assert any("kept the zero-point-0 model" in n for n in marginal.report.notes)
    # not faster than FP32 on the EP: said, as a warning
    assert any(n.startswith("warning") and "0.90x FP32" in n and "does not pay" in n
               for n in marginal.report.notes)


def test_without_an_openvino_interpreter_the_cpu_ep_decides(monkeypatch, tmp_path):
    monkeypatch.delenv("ONNXQ_OPENVINO_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)  # no .venv-openvino here
    model = B.residual_block()
    result = onnxq.quantize(model, B.feeds(model, n=4), progress=False, target_ep="openvino")
    assert any("on the CPU EP (not on OpenVINO" in n for n in result.report.notes)


def test_quantizers_sit_above_padding_and_data_movement():
    """x → Conv → Pad (zeros) → Conv → Reshape → Conv: the int8 value is quantized once, above
    the Pad and the Reshape, and flows through them dequantized (OpenVINO folds the padding
    into the int8 conv); an Pad adding a non-zero value keeps its own quantizer below it."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)

    def model(pad_value: float) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) / 4, n)
                 for n, s in (("w0", (8, 3, 3, 3)), ("w1", (8, 8, 3, 3)), ("w2", (8, 8, 1, 1)))]
        inits += [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
                  numpy_helper.from_array(np.array(pad_value, np.float32), "value"),
                  numpy_helper.from_array(np.array([0, 8, 16, 16], np.int64), "shape")]
        nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c0", pads=[1, 1, 1, 1]),
                 helper.make_node("Pad", ["a", "pads", "value"], ["p"], name="pad"),
                 helper.make_node("Conv", ["p", "w1"], ["b"], name="c1"),
                 helper.make_node("Reshape", ["b", "shape"], ["r"], name="reshape"),
                 helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]
        g = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, [1, 3, 16, 16])], [helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    out = onnxq.quantize(model(0.0), feeds, progress=False, target_ep="openvino").model
    producers, consumers, _ = _dq_fed(out)
    quantized = {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert {"a", "b"} <= quantized and not {"p", "r"} & quantized
    assert all(producers[n.input[0]].op_type == "DequantizeLinear"  # (or fused into c1)
               for n in out.graph.node if n.op_type in ("Pad", "Reshape"))
    other = onnxq.quantize(model(0.5), feeds, progress=False, target_ep="openvino").model
    assert "p" in {n.input[0] for n in other.graph.node if n.op_type == "QuantizeLinear"}


def test_transformer_sums_keep_float_inputs(monkeypatch):
    """Under the OpenVINO rules the Adds of a transformer keep float inputs: the embedding
    sum (Gather on constant tables; onnxruntime-openvino's compiler crashed on MiniLM's int8
    one), the residual stream before each LayerNorm and the attention mask before Softmax
    (int8 there cost MiniLM cosine 0.99 → 0.92 and a third of its speed); the MatMuls are
    int8 at their inputs. A CNN's residual Adds keep int8 inputs (the first test)."""
    monkeypatch.setattr(ep_check, "_score", lambda *a: (0.999, "the OpenVINO EP", None))
    model = B.bert_embedded(vocab=500, layers=1, hidden=32, heads=2, seq=8)
    result = onnxq.quantize(model, B.feeds(model, n=4), progress=False, target_ep="openvino")
    producers, _, _ = _dq_fed(result.model)

    def quantized(t: str) -> bool:  # an activation Q → DQ (not a weight-only table's DQ)
        dq = producers.get(t)
        return (dq is not None and dq.op_type == "DequantizeLinear"
                and getattr(producers.get(dq.input[0]), "op_type", "") == "QuantizeLinear")

    nodes = result.model.graph.node
    # (an Add may read a tensor int8 for a MatMul through its one DequantizeLinear; none gets
    # both inputs quantized for itself)
    adds = [n.name for n in nodes if n.op_type == "Add" and all(map(quantized, n.input))]
    assert adds == []
    linear = [n for n in nodes if n.op_type == "MatMul" and n.input[1].endswith(
        "weight_dequantized")]

    def int8_input(t: str) -> bool:  # quantized, maybe moved by Reshape/Transpose after it
        while not quantized(t) and getattr(producers.get(t), "op_type", "") in (
                "Reshape", "Transpose"):
            t = producers[t].input[0]
        return quantized(t)

    assert len(linear) == 6 and all(int8_input(n.input[0]) for n in linear)


@pytest.mark.parametrize("relu", [False, True])
def test_tensors_reaching_a_channel_pad_get_zero_point_zero(monkeypatch, relu):
    """A TFLite-style residual widens channels with a Pad (4 → 8 here) after a MaxPool that
    reads an int8 tensor also read by a conv: OpenVINO moves the dequantization through the
    Pad and rejected the widened non-zero zero point (face mesh, BlazeFace), so that tensor
    gets zero point 0: s8 symmetric where its skewed signed range would take u8 asymmetric,
    u8 from 0 where it is non-negative (a ReLU's)."""
    from onnx import TensorProto, helper

    monkeypatch.setattr(ep_check, "_score", lambda *a: (0.999, "the OpenVINO EP", None))
    rng = np.random.default_rng(0)
    w1 = (0.3 * rng.standard_normal((4, 3, 3, 3))).astype(np.float32)
    b1 = np.full(4, 1.5, np.float32)  # a skewed signed range: [-small, large]
    w2 = (0.3 * rng.standard_normal((8, 4, 3, 3))).astype(np.float32)
    pads = np.array([0, 0, 0, 0, 0, 4, 0, 0], np.int64)
    first = [helper.make_node("Conv", ["x", "w1", "b1"], ["t0" if relu else "t"],
                              name="conv1", pads=[1] * 4)]
    if relu:
        first.append(helper.make_node("Relu", ["t0"], ["t"], name="relu"))
    graph = helper.make_graph([
        *first,
        helper.make_node("Conv", ["t", "w2"], ["c2"], name="conv2", pads=[1] * 4,
                         strides=[2, 2]),
        helper.make_node("MaxPool", ["t"], ["p"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Pad", ["p", "pads"], ["pp"], name="channel_padding"),
        helper.make_node("Add", ["c2", "pp"], ["y"], name="residual")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        initializer=[numpy_helper.from_array(a, k) for k, a in
                     (("w1", w1), ("b1", b1), ("w2", w2), ("pads", pads))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    result = onnxq.quantize(model, feeds, progress=False, target_ep="openvino")
    _, _, consts = _dq_fed(result.model)
    [q] = [n for n in result.model.graph.node
           if n.op_type == "QuantizeLinear" and n.input[0] in ("t", "t0")]
    zero = consts[q.input[2]]
    assert int(zero) == 0 and zero.dtype == (np.uint8 if relu else np.int8)


def test_a_model_the_openvino_ep_cannot_run_is_a_warning(monkeypatch, caplog):
    """An OpenVINO EP that is here but fails on the model made for it (a compiler error) is
    not the same as having none: the report's note and the log say so as a warning."""
    from onnxq import ep as ep_module
    from onnxq.errors import ConfigError

    monkeypatch.setattr(ep_module, "ep_python", lambda *a, **k: None)

    def fail(*a, **k):
        raise ConfigError("openvino: Exception during initialization: PadTransformation")

    monkeypatch.setattr(ep_module, "run_on_eps", fail)
    model = B.residual_block()
    with caplog.at_level("WARNING", logger="onnxq.api"):
        result = onnxq.quantize(model, B.feeds(model, n=4), progress=False,
                                target_ep="openvino")
    [note] = [n for n in result.report.notes if "not on OpenVINO" in n]
    assert note.startswith("warning") and "failed to run it" in note
    assert "PadTransformation" in note
    assert any("could not run the model made for it" in r.message for r in caplog.records)
