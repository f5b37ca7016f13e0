"""Min/max calibration: the range of all observed values (or a moving average of batch ranges)."""

from __future__ import annotations

import numpy as np

from onnxq.calibrators._common import TensorCalibratorBase, TensorStats, check_fraction, make_range
from onnxq.qtypes import TensorRange

__all__ = ["MinMaxCalibrator"]


class _MovingStats(TensorStats):
    """Per-tensor state of the moving-average variant: the averaged batch extremes."""

    __slots__ = ("avg_lo", "avg_hi")

    def __init__(self) -> None:
        super().__init__()
        self.avg_lo: float | None = None
        self.avg_hi: float | None = None


class MinMaxCalibrator(TensorCalibratorBase):
    """Per-tensor ``[min, max]`` over every batch.

    With ``moving_average`` the range is an exponential moving average of the per-batch
    minimum and maximum: ``r <- r + c * (batch - r)`` with ``c = averaging_constant``, starting
    from the first batch. ``symmetric`` turns ``[lo, hi]`` into ``[-m, m]`` with
    ``m = max(|lo|, |hi|)``. The range always includes 0; a constant tensor may give
    ``lo == hi == 0`` (scale handling is the quantizer's business).
    """

    name = "minmax"

    def __init__(
        self,
        *,
        moving_average: bool = False,
        averaging_constant: float = 0.01,
        symmetric: bool = False,
        allow_nonfinite: bool = False,
    ) -> None:
        super().__init__(allow_nonfinite=allow_nonfinite)
        self.moving_average = bool(moving_average)
        self.averaging_constant = check_fraction(
            self.name, "averaging_constant", averaging_constant, 0.0, 1.0
        )
        self.symmetric = bool(symmetric)

    def _new_stats(self) -> TensorStats:
        return _MovingStats() if self.moving_average else TensorStats()

    def _update(self, stats: TensorStats, values: np.ndarray) -> None:
        if not isinstance(stats, _MovingStats):
            return  # the exact extremes are tracked by the base class
        lo, hi = float(values.min()), float(values.max())
        if stats.avg_lo is None or stats.avg_hi is None:
            stats.avg_lo, stats.avg_hi = lo, hi
            return
        c = self.averaging_constant
        stats.avg_lo += c * (lo - stats.avg_lo)
        stats.avg_hi += c * (hi - stats.avg_hi)

    @property
    def mergeable(self) -> bool:
        return not self.moving_average

    def _merge_stats(self, mine: TensorStats, theirs: TensorStats) -> None:
        if self.moving_average:
            raise ValueError("a moving-average min/max depends on the order of the batches: "
                             "it cannot be merged from shards; use the plain min/max")

    def _range(self, stats: TensorStats) -> TensorRange:
        lo, hi = stats.lo, stats.hi
        # avg_lo and avg_hi are always set together (in _update)
        if (isinstance(stats, _MovingStats) and stats.avg_lo is not None
                and stats.avg_hi is not None):
            lo, hi = stats.avg_lo, stats.avg_hi
        if self.symmetric:
            m = max(abs(lo), abs(hi))
            return TensorRange(-m, m)
        return make_range(lo, hi)
