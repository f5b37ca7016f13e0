"""Valid models from other tools are accepted: onnxruntime's quantize_static writes bias
DequantizeLinear nodes with a [1]-shaped scale and a scalar zero point (valid ONNX); onnxq
refused them as "invalid"."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxq
from tests import builders as B
from tests.conftest import cosine, run_model

quantization = pytest.importorskip("onnxruntime.quantization")


def _ort_qdq(tmp_path) -> tuple[onnx.ModelProto, list[dict]]:
    model = B.conv_bn_relu()
    onnx.save(model, tmp_path / "m.onnx")
    feeds = B.feeds(model, batch=2, n=4, seed=1)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantization.quantize_static(
        str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), Reader(),
        quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        weight_type=quantization.QuantType.QInt8, activation_type=quantization.QuantType.QUInt8)
    return onnx.load(tmp_path / "q.onnx"), feeds


@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_onnxruntime_qdq_models_are_accepted(tmp_path, fmt):
    ort_model, feeds = _ort_qdq(tmp_path)
    bias_dqs = [n for n in ort_model.graph.node if n.op_type == "DequantizeLinear"
                and "bias" in n.name]
    assert bias_dqs, "the fixture no longer has onnxruntime's bias DequantizeLinear nodes"
    result = onnxq.quantize(tmp_path / "q.onnx", progress=False, format=fmt)
    onnx.checker.check_model(result.model, full_check=True)
    for feed in feeds:
        want, got = run_model(ort_model, feed)[0], run_model(result.model, feed)[0]
        assert cosine(want, got) >= 0.9999
        scale = np.abs(want).max() / 255
        assert np.abs(want - got).max() <= 1.01 * scale  # within one output step
