"""Shared calibrator plumbing: non-finite checks, feed counting and per-tensor histograms.

:class:`TensorCalibratorBase` implements the :class:`~onnxq.calibrators.base.Calibrator`
protocol's ``observe``/``compute`` loop once; subclasses only say how a batch of finite values
updates their per-tensor state (``_update``) and how that state becomes a range (``_range``).
:class:`HistogramCalibratorBase` adds a :class:`StreamingHistogram` per tensor for the
percentile, entropy and MSE calibrators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from onnxq.calibrators.histogram import StreamingHistogram
from onnxq.errors import CalibrationError, ConfigError
from onnxq.qtypes import TensorRange

__all__ = [
    "TensorCalibratorBase",
    "HistogramCalibratorBase",
    "TensorStats",
    "check_fraction",
    "finite_values",
    "make_range",
]


def finite_values(name: str, array: np.ndarray, *, feed: int, allow_nonfinite: bool) -> np.ndarray:
    """Flatten ``array`` to a float vector of its finite values.

    Raises :class:`CalibrationError` naming the tensor and feed if there are NaN/Inf values,
    unless ``allow_nonfinite`` is set, in which case those values are dropped.
    """
    values = np.asarray(array)
    if values.dtype.kind not in "biuf":
        raise CalibrationError(
            f"tensor {name!r} has non-numeric dtype {values.dtype} in calibration feed #{feed}; "
            "only real-valued tensors can be calibrated"
        )
    values = values.ravel()
    if values.dtype.kind != "f":
        return values.astype(np.float64)
    finite = np.isfinite(values)
    if finite.all():
        return values
    if not allow_nonfinite:
        bad = int(values.size - np.count_nonzero(finite))
        raise CalibrationError(
            f"tensor {name!r} has NaN/Inf values in calibration feed #{feed} "
            f"({bad} of {values.size} elements); check the input data, or pass "
            "allow_nonfinite=True (--ignore-nonfinite) to skip them"
        )
    return values[finite]


def make_range(lo: float, hi: float) -> TensorRange:
    """A :class:`TensorRange` widened to include 0 (so that zero is exactly representable)."""
    return TensorRange(min(float(lo), 0.0), max(float(hi), 0.0))


@dataclass(slots=True)
class TensorStats:
    """What every calibrator tracks per tensor: feeds seen and exact extremes."""

    feeds: int = 0
    lo: float = math.inf
    hi: float = -math.inf
    zeros: int = 0  # exact zeros (only the entropy calibrator counts them)
    histogram: StreamingHistogram | None = field(default=None)

    @property
    def seen(self) -> bool:
        return self.lo <= self.hi

    @property
    def nonnegative(self) -> bool:
        return self.lo >= 0.0


class TensorCalibratorBase:
    """Feed counting, finiteness checks and the compute loop shared by all calibrators."""

    name: str = "base"

    def __init__(self, *, allow_nonfinite: bool = False) -> None:
        self.allow_nonfinite = bool(allow_nonfinite)
        self._stats: dict[str, TensorStats] = {}

    def observe(self, name: str, array: np.ndarray, *, index: int | None = None) -> None:
        """Record one batch of tensor ``name``.

        ``index`` is the calibration feed number used in error messages; by default it is the
        number of earlier ``observe`` calls for this tensor (0-based).
        """
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats[name] = self._new_stats()
        feed = stats.feeds if index is None else int(index)
        stats.feeds += 1
        values = finite_values(name, array, feed=feed, allow_nonfinite=self.allow_nonfinite)
        if values.size == 0:
            return
        stats.lo = min(stats.lo, float(values.min()))
        stats.hi = max(stats.hi, float(values.max()))
        self._update(stats, values)

    def compute(self) -> dict[str, TensorRange]:
        """One range per tensor that had at least one finite value (others are omitted)."""
        ranges = {name: self._range(s) for name, s in self._stats.items() if s.seen}
        if not ranges:
            what = ", ".join(repr(n) for n in self._stats) or "none"
            raise CalibrationError(
                f"no calibration data was observed by the {self.name!r} calibrator "
                f"(tensors seen: {what}); run at least one calibration feed with finite values"
            )
        return ranges

    @property
    def tensor_names(self) -> list[str]:
        return list(self._stats)

    @property
    def mergeable(self) -> bool:
        """Whether ``merge`` is exact (partial calibrators can stand for one)."""
        return True

    def merge(self, other: TensorCalibratorBase) -> None:
        """Add everything ``other`` (same class and settings) observed. Exact: partial
        calibrators that saw disjoint feeds, merged in any grouping and order, give the ranges
        one calibrator gives after seeing every feed (sharded calibration relies on it)."""
        if type(other) is not type(self) or not _same_settings(self, other):
            raise ValueError(f"cannot merge {other!r} into {self!r}: different calibrators")
        for name, theirs in other._stats.items():
            mine = self._stats.get(name)
            if mine is None:
                mine = self._stats[name] = self._new_stats()
            mine.feeds += theirs.feeds
            mine.lo, mine.hi = min(mine.lo, theirs.lo), max(mine.hi, theirs.hi)
            mine.zeros += theirs.zeros
            if mine.histogram is not None and theirs.histogram is not None:
                mine.histogram.merge(theirs.histogram)
            self._merge_stats(mine, theirs)

    # ------------------------------------------------------------------- subclass interface
    def _new_stats(self) -> TensorStats:
        return TensorStats()

    def _update(self, stats: TensorStats, values: np.ndarray) -> None:
        """Fold one batch of finite, flattened values into ``stats`` (extremes already done)."""

    def _range(self, stats: TensorStats) -> TensorRange:
        raise NotImplementedError

    def _merge_stats(self, mine: TensorStats, theirs: TensorStats) -> None:
        """Merge subclass state beyond extremes, zeros and histogram (none by default)."""


def _same_settings(a: TensorCalibratorBase, b: TensorCalibratorBase) -> bool:
    mine = {k: v for k, v in vars(a).items() if k != "_stats"}
    theirs = {k: v for k, v in vars(b).items() if k != "_stats"}
    return mine.keys() == theirs.keys() and all(
        np.array_equal(v, theirs[k]) if isinstance(v, np.ndarray) else v == theirs[k]
        for k, v in mine.items())


class HistogramCalibratorBase(TensorCalibratorBase):
    """A :class:`StreamingHistogram` per tensor, of the values or (``magnitude``) of ``|x|``."""

    def __init__(self, *, num_bins: int, magnitude: bool, allow_nonfinite: bool) -> None:
        super().__init__(allow_nonfinite=allow_nonfinite)
        if int(num_bins) != num_bins or num_bins < 16:
            raise ConfigError(f"{self.name}: num_bins must be an integer >= 16, got {num_bins!r}")
        self.num_bins = int(num_bins)
        self.magnitude = bool(magnitude)

    def histogram(self, name: str) -> StreamingHistogram:
        """The histogram collected for tensor ``name`` (KeyError if never observed)."""
        hist = self._stats[name].histogram
        assert hist is not None
        return hist

    def _new_stats(self) -> TensorStats:
        return TensorStats(histogram=StreamingHistogram(self.num_bins))

    def _update(self, stats: TensorStats, values: np.ndarray) -> None:
        assert stats.histogram is not None
        stats.histogram.add(np.abs(values) if self.magnitude else values)


def check_fraction(owner: str, label: str, value: float, lo: float, hi: float) -> float:
    """Validate a numeric constructor argument lies in ``[lo, hi]``; returns it as float."""
    value = float(value)
    if not (lo <= value <= hi):
        raise ConfigError(f"{owner}: {label} must be in [{lo}, {hi}], got {value!r}")
    return value
