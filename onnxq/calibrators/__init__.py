"""Calibrators: pure numpy, ``observe(name, array)`` then ``compute() -> ranges``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from onnxq.calibrators.auto import AutoRanges
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
    "CALIBRATORS",
    "METHODS",
    "AutoRanges",
    "make_calibrator",
]

if TYPE_CHECKING:
    from onnxq.config import CalibrationConfig


def _minmax(c: CalibrationConfig) -> Calibrator:
    return MinMaxCalibrator(allow_nonfinite=c.allow_nonfinite)


def _percentile(c: CalibrationConfig) -> Calibrator:
    return PercentileCalibrator(percentile=c.percentile, num_bins=c.num_bins,
                                allow_nonfinite=c.allow_nonfinite)


def _mse(c: CalibrationConfig) -> Calibrator:
    return MSECalibrator(num_bins=c.num_bins, allow_nonfinite=c.allow_nonfinite)


def _entropy(c: CalibrationConfig) -> Calibrator:
    return EntropyCalibrator(num_bins=c.num_bins, allow_nonfinite=c.allow_nonfinite)


#: The one registry of calibration methods: name → factory from a ``CalibrationConfig``.
#: Config validation, the CLI's choices, ``tune``'s recipes (in this order: cheapest and most
#: robust first) and the docs all derive from it. Read-only; extend by copying.
CALIBRATORS: Mapping[str, Callable[[CalibrationConfig], Calibrator]] = MappingProxyType({
    "minmax": _minmax, "percentile": _percentile, "mse": _mse, "entropy": _entropy})


#: ``calibration.method`` choices: every calibrator, and ``auto`` (min/max or percentile,
#: whichever model is closer to FP32 on the kept calibration feeds; see ``calibrators.auto``)
METHODS: tuple[str, ...] = ("auto", *CALIBRATORS)


def make_calibrator(config: CalibrationConfig) -> Calibrator:
    """Build the calibrator a ``CalibrationConfig`` names."""
    if config.method == "auto":
        return AutoRanges(percentile=config.percentile, num_bins=config.num_bins,
                          allow_nonfinite=config.allow_nonfinite)
    factory = CALIBRATORS.get(config.method)
    if factory is None:
        raise ValueError(f"unknown calibrator {config.method!r}; choose one of "
                         f"{', '.join(CALIBRATORS)}")
    return factory(config)
