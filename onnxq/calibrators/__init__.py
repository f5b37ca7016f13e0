"""Calibrators: pure numpy, ``observe(name, array)`` then ``compute() -> ranges``."""

from __future__ import annotations

from onnxq.calibrators.base import Calibrator
from onnxq.calibrators.minmax import MinMaxCalibrator

__all__ = ["Calibrator", "MinMaxCalibrator", "make_calibrator"]


def make_calibrator(config) -> Calibrator:
    """Build the calibrator a ``CalibrationConfig`` names."""
    if config.method == "minmax":
        return MinMaxCalibrator(allow_nonfinite=config.allow_nonfinite)
    raise ValueError(f"unknown calibrator {config.method!r}")
