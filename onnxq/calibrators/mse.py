"""MSE calibration: the clipping range that minimises the expected quantization error.

For a candidate range ``[a, b]`` quantized to ``n`` levels the scale is ``s = (b - a)/(n - 1)``
and the expected squared error is estimated from the tensor's histogram as

* ``s**2 / 12`` for every value inside ``[a, b]`` (uniform rounding noise), plus
* ``(x - b)**2`` / ``(a - x)**2`` for every value clipped above / below (values taken at bin
  centres, clamped to the observed extremes).

Candidates are shrink factors ``f`` of the observed extremes (``a = f_lo * min``,
``b = f_hi * max``, each side searched independently over the same factor grid: 128 linear
steps plus 96 geometric steps down to one histogram bin). Non-negative tensors keep ``a = 0``.
``symmetric`` searches ``[-t, t]`` over a histogram of ``|x|`` with ``s = 2t/(n - 1)``.
"""

from __future__ import annotations

import numpy as np

from onnxq.calibrators._common import HistogramCalibratorBase, TensorStats, make_range
from onnxq.errors import ConfigError
from onnxq.qtypes import TensorRange

__all__ = ["MSECalibrator", "clip_errors"]


def _shrink_factors(num_bins: int) -> np.ndarray:
    """Sorted, unique shrink factors in ``(0, 1]`` (1 is always included)."""
    linear = np.linspace(0.0, 1.0, 129)[1:]
    geometric = np.geomspace(1.0 / num_bins, 1.0, 96)
    return np.unique(np.concatenate([linear, geometric, [1.0]]))


def clip_errors(
    centers: np.ndarray, counts: np.ndarray, bounds: np.ndarray, upper: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per bound: (number of values clipped, sum of their squared clipping errors).

    ``upper`` clips values above each bound, otherwise values below it.
    """
    excess = centers[None, :] - bounds[:, None] if upper else bounds[:, None] - centers[None, :]
    np.maximum(excess, 0.0, out=excess)
    clipped = (excess > 0) @ counts
    return clipped, (excess * excess) @ counts


class MSECalibrator(HistogramCalibratorBase):
    """Per-tensor range minimising the histogram-estimated quantization MSE."""

    name = "mse"

    def __init__(
        self,
        *,
        num_bins: int = 2048,
        qtype_levels: int = 256,
        symmetric: bool = False,
        allow_nonfinite: bool = False,
    ) -> None:
        super().__init__(num_bins=num_bins, magnitude=symmetric, allow_nonfinite=allow_nonfinite)
        if int(qtype_levels) != qtype_levels or qtype_levels < 2:
            raise ConfigError(f"mse: qtype_levels must be an integer >= 2, got {qtype_levels!r}")
        self.qtype_levels = int(qtype_levels)
        self.symmetric = bool(symmetric)
        self._factors = _shrink_factors(self.num_bins)

    def _candidates(self, extreme: float) -> np.ndarray:
        return extreme * self._factors if extreme != 0.0 else np.zeros(1)

    def _range(self, stats: TensorStats) -> TensorRange:
        hist = stats.histogram
        assert hist is not None and hist.min is not None and hist.max is not None
        counts = hist.counts.astype(np.float64)
        edges = hist.edges
        keep = counts > 0
        centers = np.clip(0.5 * (edges[:-1] + edges[1:])[keep], hist.min, hist.max)
        counts = counts[keep]
        total = counts.sum()
        steps = self.qtype_levels - 1

        if self.symmetric:
            t = self._candidates(hist.max)
            n_clip, err = clip_errors(centers, counts, t, upper=True)
            cost = (total - n_clip) * (2.0 * t / steps) ** 2 / 12.0 + err
            best = float(t[int(np.argmin(cost))])
            return TensorRange(-best, best)

        lo = self._candidates(min(hist.min, 0.0))
        hi = self._candidates(max(hist.max, 0.0))
        n_lo, err_lo = clip_errors(centers, counts, lo, upper=False)
        n_hi, err_hi = clip_errors(centers, counts, hi, upper=True)
        inside = total - n_lo[:, None] - n_hi[None, :]
        scale = (hi[None, :] - lo[:, None]) / steps
        cost = inside * scale**2 / 12.0 + err_lo[:, None] + err_hi[None, :]
        j, k = np.unravel_index(int(np.argmin(cost)), cost.shape)
        return make_range(float(lo[j]), float(hi[k]))
