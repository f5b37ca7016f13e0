"""The ``auto`` method: min/max and percentile ranges from one pass over the data.

Neither method wins everywhere. Clipping the rare largest values (percentile) gives the common
ones a finer grid; it helped an EfficientNet-Lite0 and a CRNN text recognizer and hurt a YOLO
detector, whose rare large activations carry the boxes. So ``quantize`` builds both models and
keeps the one closer to FP32 on the calibration feeds it kept (``range_choice``). This
calibrator measures what both need in the same run: exact extremes and one histogram per tensor.
"""

from __future__ import annotations

from onnxq.calibrators._common import TensorStats, make_range
from onnxq.calibrators.percentile import PercentileCalibrator
from onnxq.qtypes import TensorRange

__all__ = ["AutoRanges"]


class AutoRanges(PercentileCalibrator):
    """``compute()``: the min/max ranges (the first candidate); ``alternative()``: the
    percentile ranges of the same tensors."""

    name = "auto"

    def _range(self, stats: TensorStats) -> TensorRange:
        return make_range(stats.lo, stats.hi)

    def alternative(self) -> dict[str, TensorRange]:
        """The percentile cut of every tensor ``compute`` covers."""
        return {name: PercentileCalibrator._range(self, s)
                for name, s in self._stats.items() if s.seen}
