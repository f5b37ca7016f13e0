"""A graph input that also has an initializer is a default the caller may override. It used to
be dropped silently. Now it stays an input while its initializer is unchanged (and feeding it
works); when quantization turns it into a constant (a weight, an int8 operand) the report says
so and how to keep it overridable."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from tests.conftest import cosine, run_model


def _model(overridable: str) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    consts = {"w": (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32),
              "s": np.float32(1.5)}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8]),
              helper.make_tensor_value_info(overridable, TensorProto.FLOAT,
                                            list(consts[overridable].shape))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("Mul", ["r", "s"], ["y"], name="mul")],
        "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6, 6])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _calib():
    rng = np.random.default_rng(1)
    return [{"x": rng.uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)} for _ in range(4)]


@pytest.mark.parametrize("overridable", ["s", "w"])
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_defaults_that_become_constants_are_reported(overridable, fmt):
    model = _model(overridable)
    result = onnxq.quantize(model, _calib(), progress=False, format=fmt)
    onnx.checker.check_model(result.model, full_check=True)
    assert [i.name for i in result.model.graph.input] == ["x"]
    note = next(n for n in result.report.notes if "had a default value" in n)
    assert f"input(s) {overridable} " in note and "exclude_nodes" in note
    feed = _calib()[0]
    assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) >= 0.999


def test_defaults_kept_float_stay_inputs_and_can_be_overridden():
    model = _model("s")
    result = onnxq.quantize(model, _calib(), progress=False, exclude_nodes=["mul"])
    assert [i.name for i in result.model.graph.input] == ["x", "s"]
    assert not any("had a default value" in n for n in result.report.notes)
    feed = _calib()[0]
    fed = {**feed, "s": np.array(-0.5, np.float32)}
    assert cosine(run_model(model, fed)[0], run_model(result.model, fed)[0]) >= 0.999


@pytest.mark.parametrize("opset", [7, 8])
def test_model_zoo_style_ir3_models_with_weights_as_inputs(opset):
    """Opset 7/8, IR 3: every initializer is listed as an input. The opset upgrade used to
    fail ("Input w is undefined") after graphsurgeon dropped those listings."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
         helper.make_node("Relu", ["c"], ["y"], name="relu")], "zoo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6, 6])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=3)
    result = onnxq.quantize(model, _calib(), progress=False, objective="size")
    assert result.report.quantized == (("conv", "Conv"),)
    assert any("opset upgraded" in n for n in result.report.notes)
    onnx.checker.check_model(result.model, full_check=True)
    feed = _calib()[0]
    assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) >= 0.999
