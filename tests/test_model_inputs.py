"""Bad models and mismatched data are clean errors (they were tracebacks or read the wrong
file): an input of element type 0, a ModelProto whose external data was not loaded, tune with
another model's evaluation data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import onnxq
from onnxq.errors import CalibrationError, ModelError
from onnxq.tune import TuneTarget, tune
from tests import builders as B


def test_input_of_element_type_0_is_a_clean_error():
    model = B.conv_bn_relu()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UNDEFINED
    with pytest.raises(ModelError, match="element type 0"):
        onnxq.quantize(model, B.feeds(B.conv_bn_relu(), n=1), progress=False)


def test_unloaded_external_data_is_refused_not_resolved_elsewhere(tmp_path):
    model = B.conv_bn_relu()
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    light = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    with pytest.raises(ModelError, match=r"external file\(s\) \['m.data'\] that were not loaded"):
        onnxq.calibrate(light, B.feeds(model, n=1), progress=False)
    ranges = onnxq.calibrate(tmp_path / "m.onnx", B.feeds(model, n=1), progress=False)
    assert ranges  # the path works: its external data is found beside it


def test_tune_with_another_models_eval_data(tmp_path):
    model = B.conv_bn_relu()
    other = [{"tokens": np.zeros((1, 8), np.int64)}]
    with pytest.raises(CalibrationError, match="eval feed #0 is missing input"):
        tune(model, B.feeds(model, n=2), eval_data=other,
             target=TuneTarget(max_drop=0.5, latency=False, max_trials=1))


def test_negative_dim_value_is_dynamic():
    """Old Paddle2ONNX exports declare a dynamic batch as dim_value -1 (the checker accepts
    it, onnxruntime runs any batch): onnxq must accept any size there too."""
    from onnx import TensorProto, helper, numpy_helper

    import onnxq

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4, name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4, 8, 8])],
        initializer=[numpy_helper.from_array(
            (0.3 * rng.standard_normal((4, 3, 3, 3))).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": rng.standard_normal((b, 3, 8, 8)).astype(np.float32)} for b in (1, 2)]
    result = onnxq.quantize(model, feeds, progress=False, objective="size")
    assert dict(result.report.quantized) == {"conv": "Conv"}
