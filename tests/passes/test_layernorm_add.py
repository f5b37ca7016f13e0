"""``UnfusedLayerNormAddPass``: a residual Add read only by a layer normalization becomes a
two-input Sum, so onnxruntime's SkipLayerNormFusion (whose float CPU kernel is several times
slower than Add + LayerNormalization, see the pass's docstring) does not fire; the values are
bit-identical."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxq
from onnxq import graph as G
from onnxq.passes import UnfusedLayerNormAddPass
from tests import builders as B

H = 32


def _add_layernorm(extra_reader: bool = False) -> onnx.ModelProto:
    """x + s → LayerNormalization → y; with ``extra_reader`` the sum is also a graph output."""
    gamma = helper.make_tensor("gamma", TensorProto.FLOAT, [H], np.linspace(0.5, 1.5, H))
    beta = helper.make_tensor("beta", TensorProto.FLOAT, [H], np.linspace(-0.1, 0.1, H))
    nodes = [helper.make_node("Add", ["x", "s"], ["sum"], name="residual"),
             helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"],
                              name="ln", axis=-1, epsilon=1e-5)]
    spec = ["batch", 16, H]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, spec)]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("sum", TensorProto.FLOAT, spec))
    graph = helper.make_graph(
        nodes, "add_ln", [helper.make_tensor_value_info(n, TensorProto.FLOAT, spec)
                          for n in ("x", "s")], outputs, [gamma, beta],
        value_info=[helper.make_tensor_value_info("sum", TensorProto.FLOAT, spec)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run_pass(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool, bool]:
    graph = G.import_graph(model)
    first = UnfusedLayerNormAddPass().run(graph)
    second = UnfusedLayerNormAddPass().run(first.graph)
    return G.export_graph(second.graph, model), first.modified, second.modified


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    """Op counts of the graph onnxruntime's CPU EP runs (all its optimizations on)."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath)
                               .graph.node)


def _run(model: onnx.ModelProto, feed: dict, fuse: bool = True) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    if not fuse:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def test_the_add_becomes_a_sum_and_onnxruntime_no_longer_fuses_it(tmp_path):
    model = _add_layernorm()
    # the premise: onnxruntime fuses the plain form into SkipLayerNormalization
    assert _optimized_ops(model, tmp_path)["SkipLayerNormalization"] == 1
    out, modified, again = _run_pass(model)
    onnx.checker.check_model(out, full_check=True)
    assert modified and not again  # idempotent
    assert [n.op_type for n in out.graph.node] == ["Sum", "LayerNormalization"]
    ops = _optimized_ops(out, tmp_path)
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 1
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal((2, 16, H)).astype(np.float32) for n in ("x", "s")}
    # bit-identical to Add + LayerNormalization; the fused kernel rounds differently
    np.testing.assert_array_equal(_run(out, feed)[0], _run(model, feed, fuse=False)[0])
    np.testing.assert_allclose(_run(out, feed)[0], _run(model, feed)[0], atol=1e-5)
    assert [n.op_type for n in model.graph.node][0] == "Add"  # the input is not changed


def test_an_add_with_another_reader_is_left_alone():
    out, modified, _ = _run_pass(_add_layernorm(extra_reader=True))
    assert not modified and out.graph.node[0].op_type == "Add"


@pytest.mark.parametrize("opset", [13, 17])  # 13: LayerNorm decomposed (ReduceMean, Sub, ...)
def test_quantized_encoders_keep_add_and_layernorm_apart(opset, tmp_path):
    model = B.attention_block(opset=opset, layers=2)
    feeds = B.feeds(model, n=4)
    result = onnxq.quantize(model, feeds, progress=False, objective="size")
    ops = collections.Counter(n.op_type for n in result.model.graph.node)
    assert ops["Sum"] == 4  # the attention and the FFN residual of each layer
    assert _optimized_ops(result.model, tmp_path)["SkipLayerNormalization"] == 0
    assert any("LayerNormalization pair(s) kept apart" in n for n in result.report.notes)
    dynamic = onnxq.quantize(model, mode="dynamic", progress=False)
    assert collections.Counter(n.op_type for n in dynamic.model.graph.node)["Sum"] == 4
    plain = onnxq.quantize(model, feeds, progress=False, objective="size",
                           target_ep="openvino")  # OpenVINO fuses normalization itself
    assert "Sum" not in {n.op_type for n in plain.model.graph.node}


def _fused_skip_layer_norm(typed: bool = True) -> onnx.ModelProto:
    """x, s → SkipLayerNormalization(bias) → y and the sum (read by a MatMul): the form
    onnxruntime's transformer optimizer writes (``typed``: the sum's type declared)."""
    rng = np.random.default_rng(1)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, list(a.shape), a.ravel()) for n, a in (
        ("gamma", rng.uniform(0.5, 1.5, H)), ("beta", rng.uniform(-0.1, 0.1, H)),
        ("bias", rng.uniform(-0.5, 0.5, H)), ("w", rng.standard_normal((H, H)) / 6))]
    nodes = [helper.make_node("SkipLayerNormalization", ["x", "s", "gamma", "beta", "bias"],
                              ["y", "", "", "total"], name="sln", domain="com.microsoft",
                              epsilon=1e-5),
             helper.make_node("MatMul", ["total", "w"], ["z"], name="mm")]
    spec = ["batch", 16, H]
    graph = helper.make_graph(
        nodes, "sln", [helper.make_tensor_value_info(n, TensorProto.FLOAT, spec)
                       for n in ("x", "s")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, spec) for n in ("y", "z")], inits,
        value_info=[helper.make_tensor_value_info("total", TensorProto.FLOAT, spec)]
        if typed else [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def test_a_fused_skip_layer_norm_is_split_back(tmp_path):
    model = _fused_skip_layer_norm()
    out, modified, again = _run_pass(model)
    onnx.checker.check_model(out, full_check=True)
    assert modified and not again
    ops = collections.Counter(n.op_type for n in out.graph.node)
    assert ops["SkipLayerNormalization"] == 0 and ops["Sum"] == 1 and ops["LayerNormalization"] == 1
    assert _optimized_ops(out, tmp_path)["SkipLayerNormalization"] == 0
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal((2, 16, H)).astype(np.float32) for n in ("x", "s")}
    for a, b in zip(_run(out, feed), _run(model, feed), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)  # y and z (which reads the sum)
    result = onnxq.quantize(model, [feed], progress=False, objective="size")
    assert "SkipLayerNormalization" not in {n.op_type for n in result.model.graph.node}


def test_untyped_contrib_outputs_are_typed_so_their_readers_quantize():
    """onnx's shape inference does not know onnxruntime's contrib operators: an untyped output
    used to leave every reader float ("inputs are not float32 tensors"). A chain alternates
    contrib and standard operators, so the typing is repeated with shape inference."""
    model = _fused_skip_layer_norm(typed=False)
    g = model.graph  # more blocks: z → SkipLayerNormalization(z, y) → MatMul → z2 → ...
    prev, skip = "z", "y"
    for k in range(2, 6):
        g.node.extend([
            helper.make_node("SkipLayerNormalization", [prev, skip, "gamma", "beta"], [f"y{k}"],
                             name=f"sln{k}", domain="com.microsoft", epsilon=1e-5),
            helper.make_node("MatMul", [f"y{k}", "w"], [f"z{k}"], name=f"mm{k}")])
        prev, skip = f"z{k}", f"y{k}"
    g.output.append(helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", 16, H]))
    rng = np.random.default_rng(0)
    feeds = [{n: rng.standard_normal((2, 16, H)).astype(np.float32) for n in ("x", "s")}
             for _ in range(2)]
    result = onnxq.quantize(model, feeds, progress=False, objective="size")
    assert {("mm", "MatMul")} | {(f"mm{k}", "MatMul") for k in range(2, 6)} <= set(
        result.report.quantized)
    assert any("contrib operators typed" in n for n in result.report.notes)
    assert "SkipLayerNormalization" not in {n.op_type for n in result.model.graph.node}
