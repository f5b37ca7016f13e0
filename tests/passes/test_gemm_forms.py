"""Gemm with alpha/beta != 1 is quantized (alpha and beta folded into the constant B and C);
a MatMul/Gemm whose constant is the first input stays float, and the error says why (it said
"no ... with float32 inputs was found")."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import graph as G
from onnxq.passes import FusionPass
from tests.conftest import cosine, run_model


def _model(nodes, consts, x_shape, y_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(shape, n=4):
    rng = np.random.default_rng(3)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("alpha,beta", [(0.5, 1.0), (1.0, 0.25), (2.0, -1.5)])
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_gemm_alpha_beta_are_folded_and_quantized(alpha, beta, fmt):
    rng = np.random.default_rng(0)
    consts = {"w": rng.standard_normal((8, 6)).astype(np.float32),
              "b": rng.standard_normal(6).astype(np.float32)}
    model = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="g", alpha=alpha,
                                     beta=beta)], consts, [4, 8], [4, 6])
    result = onnxq.quantize(model, _feeds((4, 8)), progress=False, format=fmt)
    assert result.report.quantized == (("g", "Gemm"),)
    onnx.checker.check_model(result.model, full_check=True)
    for feed in _feeds((4, 8), 2):
        assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) >= 0.999


def test_gemm_folding_is_exact_and_idempotent():
    rng = np.random.default_rng(1)
    consts = {"w": rng.standard_normal((8, 6)).astype(np.float32),
              "b": rng.standard_normal(6).astype(np.float32)}
    model = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="g", alpha=0.5,
                                     beta=2.0)], consts, [4, 8], [4, 6])
    graph = G.import_graph(model)
    first = FusionPass().run(graph)
    assert first.modified and any("gemm_alpha_beta: 1" in n for n in first.notes)
    assert not FusionPass().run(first.graph).modified
    fused = G.export_graph(first.graph, model)
    feed = _feeds((4, 8), 1)[0]
    np.testing.assert_allclose(run_model(fused, feed)[0], run_model(model, feed)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_constant_first_operand_gives_the_real_reason(op):
    """Gemm keeps the real reason; MatMul W·x is quantized (W as a u8 activation)."""
    rng = np.random.default_rng(2)
    model = _model([helper.make_node(op, ["w", "x"], ["y"], name="first_const")],
                   {"w": rng.standard_normal((6, 8)).astype(np.float32)}, [8, 4], [6, 4])
    if op == "MatMul":
        result = onnxq.quantize(model, _feeds((8, 4)), progress=False)
        assert dict(result.report.quantized) == {"first_const": "MatMul"}
        return
    # nothing else to quantize: written float, the note gives the reason
    notes = onnxq.quantize(model, _feeds((8, 4)), progress=False).report.notes
    assert any(re.search(r"nothing onnxq can quantize \(first_const \(Gemm\): the constant "
                         r"operand is Gemm's first input", n) for n in notes), notes
