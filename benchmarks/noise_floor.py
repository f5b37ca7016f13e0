"""What a zoo model's task metric can resolve: FP32 scored on its own inputs plus a dither
smaller than the data's own precision.

An 8-bit image or a 16-bit recording is already rounded to its source's grid, so any change of
less than half a source step ("half an LSB") is a change the data cannot rule out. Scoring FP32
on its evaluation data with such a dither added, against FP32 on the data as given, gives the
drop a model with *no* quantization error but that input-level noise would show. A quantized
model whose drop is at or under that floor is within what the metric can tell apart from FP32
on this evaluation set; one above it has measurable damage.

Only the inputs a benchmark names are dithered (``Bench.dither_bits``: name → source bits, 8
for images, 16 for audio); token ids, recurrent states and sample rates never are. One source
step is the input's range in the feed divided by ``2**bits - 1`` (images are normalised per
channel, audio per clip, so the range stands for the full scale), and the dither is uniform on
±half of it, from a fixed seed: the floor is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

#: seeds scored; the floor is their median drop, the spread is reported beside it
SEEDS = (0, 1, 2)


def dither(feed: Mapping[str, np.ndarray], bits: Mapping[str, int],
           rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``feed`` with uniform noise of ±half a source step added to each float input named in
    ``bits``; every other input is passed through unchanged (and never modified in place)."""
    out = dict(feed)
    for name, depth in sorted(bits.items()):
        x = feed.get(name)
        if x is None or not np.issubdtype(np.asarray(x).dtype, np.floating):
            continue
        x = np.asarray(x)
        step = float(np.max(x) - np.min(x)) / (2 ** depth - 1) if x.size else 0.0
        noise = rng.uniform(-0.5, 0.5, x.shape) * step
        out[name] = (x + noise).astype(x.dtype)
    return out


def dithered(run: Callable[[dict], list], bits: Mapping[str, int], seed: int
             ) -> Callable[[dict], list]:
    """``run`` on dithered feeds, one generator per scoring so the same seed gives the same
    noise in the same order of calls."""
    rng = np.random.default_rng(seed)
    return lambda feed: run(dither(feed, bits, rng))


def measure(evaluate, run: Callable[[dict], list], ref, bits: Mapping[str, int],
            seeds: tuple[int, ...] = SEEDS) -> dict | None:
    """FP32's drop on its own evaluation with dithered inputs, per seed and the median
    (``None`` when the benchmark names no input to dither). ``evaluate(run, ref)`` is the
    benchmark's scorer and ``ref`` its FP32 result."""
    if not bits:
        return None
    drops = [float(ref.metric - evaluate(dithered(run, bits, s), ref).metric) for s in seeds]
    return {"drop": float(np.median(drops)), "drops": drops,
            "bits": dict(sorted(bits.items()))}


def within(row: Mapping, floor: Mapping | None) -> bool:
    """Whether a quantized row's drop is no larger than the FP32 noise floor's median drop."""
    return (floor is not None and row.get("drop") is not None
            and row["drop"] <= floor["drop"])
