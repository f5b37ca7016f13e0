"""Statistics the accuracy-recovery algorithms take from the calibration run itself.

``InputMeans`` wraps the range calibrator (like ``dynamic_check.DynamicInputCheck``) and keeps,
for the inputs of the quantized compute nodes, their mean over the batch: the whole map for
convolution inputs (so that padding is handled exactly) and the per-channel mean otherwise.
Memory is one batch-1 activation per watched tensor, whatever the number of feeds.
``KeepFeeds`` passes calibration feeds through and keeps the first few (bounded by count and
bytes) for the algorithms that must run the model again (full bias correction, AdaRound).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from onnxq.qtypes import TensorRange

__all__ = ["InputMeans", "KeepFeeds", "keep_feeds", "MAX_KEPT_BYTES"]

#: the feeds kept for data-driven recovery never exceed this many bytes in all
MAX_KEPT_BYTES = 512 << 20


class _Mean:
    """Running mean of one tensor: the batch-mean map (while every feed has the same shape)
    and the per-channel mean along ``axis``."""

    __slots__ = ("axis", "map_sum", "map_count", "shape", "chan_sum", "chan_count")

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.map_sum: np.ndarray | None = None
        self.map_count = 0
        self.shape: tuple[int, ...] | None = None  # the first feed's per-item shape
        self.chan_sum: np.ndarray | None = None
        self.chan_count = 0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        axis = self.axis % x.ndim
        other = tuple(i for i in range(x.ndim) if i != axis)
        chan = x.sum(axis=other)
        if self.chan_sum is None or self.chan_sum.shape != chan.shape:
            if self.chan_sum is not None:  # the channel count changed: not one tensor's stats
                self.chan_sum, self.map_sum = None, None
                return
            self.chan_sum = np.zeros_like(chan)
        self.chan_sum += chan
        self.chan_count += x.size // max(1, chan.size)
        if axis == 0 or x.ndim < 2:
            return
        item = tuple(x.shape[1:])
        if self.shape is None:
            self.shape = item
            self.map_sum = np.zeros(item, np.float64)
        if self.map_sum is not None and item == self.shape:
            self.map_sum += x.sum(axis=0)
            self.map_count += x.shape[0]
        else:
            self.map_sum = None  # shapes vary (dynamic spatial size): per-channel only

    def merge(self, other: _Mean) -> None:
        """Add the sums of a shard that saw other feeds."""
        if other.chan_sum is None or (self.chan_sum is None and self.chan_count):
            return  # the shard saw nothing, or this tensor's stats are already broken
        if self.chan_sum is None:
            self.chan_sum, self.chan_count = other.chan_sum.copy(), other.chan_count
        elif self.chan_sum.shape != other.chan_sum.shape:
            self.chan_sum, self.map_sum = None, None
            return
        else:
            self.chan_sum += other.chan_sum
            self.chan_count += other.chan_count
        if other.shape is None:
            return
        if self.shape is None:
            self.shape, self.map_count = other.shape, other.map_count
            self.map_sum = None if other.map_sum is None else other.map_sum.copy()
        elif self.map_sum is not None and other.map_sum is not None and \
                self.shape == other.shape:
            self.map_sum += other.map_sum
            self.map_count += other.map_count
        else:
            self.map_sum = None

    def channel_mean(self) -> np.ndarray | None:
        if self.chan_sum is None or not self.chan_count:
            return None
        return self.chan_sum / self.chan_count

    def batch_mean(self) -> np.ndarray | None:
        """The mean over the batch (one item's shape): exact where every feed had the first
        feed's shape, else the per-channel mean broadcast over that shape."""
        if self.map_sum is not None and self.map_count:
            return self.map_sum / self.map_count
        chan = self.channel_mean()
        if chan is None or self.shape is None:
            return chan
        axis = (self.axis % (len(self.shape) + 1)) - 1
        shape = [1] * len(self.shape)
        shape[axis] = chan.size
        return np.broadcast_to(chan.reshape(shape), self.shape).copy()


class InputMeans:
    """A calibrator wrapper: watched tensors' means are kept; every observation goes on to
    ``inner``."""

    def __init__(self, inner, watch: Mapping[str, int]) -> None:
        self.inner = inner
        self.name = inner.name
        self.means = {name: _Mean(axis) for name, axis in watch.items()}

    def observe(self, name: str, array: np.ndarray, *, index: int | None = None) -> None:
        mean = self.means.get(name)
        if mean is not None and array.size and array.ndim:
            mean.add(array)
        self.inner.observe(name, array, index=index)

    def compute(self) -> dict[str, TensorRange]:
        return self.inner.compute()

    def merge(self, other: InputMeans) -> None:
        """Add a shard's sums (and its calibrator's observations)."""
        for name, mean in other.means.items():
            self.means[name].merge(mean)
        self.inner.merge(other.inner)

    def batch_means(self) -> dict[str, np.ndarray]:
        """Watched tensor → its mean: over the batch for a channel axis of 1 (a convolution
        input: the whole map, see ``_Mean.batch_mean``), else per channel (a MatMul input:
        every leading axis averaged)."""
        out = {}
        for name, mean in self.means.items():
            value = mean.batch_mean() if mean.axis == 1 else mean.channel_mean()
            if value is not None:
                out[name] = value
        return out


class KeepFeeds:
    """Iterates ``data`` and keeps its first ``count`` feeds (copies) while they fit in
    ``max_bytes``; ``kept`` holds them after the iteration. ``spread``: a uniform sample of
    ``count`` feeds over the whole stream instead (reservoir sampling with a fixed seed, so the
    same data keeps the same feeds), in stream order."""

    def __init__(self, data: Iterable[Mapping[str, np.ndarray]], count: int,
                 max_bytes: int = MAX_KEPT_BYTES, *, spread: bool = False) -> None:
        self.data = data
        self.count = count
        self.max_bytes = max_bytes
        self.spread = spread
        self.kept: list[dict[str, np.ndarray]] = []
        self.full = False  # True when the byte bound stopped the keeping early

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
        self.kept, self.full = [], False
        picked: list[tuple[int, dict[str, np.ndarray], int]] = []  # (position, feed, bytes)
        rng = np.random.default_rng(0)
        used = 0
        for i, feed in enumerate(self.data):
            if isinstance(feed, Mapping) and not self.full:
                size = sum(int(np.asarray(v).nbytes) for v in feed.values())
                if len(picked) < self.count:
                    if used + size <= self.max_bytes:
                        picked.append((i, _copy(feed), size))
                        used += size
                    else:
                        self.full = True
                elif self.spread and (j := int(rng.integers(0, i + 1))) < self.count \
                        and used - picked[j][2] + size <= self.max_bytes:
                    used += size - picked[j][2]
                    picked[j] = (i, _copy(feed), size)
            yield feed
        self.kept = [f for _, f, _ in sorted(picked, key=lambda p: p[0])]


def _copy(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in feed.items()}


class _SizedKeepFeeds(KeepFeeds):
    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]


def keep_feeds(data: Iterable[Mapping[str, np.ndarray]], count: int, *, spread: bool = False
               ) -> KeepFeeds:
    """``KeepFeeds`` over ``data``, sized when ``data`` is (for the progress bar)."""
    return (_SizedKeepFeeds if hasattr(data, "__len__") else KeepFeeds)(data, count,
                                                                         spread=spread)
