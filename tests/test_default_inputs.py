"""A graph input that also has an initializer is a default the caller may override; it stays
an input of the quantized model and keeps working when fed (it used to be dropped)."""

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


@pytest.mark.parametrize("overridable", ["s", "w"])
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_inputs_with_defaults_stay_inputs_and_can_be_overridden(overridable, fmt):
    model = _model(overridable)
    rng = np.random.default_rng(1)
    calib = [{"x": rng.uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    result = onnxq.quantize(model, calib, progress=False, format=fmt)
    assert [i.name for i in result.model.graph.input] == ["x", overridable]
    onnx.checker.check_model(result.model, full_check=True)
    feed = calib[0]
    assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) >= 0.999
    other = {"s": np.array(0.75, np.float32),  # within the calibrated output range
             "w": (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)}[overridable]
    fed = {**feed, overridable: other}
    assert cosine(run_model(model, fed)[0], run_model(result.model, fed)[0]) >= 0.99
