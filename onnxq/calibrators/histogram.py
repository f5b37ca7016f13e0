"""A memory-bounded, exactly mergeable streaming histogram.

The grid is always ``num_bins`` uniform bins whose width is a power of two, ``w = 2**e``, and
whose edges are integer multiples of ``w`` (so 0 is always an edge). A value ``x`` falls into the
bin with absolute index ``floor(x / w)``; both the division by a power of two and the floor are
exact in floating point. The grid also always covers 0 (``[min(0, xmin), max(0, xmax)]``), which
is what quantization ranges need anyway.

When new data no longer fits into ``num_bins`` bins, the exponent ``e`` grows by as much as
needed and old bins merge exactly (``floor(k / 2**d)``), so no mass is ever lost or split. Because
``e`` is the smallest exponent for which the observed ``[min, max]`` fits, and the bin of every
value only depends on ``e``, the final histogram is bit-identical regardless of batch order,
batch size, or how partial histograms were merged.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["StreamingHistogram", "quantile_from_histogram"]

# Smallest bin width exponent: 2**-149 is the smallest float32 subnormal. It only matters for
# data that is (almost) all zeros, where any width fits.
_MIN_EXPONENT = -149


def _fits(lo: float, hi: float, exponent: int, num_bins: int) -> bool:
    """Whether ``[lo, hi]`` (with ``lo <= 0 <= hi``) fits into ``num_bins`` bins of ``2**e``."""
    first = math.floor(math.ldexp(lo, -exponent))
    last = math.floor(math.ldexp(hi, -exponent))
    return last - first + 1 <= num_bins


def _fit_exponent(lo: float, hi: float, num_bins: int) -> int:
    """The smallest exponent ``e >= _MIN_EXPONENT`` such that ``[lo, hi]`` fits the grid."""
    span = hi - lo
    if span <= 0.0:
        return _MIN_EXPONENT
    # Initial guess from the span, then correct by +-1 steps (at most a few iterations).
    exponent = max(_MIN_EXPONENT, math.frexp(span / num_bins)[1] - 1)
    while not _fits(lo, hi, exponent, num_bins):
        exponent += 1
    while exponent > _MIN_EXPONENT and _fits(lo, hi, exponent - 1, num_bins):
        exponent -= 1
    return exponent


def _coarsen(index: np.ndarray, shift: int) -> np.ndarray:
    """Absolute bin indices after the bin width grew by ``2**shift`` (floor division)."""
    # |index| < 2**62 always (it is bounded by num_bins), so larger shifts give the same result.
    return np.right_shift(index, min(shift, 62))


class StreamingHistogram:
    """A histogram over a uniform power-of-two grid that widens as new data arrives.

    Memory is ``O(num_bins)`` no matter how many batches are added. ``counts`` are exact int64
    counts; ``total`` is conserved exactly by :meth:`add`'s re-binning and by :meth:`merge`.
    Non-finite values must be filtered out by the caller.
    """

    def __init__(self, num_bins: int = 2048) -> None:
        if int(num_bins) != num_bins or num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")
        self._num_bins = int(num_bins)
        self._counts = np.zeros(self._num_bins, dtype=np.int64)
        self._exponent = _MIN_EXPONENT
        self._origin = 0  # absolute index (in units of 2**exponent) of the first bin
        self._min = math.inf
        self._max = -math.inf

    # ----------------------------------------------------------------------------- properties
    @property
    def num_bins(self) -> int:
        return self._num_bins

    @property
    def bin_width(self) -> float:
        return math.ldexp(1.0, self._exponent)

    @property
    def edges(self) -> np.ndarray:
        """The ``num_bins + 1`` bin edges (float64, exact multiples of :attr:`bin_width`)."""
        index = np.arange(self._origin, self._origin + self._num_bins + 1, dtype=np.float64)
        return np.ldexp(index, self._exponent)

    @property
    def counts(self) -> np.ndarray:
        """A copy of the ``num_bins`` int64 bin counts."""
        return self._counts.copy()

    @property
    def total(self) -> int:
        return int(self._counts.sum())

    @property
    def min(self) -> float | None:
        """The exact smallest value added, or None while the histogram is empty."""
        return self._min if self._min <= self._max else None

    @property
    def max(self) -> float | None:
        """The exact largest value added, or None while the histogram is empty."""
        return self._max if self._min <= self._max else None

    # ------------------------------------------------------------------------------- updates
    def add(self, array: np.ndarray) -> None:
        """Add every element of ``array`` (any shape; all values must be finite)."""
        values = np.asarray(array, dtype=np.float64).ravel()
        if values.size == 0:
            return
        lo, hi = float(values.min()), float(values.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("StreamingHistogram.add() got NaN/Inf values; filter them first")
        self._regrid(min(self._min, lo), max(self._max, hi), self._exponent)
        index = np.floor(np.ldexp(values, -self._exponent)).astype(np.int64) - self._origin
        np.clip(index, 0, self._num_bins - 1, out=index)  # guards float rounding only
        self._counts += np.bincount(index, minlength=self._num_bins)

    def merge(self, other: StreamingHistogram) -> None:
        """Add all of ``other``'s mass into this histogram (``other`` is left unchanged)."""
        if other.min is None:
            return
        lo, hi = min(self._min, other._min), max(self._max, other._max)
        self._regrid(lo, hi, max(self._exponent, other._exponent))
        shift = self._exponent - other._exponent
        absolute = np.arange(other._origin, other._origin + other._num_bins, dtype=np.int64)
        index = _coarsen(absolute, shift) - self._origin
        keep = other._counts != 0
        np.add.at(self._counts, index[keep], other._counts[keep])

    def _regrid(self, lo: float, hi: float, min_exponent: int) -> None:
        """Widen/shift the grid so that ``[lo, hi]`` and 0 fit, merging old bins exactly."""
        grid_lo, grid_hi = min(lo, 0.0), max(hi, 0.0)
        exponent = max(min_exponent, _fit_exponent(grid_lo, grid_hi, self._num_bins))
        origin = math.floor(math.ldexp(grid_lo, -exponent))
        if exponent != self._exponent or origin != self._origin:
            shift = exponent - self._exponent
            occupied = np.flatnonzero(self._counts)
            new_counts = np.zeros(self._num_bins, dtype=np.int64)
            if occupied.size:
                absolute = occupied.astype(np.int64) + self._origin
                index = _coarsen(absolute, shift) - origin
                np.add.at(new_counts, index, self._counts[occupied])
            self._counts = new_counts
            self._exponent, self._origin = exponent, origin
        self._min, self._max = lo, hi

    def __repr__(self) -> str:
        return (
            f"StreamingHistogram(num_bins={self._num_bins}, total={self.total}, "
            f"min={self.min}, max={self.max}, bin_width={self.bin_width:g})"
        )


def quantile_from_histogram(
    edges: np.ndarray, counts: np.ndarray, q: float, lo: float, hi: float
) -> float:
    """The ``q``-quantile (``0 <= q <= 1``) of a histogram, interpolating linearly in a bin.

    Follows ``numpy.percentile``'s default ("linear") definition, where the ``k``-th smallest
    of ``n`` values sits at ``q = k / (n - 1)``: with each bin's count spread uniformly over
    the bin, that value is found at cumulative count ``(n - 1) * q + 0.5``. The result is
    clamped to the exactly known data extremes ``[lo, hi]``.
    """
    cumulative = np.cumsum(counts, dtype=np.int64)
    total = int(cumulative[-1])
    if total == 0:
        raise ValueError("quantile of an empty histogram")
    target = (total - 1) * q + 0.5
    i = int(np.searchsorted(cumulative, target, side="left"))
    i = min(max(i, 0), len(counts) - 1)
    before = int(cumulative[i - 1]) if i > 0 else 0
    fraction = (target - before) / counts[i] if counts[i] else 0.0
    value = float(edges[i] + min(max(fraction, 0.0), 1.0) * (edges[i + 1] - edges[i]))
    return min(max(value, lo), hi)
