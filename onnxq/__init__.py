"""onnxq: ONNX-graph-centric static INT8 quantization for CPUs with VNNI."""

from onnxq.api import QuantReport, QuantResult, build_pipeline, calibrate, prepare, quantize
from onnxq.config import QuantConfig
from onnxq.errors import (
    CalibrationError,
    ConfigError,
    ModelError,
    OnnxqError,
    PassError,
    UnsupportedOpError,
)
from onnxq.pipeline import Pass, PassResult, Pipeline
from onnxq.tune import TuneTarget, tune

__version__ = "0.1.0"

__all__ = [
    "quantize",
    "calibrate",
    "tune",
    "TuneTarget",
    "prepare",
    "build_pipeline",
    "QuantConfig",
    "QuantResult",
    "QuantReport",
    "Pipeline",
    "Pass",
    "PassResult",
    "OnnxqError",
    "ConfigError",
    "ModelError",
    "UnsupportedOpError",
    "CalibrationError",
    "PassError",
]
