"""Node and tensor names (reliability): ONNX node names are optional and models may already
use the names onnxq generates; neither may change what the quantized model computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from tests.conftest import cosine, run_model


def _model(nodes, consts, out_shape, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _conv_chain(names) -> onnx.ModelProto:
    rng = np.random.default_rng(42)
    consts = {"w1": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
              "w2": (rng.standard_normal((8, 8, 3, 3)) * 0.3).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name=names[0], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name=names[1]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name=names[2], pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["y"], name=names[3])]
    return _model(nodes, consts, [2, 8, 8, 8])


def _feeds(n=4):
    rng = np.random.default_rng(0)
    return [{"x": rng.uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _check(reference: onnx.ModelProto, quantized: onnx.ModelProto) -> None:
    onnx.checker.check_model(quantized, full_check=True)
    for feed in _feeds(2):
        assert cosine(run_model(reference, feed)[0], run_model(quantized, feed)[0]) >= 0.999
    names = [n.name for n in quantized.graph.node]
    assert all(names) and len(set(names)) == len(names)


@pytest.mark.parametrize("names", [["", "", "", ""], ["a", "", "b", ""], ["", "r", "", ""],
                                   ["a", "r", "a", "r"], ["Conv_0", "", "", "Relu_1"]])
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_unnamed_and_duplicate_node_names(names, fmt):
    reference = _conv_chain(["n1", "n2", "n3", "n4"])
    result = onnxq.quantize(_conv_chain(names), _feeds(), progress=False, format=fmt)
    _check(reference, result.model)
    assert len(result.report.quantized) == 2 and len(result.report.folded) == 2


def test_the_input_model_keeps_its_empty_names():
    model = _conv_chain(["", "", "", ""])
    before = model.SerializeToString()
    onnxq.quantize(model, _feeds(), progress=False)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("taken", ["m_scale", "m_zero_point", "m_quantized", "m_dequantized",
                                   "m_QuantizeLinear", "w_quantized", "w_scale", "y_float",
                                   "conv_bias"])
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_generated_names_never_collide_with_the_models(taken, fmt):
    """``Mul(x, m_scale) -> m -> Conv``: onnxq's scale for ``m`` was written under the model's
    own ``m_scale`` (exit 0, wrong numbers); ``m_quantized`` made an invalid model."""
    rng = np.random.default_rng(1)
    consts = {"w": (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32),
              "b": rng.standard_normal(4).astype(np.float32)}
    if taken in ("m_scale", "m_zero_point", "w_scale"):
        consts[taken] = np.full((1, 3, 1, 1), 0.5, np.float32)
        nodes = [helper.make_node("Mul", ["x", taken], ["m"], name="mul")]
    else:
        consts["half"] = np.float32(0.5)
        nodes = [helper.make_node("Relu", ["x"], [taken], name="pre"),
                 helper.make_node("Mul", [taken, "half"], ["m"], name="mul")]
    nodes.append(helper.make_node("Conv", ["m", "w", "b"], ["y"], name="conv"))
    model = _model(nodes, consts, [2, 4, 6, 6])
    result = onnxq.quantize(model, _feeds(), progress=False, format=fmt)
    _check(model, result.model)
    tensors = [t.name for t in result.model.graph.initializer]
    assert len(set(tensors)) == len(tensors)
