"""Dynamic quantization (``mode = "dynamic"``): int8 weights, activations quantized at run
time, no calibration data; the fused (``DynamicQuantizeMatMul``) and the standard-ONNX
(``MatMulInteger``) forms carry the same integers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxq
from onnxq.cli import main
from onnxq.config import QuantConfig
from onnxq.config_resolve import types_for
from onnxq.errors import ConfigError, ModelError
from onnxq.kernels.isa import host_target, target_of
from onnxq.runtime import make_session
from tests import builders as B
from tests import builders_flow as F
from tests.conftest import cosine, run_model


def _gemm_mlp() -> onnx.ModelProto:
    b = B._Builder(0, 17)
    x = b.gemm("x", "fc1", 48, 64)
    x = b.op("Relu", [x], "relu")
    b.gemm(x, "fc2", 64, 10, out="y")
    return b.model("gemm_mlp", [("x", ["batch", 48])], [("y", ["batch", 10])])


_MODELS = {"matmul_add": B.matmul_add, "attention_block": B.attention_block,
           "bert_embedded": B.bert_embedded, "gemm_mlp": _gemm_mlp}


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize("name", sorted(_MODELS))
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_dynamic_mode_needs_no_calibration_and_agrees_with_fp32(name, fmt):
    model = _MODELS[name]()
    before = model.SerializeToString()
    result = onnxq.quantize(model, None, mode="dynamic", format=fmt, progress=False)
    assert model.SerializeToString() == before
    ops = _ops(result.model)
    assert "QuantizeLinear" not in ops  # nothing calibrated: no static activation Q/DQ
    matmuls = sum(1 for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
                  and any(i == t.name for t in model.graph.initializer for i in n.input[1:2]))
    if fmt == "qlinear":
        assert ops["DynamicQuantizeMatMul"] == matmuls
    else:  # standard ONNX only (any runtime), MatMulInteger per weight
        assert ops["MatMulInteger"] == matmuls == ops["DynamicQuantizeLinear"]
        assert all(n.domain in ("", "ai.onnx") for n in result.model.graph.node)
    assert ops["MatMul"] + ops["Gemm"] == sum(
        1 for n in model.graph.node if n.op_type in ("MatMul", "Gemm")) - matmuls
    int8 = [numpy_helper.to_array(t) for t in result.model.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8) >= matmuls
    for feed in B.feeds(model, n=3, seed=5):
        assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) >= 0.999
    again = onnxq.quantize(model, None, mode="dynamic", format=fmt, progress=False)
    assert again.model.SerializeToString() == result.model.SerializeToString()


@pytest.mark.parametrize("name", ["matmul_add", "gemm_mlp"])
def test_both_forms_run_as_the_same_kernel(name, tmp_path):
    """onnxruntime fuses the standard form into the kernel the fused form names, so the two
    give the same numbers."""
    model = _MODELS[name]()
    std = onnxq.quantize(model, None, mode="dynamic", format="qdq", progress=False).model
    fused = onnxq.quantize(model, None, mode="dynamic", format="qlinear", progress=False).model
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(std.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = _ops(onnx.load(str(tmp_path / "opt.onnx")))
    assert optimized["MatMulInteger"] == 0
    assert optimized["DynamicQuantizeMatMul"] + optimized["MatMulIntegerToFloat"] >= 2
    for feed in B.feeds(model, n=2):
        a = make_session(std).run(None, feed)[0]
        b = make_session(fused).run(None, feed)[0]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("target,levels", [("vnni", 127), ("avx2", 63)])
def test_dynamic_weights_follow_the_target_width(target, levels):
    model = B.matmul_add()
    result = onnxq.quantize(model, None, mode="dynamic", target=target, progress=False)
    int8 = [numpy_helper.to_array(t) for t in result.model.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert int8 and max(int(np.abs(w).max()) for w in int8) == levels


def test_lstm_and_embeddings_in_dynamic_mode():
    model = F.recurrent("LSTM")
    result = onnxq.quantize(model, None, mode="dynamic", progress=False)
    assert _ops(result.model)["DynamicQuantizeLSTM"] == 1
    feeds = F.sequence_feeds(model, 3)
    assert min(cosine(run_model(model, f)[0], run_model(result.model, f)[0])
               for f in feeds) >= 0.999


def test_convolutions_stay_float_in_dynamic_mode_with_the_reason():
    result = onnxq.quantize(B.conv_bn_relu(), None, mode="dynamic", progress=False)
    assert _ops(result.model)["DynamicQuantizeLinear"] == 1  # the Gemm head only
    reasons = dict(result.report.skipped)
    assert all("ConvInteger is slower" in reasons[n.name]
               for n in result.model.graph.node if n.op_type == "Conv")
    b = B._Builder(0, 17)
    b.op("Relu", [b.conv("x", "conv", 3, 8, 3)], "relu", out="y")
    convs = b.model("convs", [("x", [1, 3, 16, 16])], [("y", [1, 8, 16, 16])])
    with pytest.raises(ModelError, match="mode static"):
        onnxq.quantize(convs, None, mode="dynamic", progress=False)
    with pytest.raises(ConfigError, match="mode"):
        onnxq.quantize(B.matmul_add(), None, mode="sometimes", progress=False)


def test_cli_dynamic_mode_without_calibration_data(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(B.bert_embedded(), str(src))
    assert main(["quantize", str(src), str(out), "--mode", "dynamic", "--format", "qlinear",
                 "--quiet"]) == 0
    assert _ops(onnx.load(str(out)))["DynamicQuantizeMatMul"] == 12


def _attention_model(hidden: int = 64, heads: int = 4, seq: int = 16) -> onnx.ModelProto:
    """One onnxruntime ``Attention`` (com.microsoft) with constant QKV weights and bias."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((hidden, 3 * hidden)) / 8).astype(np.float32),
                                "qkv_weight")
    b = numpy_helper.from_array((rng.standard_normal(3 * hidden) / 10).astype(np.float32),
                                "qkv_bias")
    node = onnx.helper.make_node("Attention", ["x", "qkv_weight", "qkv_bias"], ["y"],
                                 name="attention", domain="com.microsoft", num_heads=heads)
    graph = onnx.helper.make_graph(
        [node], "attention",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, seq, hidden])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, seq, hidden])],
        [w, b])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                        onnx.helper.make_opsetid("com.microsoft",
                                                                                 1)])


@pytest.mark.parametrize("reduce_range,levels", [(False, 127), (True, 63)])
def test_fused_attention_becomes_qattention(reduce_range, levels):
    from onnxq.passes import DynamicAttentionPass
    from onnxq.pipeline import Pipeline

    model = _attention_model()
    out = Pipeline([DynamicAttentionPass(reduce_range=reduce_range)]).run(model).model
    ops = _ops(out)
    assert ops == Counter({"DynamicQuantizeLinear": 1, "QAttention": 1})
    weight = next(numpy_helper.to_array(t) for t in out.graph.initializer
                  if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2)
    assert weight.shape == (64, 192) and int(np.abs(weight).max()) == levels
    # 8-bit weights are what a VNNI CPU runs exactly; on AVX2 QAttention's u8 x s8 pairs
    # saturate in int16 (cosine 0.994 measured on a Zen 3), which is why quantize gives that
    # target 7-bit ones (``types_for``) and onnxq's emulation does not model QAttention
    exact_here = reduce_range or not target_of(host_target()).saturates
    assert types_for(QuantConfig(target="avx2"))[2]
    for seed in range(3 if exact_here else 0):
        feed = {"x": np.random.default_rng(seed).standard_normal((1, 16, 64)).astype(np.float32)}
        want = make_session(model).run(None, feed)[0]
        got = make_session(out).run(None, feed)[0]
        assert cosine(want, got) >= 0.999
    skipped = Pipeline([DynamicAttentionPass(exclude=("attention",))]).run(model).model
    assert _ops(skipped) == Counter({"Attention": 1})


def test_attention_shape_and_opt_in_fusion():
    from onnxq import graph as G
    from onnxq.passes.transformer import attention_shape

    model = B.attention_block(hidden=64, heads=4)
    assert attention_shape(G.import_graph(model)) == (4, 64)
    assert attention_shape(G.import_graph(B.matmul_add())) is None
    fused = onnxq.quantize(model, None, mode="dynamic", fuse_attention=True, progress=False)
    assert any(n.startswith("transformer fusion (heads 4, hidden 64)")
               for n in fused.report.notes)
    plain = onnxq.quantize(model, None, mode="dynamic", progress=False)
    assert not any(n.startswith("transformer fusion") for n in plain.report.notes)
    for feed in B.feeds(model, n=2, seed=3):
        assert cosine(run_model(model, feed)[0], run_model(fused.model, feed)[0]) >= 0.999


def test_attention_forms_qattention_cannot_run_stay_float():
    """Found in review: an attention_bias input or a rotary attribute has no QAttention form
    (the bias was dropped silently; the attribute made onnxruntime refuse the model)."""
    from onnxq.passes import DynamicAttentionPass
    from onnxq.pipeline import Pipeline

    model = _attention_model()
    bias = numpy_helper.from_array(np.zeros((1, 4, 16, 16), np.float32), "attn_bias")
    model.graph.initializer.append(bias)
    node = model.graph.node[0]
    node.input.extend(["", "", "attn_bias"])
    out = Pipeline([DynamicAttentionPass()]).run(model).model
    assert _ops(out) == Counter({"Attention": 1})
    rotary = _attention_model()
    rotary.graph.node[0].attribute.append(onnx.helper.make_attribute("do_rotary", 0))
    rotary.graph.node[0].attribute.append(onnx.helper.make_attribute("rotary_embedding_dim", 0))
    out = Pipeline([DynamicAttentionPass()]).run(rotary).model
    assert _ops(out) == Counter({"Attention": 1})


def test_a_row_bias_on_a_vector_product_keeps_its_shape():
    """Found in review: x[32] @ W + B[1, 16] is [1, 16]; folding B as [16] gave [16]. (Run
    without onnxruntime's optimizer, whose own bias fusion drops that broadcast again.)"""
    b = B._Builder(0, 17)
    w = b.param("w", b.normal((32, 16), 0.2))
    bias = b.param("bias", b.normal((1, 16), 0.1))
    b.op("Add", [b.op("MatMul", ["x", w], "mm"), bias], "add", out="y")
    model = b.model("vec", [("x", [32])], [("y", [1, 16])])
    feed = {"x": np.random.default_rng(0).standard_normal(32).astype(np.float32)}
    for fmt in ("qdq", "qlinear"):
        result = onnxq.quantize(model, None, mode="dynamic", format=fmt, progress=False)
        got = make_session(result.model, optimize=None).run(None, feed)[0]
        assert got.shape == (1, 16)
        assert cosine(run_model(model, feed)[0], got) >= 0.999
