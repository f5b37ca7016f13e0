"""Calibrators: pure numpy, ``observe(name, array)`` then ``compute() -> ranges``."""

from __future__ import annotations

from onnxq.calibrators.base import Calibrator
from onnxq.calibrators.entropy import EntropyCalibrator
from onnxq.calibrators.histogram import StreamingHistogram
from onnxq.calibrators.minmax import MinMaxCalibrator
from onnxq.calibrators.mse import MSECalibrator
from onnxq.calibrators.percentile import PercentileCalibrator

__all__ = [
    "Calibrator",
    "MinMaxCalibrator",
    "EntropyCalibrator",
    "PercentileCalibrator",
    "MSECalibrator",
    "StreamingHistogram",
    "make_calibrator",
]


def make_calibrator(config) -> Calibrator:
    """Build the calibrator a ``CalibrationConfig`` names."""
    common = {"allow_nonfinite": config.allow_nonfinite}
    if config.method == "minmax":
        return MinMaxCalibrator(**common)
    if config.method == "entropy":
        return EntropyCalibrator(num_bins=config.num_bins, **common)
    if config.method == "percentile":
        return PercentileCalibrator(percentile=config.percentile, num_bins=config.num_bins,
                                    **common)
    if config.method == "mse":
        return MSECalibrator(num_bins=config.num_bins, **common)
    raise ValueError(f"unknown calibrator {config.method!r}")
