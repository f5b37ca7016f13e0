"""Models saved from an onnxruntime session: its float fusions (FusedConv with a sum input and
activations, FusedGemm) are written back as standard operators and quantized like the model
as exported; its NCHWc layout operators are refused with the reason and the fix."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

import onnxq
from onnxq import graph as G
from onnxq.errors import ModelError
from onnxq.passes import UnfuseContribPass
from tests import builders as B
from tests.conftest import cosine, run_model


def _saved(model: onnx.ModelProto, tmp_path, level: str) -> onnx.ModelProto:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    options.optimized_model_filepath = str(tmp_path / f"{level}.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / f"{level}.onnx"))


def _domains(model: onnx.ModelProto) -> Counter:
    return Counter(f"{n.domain}:{n.op_type}" for n in model.graph.node)


@pytest.mark.parametrize("build", ["residual_block", "depthwise_hardswish", "mobilenet_shaped"])
def test_a_model_saved_at_the_extended_level_is_quantized_as_exported(build, tmp_path):
    exported = getattr(B, build)(**({"image": 32} if build == "mobilenet_shaped" else {}))
    saved = _saved(exported, tmp_path, "EXTENDED")
    assert _domains(saved)["com.microsoft:FusedConv"]  # what onnxruntime saves
    feeds = B.feeds(exported, batch=2, n=4)
    want = onnxq.quantize(exported, feeds, progress=False)
    got = onnxq.quantize(saved, feeds, progress=False)
    def anchors(result) -> set[str]:  # (onnxruntime saves HardSwish as x·HardSigmoid(x))
        return {name for name, op in result.report.quantized if op in ("Conv", "Gemm")}

    assert anchors(got) == anchors(want) != set()
    assert not _domains(got.model)["com.microsoft:FusedConv"]
    assert any("onnxruntime float fusion" in note for note in got.report.notes)
    for feed in feeds[:2]:  # (onnxruntime folded BatchNorm into the weights it saved)
        assert cosine(run_model(want.model, feed)[0], run_model(got.model, feed)[0]) > 0.999


def _fused_model() -> onnx.ModelProto:
    """Every form onnxruntime writes: FusedConv with a sum input Z and Clip, with
    HardSigmoid and no bias, with no activation; FusedMatMul scaled, and transposing (kept);
    FusedGemm with LeakyRelu."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ms = "com.microsoft"

    def w(name, *shape):
        return numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype(np.float32), name)

    nodes = [
        helper.make_node("FusedConv", ["x", "w1", "b1"], ["a"], domain=ms, pads=[1] * 4,
                         activation="HardSigmoid", activation_params=[0.2, 0.5]),
        helper.make_node("FusedConv", ["a", "w2", "", "x"], ["c"], domain=ms, pads=[1] * 4,
                         activation="Clip", activation_params=[0.0, 6.0]),
        helper.make_node("FusedConv", ["c", "w3"], ["d"], domain=ms, pads=[1] * 4),
        helper.make_node("GlobalAveragePool", ["d"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("FusedMatMul", ["f", "m"], ["fm"], domain=ms, alpha=0.5),
        helper.make_node("FusedMatMul", ["fm", "m"], ["ft"], domain=ms, transB=1),  # stays
        helper.make_node("FusedGemm", ["ft", "g", "gb"], ["y"], domain=ms, transB=1,
                         activation="LeakyRelu", activation_alpha=0.1)]
    graph = helper.make_graph(
        nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [w("w1", 4, 4, 3, 3), w("b1", 4), w("w2", 4, 4, 3, 3), w("w3", 4, 4, 3, 3),
         w("m", 4, 4), w("g", 5, 4), w("gb", 5)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(ms, 1)])


def test_the_unfusing_is_exact_and_idempotent():
    fused = _fused_model()
    graph = G.import_graph(fused)
    first = UnfuseContribPass().run(graph)
    assert first.modified and len(first.skipped) == 1  # the transposing FusedMatMul
    assert UnfuseContribPass().run(graph).modified is False
    standard = G.export_graph(graph)
    onnx.checker.check_model(standard, full_check=True)
    assert [n.op_type for n in standard.graph.node if n.domain == "com.microsoft"] == \
        ["FusedMatMul"]
    assert {"Add", "Clip", "HardSigmoid", "LeakyRelu"} <= {n.op_type for n in standard.graph.node}
    for feed in B.feeds(fused, batch=2, n=2):
        a, b = run_model(fused, feed)[0], run_model(standard, feed)[0]
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_model_saved_with_nchwc_operators_is_refused_with_the_fix(tmp_path):
    saved = _saved(B.residual_block(), tmp_path, "ALL")
    if not any(n.domain == "com.microsoft.nchwc" for n in saved.graph.node):
        pytest.skip("onnxruntime wrote no NCHWc operators on this CPU")
    before = saved.SerializeToString()
    with pytest.raises(ModelError, match="NCHWc layout operators.*EXTENDED level"):
        onnxq.quantize(saved, B.feeds(saved, batch=2, n=2), progress=False)
    assert saved.SerializeToString() == before


def _optimized_encoder() -> onnx.ModelProto:
    """onnxruntime's fused Attention (as its transformer optimizer writes it) and the output
    projection after it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    hidden, seq = 64, 16
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / 8).astype(np.float32), name)
             for name, shape in (("qkv_weight", (hidden, 3 * hidden)), ("qkv_bias", (3 * hidden,)),
                                 ("out_weight", (hidden, hidden)))]
    nodes = [helper.make_node("Attention", ["x", "qkv_weight", "qkv_bias"], ["a"],
                              name="attention", domain="com.microsoft", num_heads=4),
             helper.make_node("MatMul", ["a", "out_weight"], ["y"], name="out")]
    graph = helper.make_graph(
        nodes, "encoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_a_fused_attention_in_the_input_becomes_qattention_in_static_mode(fmt):
    """An optimized transformer (optimum's O2, onnxruntime's transformer optimizer) keeps its
    QKV projections inside Attention: static mode left them float (all-MiniLM-L6-v2 optimized
    that way: 18 of its 24 products int8). They run as QAttention now, as in dynamic mode."""
    model = _optimized_encoder()
    feeds = [{"x": np.random.default_rng(s).standard_normal((1, 16, 64)).astype(np.float32)}
             for s in range(4)]
    result = onnxq.quantize(model, feeds, progress=False, format=fmt)
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["QAttention"] == 1 and ops["Attention"] == 0
    assert ("out", "MatMul") in result.report.quantized
    for feed in feeds[:2]:
        assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) >= 0.999
    kept = onnxq.quantize(model, feeds, progress=False, format=fmt,
                          exclude_op_types=("Attention",))
    assert Counter(n.op_type for n in kept.model.graph.node)["Attention"] == 1
