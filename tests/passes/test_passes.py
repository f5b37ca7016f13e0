"""Every pass: structure, numerics against FP32, idempotence and the ONNX checker.

Tolerances: float-exact passes (preprocess, fusion, cleanup, verify) must match FP32 to
1e-4 relative; QDQ insertion must keep output cosine >= 0.999 and the max error within 5 %
of the output's range on every small builder model.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

import onnxq
from onnxq import graph as G
from onnxq.api import build_pipeline, prepare
from onnxq.calibrate import collect_ranges
from onnxq.calibrators import MinMaxCalibrator
from onnxq.config import QuantConfig
from onnxq.passes import CleanupPass, FusionPass, PreprocessPass, RequantFoldPass, VerifyPass
from onnxq.pipeline import Pipeline
from tests import builders as B
from tests.conftest import cosine, run_model

FLOAT_EXACT_RTOL = 1e-4


def with_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """Relabel a model whose ops mean the same at ``version`` (Conv, BN, Relu, Gemm …)."""
    model.opset_import[0].version = version
    onnx.checker.check_model(model, full_check=True)
    return model


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def assert_close(ref: onnx.ModelProto, got: onnx.ModelProto, feed: dict) -> None:
    for a, b in zip(run_model(ref, feed), run_model(got, feed), strict=True):
        scale = np.abs(a).max() + 1e-6
        assert np.abs(a - b).max() / scale < FLOAT_EXACT_RTOL


def rerun_unchanged(pass_, model: onnx.ModelProto) -> None:
    graph = G.import_graph(model)
    assert pass_.run(graph).modified is False, f"{pass_.name} is not idempotent"


def test_preprocess_turns_constant_nodes_into_initializers():
    model = B.conv_bn_relu()
    # Paddle-style: move every initializer into a Constant node.
    g = model.graph
    consts = [onnx.helper.make_node("Constant", [], [init.name], name=f"const_{init.name}",
                                    value=init) for init in g.initializer]
    del g.initializer[:]
    nodes = consts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    out = Pipeline([PreprocessPass()]).run(model)
    assert ops(out.model)["Constant"] == 0
    assert len(out.model.graph.initializer) == len(consts)
    onnx.checker.check_model(out.model, full_check=True)
    feed = B.feeds(model, batch=2)[0]
    assert_close(model, out.model, feed)
    rerun_unchanged(PreprocessPass(), out.model)
    # and the quantizer sees those weights: both convs quantized
    _, plan = prepare(model, QuantConfig())
    assert {n.op for n in plan.nodes} >= {"Conv", "Gemm"}


def test_preprocess_upgrades_old_opset():
    model = with_opset(B.conv_bn_relu(opset=13), 11)
    out = Pipeline([PreprocessPass(min_opset=13)]).run(model)
    assert G.opset(G.import_graph(out.model)) == 13
    onnx.checker.check_model(out.model, full_check=True)
    assert_close(model, out.model, B.feeds(model)[0])


@pytest.mark.parametrize("builder", [B.conv_bn_relu, B.residual_block, B.depthwise_hardswish,
                                     B.matmul_add])
def test_fusion_folds_batchnorm_and_matmul_add(builder):
    model = Pipeline([PreprocessPass()]).run(builder()).model
    before = ops(model)
    out = Pipeline([FusionPass()]).run(model)
    after = ops(out.model)
    assert after["BatchNormalization"] == 0
    assert after["Conv"] == before["Conv"]
    if before["MatMul"]:
        assert after["MatMul"] == 0 and after["Gemm"] == before["MatMul"]
    onnx.checker.check_model(out.model, full_check=True)
    assert_close(model, out.model, B.feeds(model, batch=3)[0])
    rerun_unchanged(FusionPass(), out.model)


def _quantize_passes(model: onnx.ModelProto, config: QuantConfig | None = None):
    config = config or QuantConfig()
    fused, plan = prepare(model, config)
    feeds = B.feeds(model, batch=4, n=8, seed=1)
    ranges = collect_ranges(fused.model, plan.calibration_tensors, feeds, MinMaxCalibrator(),
                            progress=False)
    return fused.model, plan, ranges, build_pipeline(config, plan, ranges)


def test_insert_qdq_numerics_structure_idempotence(small_model_name):
    model = B.ALL_SMALL[small_model_name]()
    fused, plan, ranges, pipeline = _quantize_passes(model)
    qdq_pass = pipeline.passes[0]
    out = Pipeline([qdq_pass]).run(fused)
    counts = ops(out.model)
    assert counts["QuantizeLinear"] >= 1
    # one Q per planned activation (after folding) and one DQ per weight at least
    # + the inner [0, 1] QuantizeLinear of each HardSwish decomposed into int8 Add and Mul
    assert counts["QuantizeLinear"] <= len(plan.activations) + sum(
        n.op == "HardSwish" for n in plan.nodes)
    weights = sum(1 for n in plan.nodes if n.weight is not None)
    assert counts["DequantizeLinear"] >= counts["QuantizeLinear"] + weights
    before = ops(fused)
    assert counts["Relu"] + counts["Clip"] == before["Relu"] + before["Clip"] - len(plan.folds)
    onnx.checker.check_model(out.model, full_check=True)
    feed = B.feeds(model, batch=4, seed=7)[0]
    ref, got = run_model(model, feed)[0], run_model(out.model, feed)[0]
    assert cosine(ref, got) >= 0.999
    assert np.abs(ref - got).max() <= 0.05 * (ref.max() - ref.min())
    rerun_unchanged(qdq_pass, out.model)


def test_requant_fold_removes_identity_requantize_and_is_idempotent():
    model = B.residual_block()
    fused, _, _, pipeline = _quantize_passes(model)
    inserted = Pipeline([pipeline.passes[0]]).run(fused).model
    # plant a redundant DQ->Q pair with equal parameters behind the first Q
    g = inserted.graph
    q = next(n for n in g.node if n.op_type == "QuantizeLinear")
    dq = onnx.helper.make_node("DequantizeLinear", [q.output[0], q.input[1], q.input[2]],
                               ["planted_dq"], name="planted_dq")
    q2 = onnx.helper.make_node("QuantizeLinear", ["planted_dq", q.input[1], q.input[2]],
                               ["planted_q"], name="planted_q")
    dq2 = onnx.helper.make_node("DequantizeLinear", ["planted_q", q.input[1], q.input[2]],
                                ["planted_out"], name="planted_dq2")
    g.node.extend([dq, q2, dq2])
    g.output.append(onnx.helper.make_tensor_value_info("planted_out", onnx.TensorProto.FLOAT,
                                                       ["batch", 8, 16, 16]))
    assert q.input[0] == "input"
    out = Pipeline([RequantFoldPass(), CleanupPass()]).run(inserted)
    names = {n.name for n in out.model.graph.node}
    assert "planted_q" not in names and "planted_dq2" in names
    assert any("identity" in n for r in out.records for n in r.notes)
    onnx.checker.check_model(out.model, full_check=True)
    feed = B.feeds(model, batch=2)[0]
    for a, b in zip(run_model(inserted, feed), run_model(out.model, feed), strict=True):
        np.testing.assert_array_equal(a, b)
    rerun_unchanged(RequantFoldPass(), out.model)
    rerun_unchanged(CleanupPass(), out.model)


def test_verify_accepts_valid_and_rejects_bad_scale():
    from onnxq.errors import PassError

    model = B.conv_bn_relu()
    fused, _, _, pipeline = _quantize_passes(model)
    quantized = pipeline.run(fused).model
    graph = G.import_graph(quantized)
    assert VerifyPass().run(graph).modified is False
    scale = next(i for i in quantized.graph.initializer if i.name.endswith("_scale"))
    scale.CopyFrom(onnx.numpy_helper.from_array(
        -np.abs(onnx.numpy_helper.to_array(scale)), scale.name))
    with pytest.raises(PassError, match="scale"):
        VerifyPass().run(G.import_graph(quantized))


def test_annotate_keeps_transformer_residuals_and_norms_float():
    model = B.attention_block()
    fused, plan = prepare(model, QuantConfig())
    by_op = Counter(n.op for n in plan.nodes if n.role.value == "anchor")
    assert by_op["MatMul"] + by_op["Gemm"] == 8  # 6 weight matmuls + 2 attention matmuls
    quantized = {n.name for n in plan.nodes}
    graph = G.import_graph(fused.model)
    for node in graph.nodes:
        if node.op in {"LayerNormalization", "Softmax", "Erf"}:
            assert node.name not in quantized
        if node.op == "Add" and any(o.op == "LayerNormalization" for o in node.outputs[0].outputs):
            assert node.name not in quantized, f"residual {node.name} was quantized"


def test_annotate_quantizes_cnn_residual_add_and_folds_relu():
    _, plan = prepare(B.residual_block(), QuantConfig())
    assert sum(n.op == "Add" for n in plan.nodes) == 2
    assert len(plan.folds) == 5


def test_per_channel_falls_back_to_per_tensor_at_opset_12(tmp_path):
    """Never write DequantizeLinear with axis into an opset < 13 model."""
    model = with_opset(B.conv_bn_relu(opset=13), 12)
    config = QuantConfig(min_opset=12)
    fused, plan = prepare(model, config)
    assert plan.per_channel is False
    feeds = B.feeds(model, batch=2, n=2)
    ranges = collect_ranges(fused.model, plan.calibration_tensors, feeds, MinMaxCalibrator(),
                            progress=False)
    out = build_pipeline(config, plan, ranges).run(fused.model).model
    assert all(not any(a.name == "axis" for a in n.attribute) for n in out.graph.node
               if n.op_type == "DequantizeLinear")
    run_model(out, feeds[0])


def test_fusion_folds_zero_pad_into_conv():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    pads = numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "pads")
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
         helper.make_node("Conv", ["p", "w"], ["y"], name="conv", pads=[1, 0, 0, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = Pipeline([PreprocessPass()]).run(model).model
    out = Pipeline([FusionPass()]).run(model)
    assert ops(out.model)["Pad"] == 0
    conv = next(n for n in out.model.graph.node if n.op_type == "Conv")
    assert list(next(a for a in conv.attribute if a.name == "pads").ints) == [2, 2, 2, 2]
    onnx.checker.check_model(out.model, full_check=True)
    assert_close(model, out.model, {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)})
    rerun_unchanged(FusionPass(), out.model)


def _same_pad_chain(pads_hw: list[int], fill_shape: list[int]):
    """TF-style "SAME" padding the way EfficientNet ports export it: the pads computed in the
    graph from a ConstantOfShape, then Concat/Reshape/Slice/Transpose/Reshape/Cast."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, values, dtype=np.int64):
        return numpy_helper.from_array(np.asarray(values, dtype), name)

    nodes = [
        helper.make_node("ConstantOfShape", ["fill_shape"], ["zeros"], name="zeros",
                         value=helper.make_tensor("z", TensorProto.INT64, [1], [0])),
        helper.make_node("Concat", ["hw", "zeros"], ["cat"], name="cat", axis=0),
        helper.make_node("Reshape", ["cat", "pairs"], ["r1"], name="r1"),
        helper.make_node("Slice", ["r1", "start", "end", "axis0", "step"], ["rev"], name="rev"),
        helper.make_node("Transpose", ["rev"], ["t"], name="t", perm=[1, 0]),
        helper.make_node("Reshape", ["t", "flat"], ["r2"], name="r2"),
        helper.make_node("Cast", ["r2"], ["pads"], name="cast", to=TensorProto.INT64)]
    inits = [const("fill_shape", fill_shape), const("hw", pads_hw), const("pairs", [-1, 2]),
             const("start", [-1]), const("end", [-(2**63) + 1]), const("axis0", [0]),
             const("step", [-1]), const("flat", [-1])]
    return nodes, inits


def test_fusion_folds_computed_same_padding_into_conv():
    """Pads computed from constants (ConstantOfShape included) fold, so the Pad joins the Conv:
    in int8 a separate Pad runs in float between a DequantizeLinear and a QuantizeLinear."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = _same_pad_chain([0, 1, 0, 1], [4])
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [*nodes, helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
         helper.make_node("Conv", ["p", "w"], ["y"], name="conv", strides=[2, 2])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, *inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feed = {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}
    pre = Pipeline([PreprocessPass()]).run(model).model
    assert ops(pre)["ConstantOfShape"] == 0
    out = Pipeline([FusionPass()]).run(pre)
    assert ops(out.model)["Pad"] == 0
    conv = next(n for n in out.model.graph.node if n.op_type == "Conv")
    assert list(next(a for a in conv.attribute if a.name == "pads").ints) == [0, 0, 1, 1]
    assert_close(model, out.model, feed)
    result = onnxq.quantize(model, [feed], progress=False, objective="size")
    assert ops(result.model)["Pad"] == 0
    assert ops(result.model)["QuantizeLinear"] >= 1


def test_preprocess_leaves_large_fills_alone():
    """A ConstantOfShape that builds a buffer (not shape plumbing) stays a node."""
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([1, 3, 64, 64], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["fill"], name="fill",
                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
         helper.make_node("Add", ["x", "fill"], ["y"], name="add")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert ops(Pipeline([PreprocessPass()]).run(model).model)["ConstantOfShape"] == 1


def test_preprocess_keeps_scalar_constants_scalar():
    """A 0-d Constant (TorchScript shape arithmetic) must stay 0-d as an initializer."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["two"], name="c",
                          value=numpy_helper.from_array(np.array(2.0, np.float32))),
         helper.make_node("Mul", ["x", "two"], ["y"], name="mul")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = Pipeline([PreprocessPass()]).run(model).model
    init = next(i for i in out.graph.initializer if i.name == "two")
    assert list(init.dims) == []
    assert run_model(out, {"x": np.array(3.0, np.float32)})[0].shape == ()


def _conv_relu_bn_pool(gamma: np.ndarray):
    """Conv → Relu → BatchNormalization → MaxPool → Conv (a BN after the activation, as CREPE
    and Keras-style blocks have it: it cannot fold into the Conv before it)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = gamma.size

    def arr(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)

    inits = [arr("w1", rng.standard_normal((c, 3, 3, 3))), arr("w2", rng.standard_normal((4, c, 3, 3))),
             arr("gamma", gamma), arr("beta", rng.standard_normal(c)),
             arr("mean", rng.standard_normal(c)), arr("var", rng.uniform(0.5, 2.0, c))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("BatchNormalization", ["r1", "gamma", "beta", "mean", "var"],
                              ["b1"], name="bn1"),
             helper.make_node("MaxPool", ["b1"], ["p1"], name="pool1", kernel_shape=[3, 3],
                              strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["n", 3, 16, 16])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_max_pool_moves_before_a_batchnorm_with_non_negative_multipliers():
    """Exact (a per-channel non-decreasing map commutes with max): the pool then reads the
    Conv's int8 output, and the BN runs on the pooled tensor."""
    rng = np.random.default_rng(1)
    gamma = rng.uniform(0.2, 2.0, 8)
    gamma[3] = 0.0  # a dead channel: still exact
    model = _conv_relu_bn_pool(gamma)
    pre = Pipeline([PreprocessPass()]).run(model).model
    out = Pipeline([FusionPass()]).run(pre)
    assert "pool_batchnorm: 1 fused" in out.records[0].notes
    order = [n.op_type for n in out.model.graph.node]
    assert order.index("MaxPool") < order.index("BatchNormalization")
    pool = next(n for n in out.model.graph.node if n.op_type == "MaxPool")
    relu = next(n for n in out.model.graph.node if n.op_type == "Relu")
    assert pool.input[0] == relu.output[0]
    feed = {"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}
    assert_close(model, out.model, feed)
    rerun_unchanged(FusionPass(), out.model)
    # the quantized model pools int8 values: the pool reads a DequantizeLinear
    q = onnxq.quantize(model, [feed], progress=False, objective="size").model
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    pool = next(n for n in q.graph.node if n.op_type == "MaxPool")
    assert producers[pool.input[0]] == "DequantizeLinear"


def test_a_batchnorm_with_a_negative_multiplier_stays_before_the_pool():
    gamma = np.linspace(0.5, 1.5, 8)
    gamma[5] = -0.7  # max of a decreasing map is the map of the min: not exact
    model = _conv_relu_bn_pool(gamma)
    pre = Pipeline([PreprocessPass()]).run(model).model
    out = Pipeline([FusionPass()]).run(pre)
    order = [n.op_type for n in out.model.graph.node]
    assert order.index("BatchNormalization") < order.index("MaxPool")


def test_the_openvino_ep_keeps_the_batchnorm_before_the_pool():
    """OpenVINO fuses its own patterns; the swap measured slightly slower there."""
    gamma = np.linspace(0.5, 1.5, 8)
    model = _conv_relu_bn_pool(gamma)
    fused, _ = prepare(model, QuantConfig(target_ep="openvino"))
    order = [n.op_type for n in fused.model.graph.node]
    assert order.index("BatchNormalization") < order.index("MaxPool")
    fused, _ = prepare(model, QuantConfig())
    order = [n.op_type for n in fused.model.graph.node]
    assert order.index("MaxPool") < order.index("BatchNormalization")


def test_verify_checks_large_weights_by_type_and_shape():
    """The checker sees weights above 64 KiB as typed inputs (without their bytes, so its full
    check does not copy them): a shape they contradict is still refused."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxq.errors import PassError

    w = numpy_helper.from_array(np.zeros((400, 300), np.float32), "w")  # 480 KB
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 300])],  # K 300 != 400
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(PassError, match="ONNX checker"):
        VerifyPass().run(G.import_graph(model))
    assert len(model.graph.initializer) == 1  # its input is not changed
