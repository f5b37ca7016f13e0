"""Percentile calibration: clip each tensor to a high percentile of its value distribution."""

from __future__ import annotations

from onnxq.calibrators._common import (
    HistogramCalibratorBase,
    TensorStats,
    check_fraction,
    make_range,
)
from onnxq.calibrators.histogram import quantile_from_histogram
from onnxq.qtypes import TensorRange

__all__ = ["PercentileCalibrator"]


class PercentileCalibrator(HistogramCalibratorBase):
    """Per-tensor ``[P(100 - p), P(p)]`` read off a streaming histogram's CDF.

    Each percentile is interpolated linearly inside its histogram bin, so it matches the exact
    percentile of all observed values to within one bin width. Each side is cut independently
    at ``100 - p`` and ``p`` (onnxruntime instead cuts ``(100 - p) / 2`` per side). Results
    never go beyond the observed extremes and always include 0, so a non-negative tensor gets
    ``lo == 0``. ``symmetric`` takes the ``p``-th percentile ``t`` of ``|x|`` and returns
    ``[-t, t]``.
    """

    name = "percentile"

    def __init__(
        self,
        *,
        percentile: float = 99.999,
        num_bins: int = 2048,
        symmetric: bool = False,
        allow_nonfinite: bool = False,
    ) -> None:
        super().__init__(num_bins=num_bins, magnitude=symmetric, allow_nonfinite=allow_nonfinite)
        self.percentile = check_fraction(self.name, "percentile", percentile, 50.0, 100.0)
        self.symmetric = bool(symmetric)

    def _range(self, stats: TensorStats) -> TensorRange:
        hist = stats.histogram
        assert hist is not None and hist.min is not None and hist.max is not None
        edges, counts = hist.edges, hist.counts
        q = self.percentile / 100.0
        hi = quantile_from_histogram(edges, counts, q, hist.min, hist.max)
        if self.symmetric:
            return TensorRange(-hi, hi)
        lo = quantile_from_histogram(edges, counts, 1.0 - q, hist.min, hist.max)
        return make_range(lo, hi)
