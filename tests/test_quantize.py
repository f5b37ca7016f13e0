"""End to end: onnxq.quantize on models built in code, checked in onnxruntime."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from tests import builders as B
from tests.conftest import cosine, run_model

INT8_KERNELS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat",
                "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"}


def optimized_ops(model: onnx.ModelProto, tmp_path) -> Counter:
    path = tmp_path / "optimized.onnx"
    run_model(model, B.feeds(model)[0], optimized_path=str(path))
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("name", sorted(B.ALL_SMALL))
def test_quantized_outputs_track_fp32(name, calib_cache):
    """Output cosine >= 0.999 against FP32 on held-out random feeds (all small builders)."""
    model = B.ALL_SMALL[name]()
    result = onnxq.quantize(model, calib_cache(name, model), progress=False)
    onnx.checker.check_model(result.model, full_check=True)
    for feed in B.feeds(model, batch=4, n=2, seed=11):
        ref, got = run_model(model, feed)[0], run_model(result.model, feed)[0]
        assert cosine(ref, got) >= 0.999


def test_residual_cnn_runs_every_conv_and_gemm_as_int8_kernel(tmp_path, calib_cache):
    model = B.residual_block()
    result = onnxq.quantize(model, calib_cache("residual_block", model), progress=False)
    float_ops = Counter(n.op_type for n in model.graph.node)
    opt = optimized_ops(result.model, tmp_path)
    assert opt["QLinearConv"] == float_ops["Conv"]
    assert opt["QGemm"] + opt["QLinearMatMul"] == float_ops["Gemm"] + float_ops["MatMul"]
    assert opt["Conv"] == opt["FusedConv"] == opt["Gemm"] == opt["MatMul"] == 0
    assert opt["QLinearAdd"] == float_ops["Add"]        # residual adds stay int8 in a CNN
    assert opt["DequantizeLinear"] == 0                 # no float island left


def test_attention_matmuls_run_as_int8_kernels(tmp_path, calib_cache):
    model = B.attention_block()
    result = onnxq.quantize(model, calib_cache("attention_block", model), progress=False)
    opt = optimized_ops(result.model, tmp_path)
    matmuls = sum(1 for n in model.graph.node if n.op_type in ("MatMul", "Gemm"))
    assert sum(opt[k] for k in INT8_KERNELS) == matmuls
    assert opt["MatMul"] == opt["Gemm"] == opt["FusedMatMul"] == 0
    assert opt["SkipLayerNormalization"] + opt["LayerNormalization"] == 2  # norms stay float


def test_quantizing_twice_gives_identical_bytes(tmp_path, calib_cache):
    model = B.depthwise_hardswish()
    feeds = calib_cache("depthwise_hardswish", model)
    a = onnxq.quantize(model, feeds, progress=False)
    b = onnxq.quantize(model, feeds, progress=False)
    pa, pb = a.save(tmp_path / "a.onnx"), b.save(tmp_path / "b.onnx")
    assert pa.read_bytes() == pb.read_bytes()


def test_input_model_is_not_modified(calib_cache):
    model = B.conv_bn_relu()
    before = model.SerializeToString()
    onnxq.quantize(model, calib_cache("conv_bn_relu", model), progress=False)
    assert model.SerializeToString() == before


def test_report_lists_quantized_skipped_and_folded(calib_cache):
    model = B.depthwise_hardswish()
    result = onnxq.quantize(model, calib_cache("depthwise_hardswish", model), progress=False,
                            objective="size")  # all planned nodes (no placement)
    report = result.report
    assert sum(op == "Conv" for _, op in report.quantized) == 7
    # HardSwish and x*HardSigmoid(x) run on int8 (decomposed into int8 Add and Mul)
    assert {"HardSwish", "HardSigmoid", "Mul"} <= {op for _, op in report.quantized}
    assert report.folded
    assert "quantized" in report.summary()
    assert report.to_dict()["weight_type"] == "s8"


def test_s8_activations_and_per_tensor_options(calib_cache):
    model = B.conv_bn_relu()
    feeds = calib_cache("conv_bn_relu", model)
    result = onnxq.quantize(model, feeds, progress=False, activation_type="s8",
                            per_channel=False)
    q_types = {i.data_type for i in result.model.graph.initializer if i.name.endswith(
        "_zero_point")}
    assert TensorProto.INT8 in q_types and TensorProto.UINT8 not in q_types
    assert all(not any(a.name == "axis" for a in n.attribute)
               for n in result.model.graph.node if n.op_type == "DequantizeLinear")
    feed = B.feeds(model, batch=2, seed=5)[0]
    assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) >= 0.999


def test_exclusions_keep_nodes_float(calib_cache):
    model = B.residual_block()
    feeds = calib_cache("residual_block", model)
    result = onnxq.quantize(model, feeds, progress=False, exclude_nodes=["stem.conv"],
                            exclude_op_types=["Gemm"])
    names = {n for n, _ in result.report.quantized}
    assert "stem.conv" not in names and not any(op == "Gemm" for _, op in
                                                result.report.quantized)
    assert ("stem.conv", "excluded by configuration") in result.report.skipped


def _op_coverage_model() -> onnx.ModelProto:
    """Every remaining op of the supported list in one small graph."""
    rng = np.random.default_rng(3)

    def w(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.int64), name)  # noqa: E731
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "zero", "six"], ["r1"], name="relu6"),
        helper.make_node("Pad", ["r1", "pads"], ["p1"], name="pad", mode="reflect"),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2"),
        helper.make_node("LeakyRelu", ["c2"], ["l2"], name="leaky", alpha=0.1),
        helper.make_node("Resize", ["l2", "", "scales"], ["u2"], name="resize", mode="nearest"),
        helper.make_node("Split", ["u2", "split"], ["s_a", "s_b"], name="split", axis=1),
        helper.make_node("Sigmoid", ["s_a"], ["sig"], name="sigmoid"),
        helper.make_node("HardSigmoid", ["s_b"], ["hs"], name="hardsigmoid"),
        helper.make_node("Mul", ["sig", "hs"], ["m"], name="mul"),
        helper.make_node("Slice", ["m", "starts", "ends", "axes"], ["sl"], name="slice"),
        helper.make_node("Transpose", ["sl"], ["t"], name="transpose", perm=[0, 1, 3, 2]),
        helper.make_node("Conv", ["t", "w3"], ["c3"], name="conv3"),
        helper.make_node("AveragePool", ["c3"], ["ap"], name="avgpool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["ap"], ["gap"], name="gap"),
        helper.make_node("Squeeze", ["gap", "sq_axes"], ["sq"], name="squeeze"),
        helper.make_node("Unsqueeze", ["sq", "us_axes"], ["us"], name="unsqueeze"),
        helper.make_node("Flatten", ["us"], ["fl"], name="flatten"),
        helper.make_node("Gemm", ["fl", "wg", "bg"], ["g"], name="gemm", transB=1),
        helper.make_node("Softmax", ["g"], ["y"], name="softmax", axis=-1),
    ]
    inits = [w("w1", 8, 3, 3, 3), w("b1", 8), f32("zero", 0.0), f32("six", 6.0),
             i64("pads", [0, 0, 1, 1, 0, 0, 1, 1]), w("w2", 8, 8, 3, 3, scale=0.2),
             f32("scales", [1, 1, 2, 2]), i64("split", [4, 4]), i64("starts", [1]),
             i64("ends", [-1]), i64("axes", [2]), w("w3", 8, 4, 1, 1),
             i64("sq_axes", [2, 3]), i64("us_axes", [2]), w("wg", 5, 8), w("bg", 5)]
    graph = helper.make_graph(
        nodes, "op_coverage",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_every_supported_op_quantizes_to_a_valid_accurate_model(tmp_path):
    model = _op_coverage_model()
    feeds = B.feeds(model, batch=2, n=8, seed=1)
    result = onnxq.quantize(model, feeds, progress=False, objective="size")
    result.save(tmp_path / "cov.onnx")
    planned = {op for _, op in result.report.quantized}
    assert {"Conv", "Gemm", "LeakyRelu", "Resize", "Split", "Sigmoid", "Transpose",
            "AveragePool", "GlobalAveragePool", "Squeeze", "Unsqueeze", "Flatten"} <= planned
    assert "relu6" in result.report.folded
    skipped = dict(result.report.skipped)
    assert "pad" in skipped  # reflect Pad has no int8 path
    assert "HardSigmoid" in planned  # its input (Split output) is int8
    for feed in B.feeds(model, batch=3, n=2, seed=9):
        ref, got = run_model(model, feed)[0], run_model(result.model, feed)[0]
        assert cosine(ref, got) >= 0.999


def test_hardswish_cnn_runs_fully_int8(tmp_path, calib_cache):
    """HardSwish / x*HardSigmoid(x) decompose into int8 Add and Mul: no float op is left in
    onnxruntime's optimized graph, and the outputs keep cosine >= 0.999."""
    model = B.depthwise_hardswish()
    result = onnxq.quantize(model, calib_cache("depthwise_hardswish", model), progress=False,
                            objective="size")
    opt = optimized_ops(result.model, tmp_path)
    assert opt["HardSwish"] == opt["HardSigmoid"] == opt["Mul"] == opt["DequantizeLinear"] == 0
    assert opt["QLinearMul"] == 4 and opt["QLinearAdd"] >= 4
    for feed in B.feeds(model, batch=4, n=2, seed=13):
        assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) >= 0.999
    lowered = onnxq.quantize(model, ranges=result.ranges, progress=False, format="qlinear",
                             objective="size")
    ops = Counter(n.op_type for n in lowered.model.graph.node)
    assert ops["QLinearMul"] == 4 and ops["HardSwish"] == 0


def test_attention_qkv_projections_stay_int8_end_to_end(tmp_path, calib_cache):
    """The Q/K/V bias Adds feed int8 attention MatMuls, so their sums are int8; on the CPU EP
    each projection then runs as one MatMulIntegerToFloat with its bias and a QuantizeLinear
    (not QLinearMatMul + QLinearAdd: one kernel and one rounding less, passes/matmul_epilogue.py);
    the residual path stays float."""
    model = B.attention_block()
    result = onnxq.quantize(model, calib_cache("attention_block", model), progress=False)
    quantized = {n for n, _ in result.report.quantized}
    assert {"layer0.attn.q.add", "layer0.attn.k.add", "layer0.attn.v.add"} <= quantized
    assert "layer0.attn.out.add" not in quantized  # feeds the residual Add / LayerNorm
    opt = optimized_ops(result.model, tmp_path)
    assert opt["QLinearAdd"] == 0 and opt["Add"] == 0
    fused = {n.output[0]: n for n in result.model.graph.node
             if n.op_type == "MatMulIntegerToFloat" and len(n.input) == 7}
    readers = {i: n.op_type for n in result.model.graph.node for i in n.input}
    for p in ("q", "k", "v"):
        assert readers[f"layer0.attn.{p}.add_out"] == "QuantizeLinear"  # an int8 sum
        assert f"layer0.attn.{p}.add_out" in fused
