"""QLinear (QOperator) lowering of the same plan: structure, agreement with QDQ, validity."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

import onnxq
from onnxq import graph as G
from onnxq.passes import QLinearLoweringPass
from tests import builders as B
from tests.conftest import run_model

QLINEAR_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "QLinearAdd",
               "QLinearMul", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
               "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"}


def _both(name: str):
    model = B.ALL_SMALL[name]()
    ranges = onnxq.calibrate(model, B.feeds(model, batch=4, n=8, seed=1), progress=False)
    # the mechanics of both forms on every node: the placement would keep tiny convs float
    qdq = onnxq.quantize(model, ranges=ranges, progress=False, objective="size")
    qlinear = onnxq.quantize(model, ranges=ranges, progress=False, format="qlinear",
                             objective="size")
    return model, qdq, qlinear


@pytest.mark.parametrize("name", sorted(B.ALL_SMALL))
def test_qlinear_agrees_with_qdq_within_one_lsb(name):
    """Acceptance: >= 99.9 % of output elements within 1 LSB of the output scale (measured:
    identical, since onnxruntime fuses the QDQ form into the same integer kernels)."""
    model, qdq, qlinear = _both(name)
    counts = Counter(n.op_type for n in qlinear.model.graph.node)
    anchors = sum(1 for n in qdq.plan.nodes if n.op in {"Conv", "Gemm", "MatMul"})
    assert sum(counts[op] for op in QLINEAR_OPS) >= anchors
    assert counts["Conv"] == counts["Gemm"] == counts["MatMul"] == 0
    scales = [onnx.numpy_helper.to_array(i) for i in qdq.model.graph.initializer
              if i.name.endswith("_scale")]
    lsb = float(np.median([s.max() for s in scales]))
    for feed in B.feeds(model, batch=3, n=2, seed=9):
        a, b = run_model(qdq.model, feed)[0], run_model(qlinear.model, feed)[0]
        assert np.mean(np.abs(a - b) <= lsb) >= 0.999


def test_cnn_lowers_completely():
    _, _, qlinear = _both("residual_block")
    ops = Counter(n.op_type for n in qlinear.model.graph.node)
    assert ops["DequantizeLinear"] == 0 and ops["QuantizeLinear"] == 1  # the graph input
    assert ops["QLinearConv"] == 6 and ops["QLinearAdd"] == 2
    assert ops["MaxPool"] == 1  # runs on uint8
    assert not qlinear.report.skipped or all("QDQ form" not in r for _, r in
                                             qlinear.report.skipped)


def test_lowering_is_idempotent_and_valid(tmp_path):
    _, _, qlinear = _both("depthwise_hardswish")
    onnx.checker.check_model(qlinear.model, full_check=True)
    assert QLinearLoweringPass().run(G.import_graph(qlinear.model)).modified is False
    qlinear.save(tmp_path / "q.onnx")  # validated by onnxruntime


def test_cli_format_qlinear(tmp_path):
    from onnxq.cli import main

    model = B.conv_bn_relu()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "c.npz", input=B.feeds(model, batch=6)[0]["input"])
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(tmp_path / "m.onnx"), str(out), "--calib-data",
                 str(tmp_path / "c.npz"), "--format", "qlinear", "--quiet"]) == 0
    assert any(n.op_type == "QLinearConv" for n in onnx.load(str(out)).graph.node)


def test_gemm_with_explicit_beta_lowers_to_a_loadable_qgemm(tmp_path):
    """Exporters write Gemm(beta=1.0); com.microsoft QGemm has no beta attribute."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", alpha=1.0, beta=1.0,
                          transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(rng.standard_normal((4, 16)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(4)]
    result = onnxq.quantize(model, feeds, progress=False, format="qlinear")
    assert [n.op_type for n in result.model.graph.node if n.op_type == "QGemm"]
    result.save(tmp_path / "q.onnx")  # onnxruntime loads it
    assert np.allclose(run_model(model, feeds[0])[0], run_model(result.model, feeds[0])[0],
                       atol=0.1)
