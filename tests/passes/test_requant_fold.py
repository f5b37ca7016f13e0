"""Requantize folding on hand-made QDQ graphs and on the residual/depthwise test models."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import graph as G
from onnxq.passes import RequantFoldPass
from onnxq.pipeline import Pipeline
from tests import builders as B
from tests.conftest import run_model


def _qdq_model(nodes, inits, out_shape=(2, 8)):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _params(prefix, scale, zp, dtype=np.uint8):
    return [numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}_s"),
            numpy_helper.from_array(np.array(zp, dtype), f"{prefix}_z")]


def test_back_to_back_requantization_merges_into_one():
    nodes = [helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["q1"], name="q1"),
             helper.make_node("DequantizeLinear", ["q1", "a_s", "a_z"], ["d1"], name="d1"),
             helper.make_node("QuantizeLinear", ["d1", "b_s", "b_z"], ["q2"], name="q2"),
             helper.make_node("DequantizeLinear", ["q2", "b_s", "b_z"], ["y"], name="d2")]
    model = _qdq_model(nodes, _params("a", 0.01, 128) + _params("b", 0.03, 100))
    out = Pipeline([RequantFoldPass()]).run(model)
    ops = Counter(n.op_type for n in out.model.graph.node)
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 1
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8)).astype(np.float32)
    single = (np.clip(np.rint(x / 0.03) + 100, 0, 255) - 100) * np.float32(0.03)
    np.testing.assert_allclose(run_model(out.model, {"x": x})[0], single, atol=1e-6)


def test_relu_before_a_clamping_quantize_is_dropped():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "a_s", "a_z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "a_s", "a_z"], ["y"], name="dq")]
    model = _qdq_model(nodes, _params("a", 0.02, 0))
    out = Pipeline([RequantFoldPass()]).run(model)
    assert "Relu" not in {n.op_type for n in out.model.graph.node}
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_model(model, {"x": x})[0], run_model(out.model, {"x": x})[0])
    # with a zero point above the minimum the Relu is needed and stays
    kept = Pipeline([RequantFoldPass()]).run(_qdq_model(nodes, _params("a", 0.02, 128)))
    assert "Relu" in {n.op_type for n in kept.model.graph.node}


def test_qdq_between_float_ops_is_dropped():
    nodes = [helper.make_node("Tanh", ["x"], ["t"], name="tanh"),
             helper.make_node("QuantizeLinear", ["t", "a_s", "a_z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "a_s", "a_z"], ["d"], name="dq"),
             helper.make_node("Erf", ["d"], ["y"], name="erf")]
    out = Pipeline([RequantFoldPass()]).run(_qdq_model(nodes, _params("a", 0.01, 128)))
    assert {n.op_type for n in out.model.graph.node} == {"Tanh", "Erf"}


@pytest.mark.parametrize("name", ["residual_block", "depthwise_hardswish"])
def test_folded_models_leave_no_unfusable_requantize(name, tmp_path):
    """Q/DQ counts are reported; in onnxruntime's optimized graph no DQ feeds a Q directly
    (an unfused requantize) and numerics equal the unfolded graph's."""
    model = B.ALL_SMALL[name]()
    result = onnxq.quantize(model, B.feeds(model, batch=4, n=8, seed=1), progress=False)
    assert any(n.startswith("QuantizeLinear:") for n in result.report.notes)
    path = tmp_path / "opt.onnx"
    run_model(result.model, B.feeds(model)[0], optimized_path=str(path))
    opt = onnx.load(str(path))
    producers = {o: n for n in opt.graph.node for o in n.output}
    for node in opt.graph.node:
        if node.op_type == "QuantizeLinear":
            src = producers.get(node.input[0])
            assert src is None or src.op_type != "DequantizeLinear", node.name
    # the fold pass has nothing left to do on onnxq's own output
    assert RequantFoldPass().run(G.import_graph(result.model)).modified is False


@pytest.mark.parametrize(("zp", "dtype"), [(0, np.uint8), (-128, np.int8)])
def test_a_clamping_pair_between_float_ops_becomes_its_clip(zp, dtype):
    """A Q/DQ pair with its zero point at the type's minimum clips at 0 (and at the top of its
    range): the plan may have folded a Relu or Clip into it, so dropping it as a float island
    dropped that Relu (it did, for a ConvTranspose → Relu → ConvTranspose chain made for the
    OpenVINO EP). It becomes ``Clip(0, top)``: the clamping without the rounding."""
    from math import erf

    nodes = [helper.make_node("Sin", ["x"], ["t"], name="sin"),
             helper.make_node("QuantizeLinear", ["t", "a_s", "a_z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "a_s", "a_z"], ["d"], name="dq"),
             helper.make_node("Erf", ["d"], ["y"], name="erf")]
    model = _qdq_model(nodes, _params("a", 0.003, zp, dtype))
    out = Pipeline([RequantFoldPass()]).run(model)
    assert [n.op_type for n in out.model.graph.node] == ["Sin", "Clip", "Erf"]
    x = np.random.default_rng(2).uniform(-3, 3, (2, 8)).astype(np.float32)
    top = 255 * np.float32(0.003)  # 0.765: sin(x) above it is clipped, as by the pair
    want = np.vectorize(erf)(np.clip(np.sin(x), 0, top)).astype(np.float32)
    np.testing.assert_allclose(run_model(out.model, {"x": x})[0], want, atol=1e-6)


def test_ops_the_openvino_ep_runs_on_int8_are_not_float_islands():
    nodes = [helper.make_node("Pad", ["x", "pads"], ["t"], name="pad"),
             helper.make_node("QuantizeLinear", ["t", "a_s", "a_z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "a_s", "a_z"], ["d"], name="dq"),
             helper.make_node("Erf", ["d"], ["y"], name="erf")]
    pads = numpy_helper.from_array(np.array([0, 1, 0, 1], np.int64), "pads")
    model = _qdq_model(nodes, _params("a", 0.01, 128) + [pads], out_shape=(2, 10))
    cpu = Pipeline([RequantFoldPass()]).run(model)
    assert "QuantizeLinear" not in {n.op_type for n in cpu.model.graph.node}
    ov = Pipeline([RequantFoldPass(openvino=True)]).run(model)
    assert "QuantizeLinear" in {n.op_type for n in ov.model.graph.node}
