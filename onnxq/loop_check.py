"""Is one int8 scale enough for a loop body's tensors across iterations?

A ``Loop``/``Scan`` body runs the same nodes on every iteration, and a static int8 tensor has
one scale for all of them. When the values shrink (or grow) from iteration to iteration — a
decaying recurrence — the scale fits the largest iteration and the others keep a few levels:
found by the fuzz suite, a two-iteration conv loop whose second iteration was 1/40 of the first
gave cosine 0.76 against FP32. ``IterationWatch`` wraps the range calibrator and, for the body
tensors it watches (observed stacked, iteration first), keeps each iteration's largest |x|;
``unstable`` names the tensors whose typical or last iteration uses less than ``MIN_SHARE``
of the range, and the caller keeps their bodies float.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxq.calibrators import Calibrator
from onnxq.qtypes import TensorRange

__all__ = ["IterationWatch", "loop_tensors", "MIN_SHARE"]

#: the median iteration (and the last, which the loop returns) must reach this share of the
#: tensor's largest |x|: below it, more than 3 of int8's 8 bits are lost on them (~18 dB)
MIN_SHARE = 1 / 8


def loop_tensors(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor defined in (or carried through) a main-graph Loop/Scan body → the loop's node."""
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in ("Loop", "Scan") or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.name == "body":
                body = attr.g
                for name in [*(i.name for i in body.input), *(o for n in body.node
                                                               for o in n.output if o)]:
                    out.setdefault(name, node.name or node.op_type)
    return out


#: feeds whose per-iteration maxima are kept per tensor
KEPT_RUNS = 64


class IterationWatch:
    """A calibrator wrapper that also keeps per-iteration maxima of ``watched`` tensors."""

    def __init__(self, inner: Calibrator, watched: dict[str, str]) -> None:
        self.inner, self.watched = inner, watched
        self.name = inner.name
        self.top: dict[str, float] = {}
        self.iters: dict[str, list[np.ndarray]] = {}

    def observe(self, name: str, array: np.ndarray, *, index: int | None = None) -> None:
        if name in self.watched and array.ndim >= 1 and array.shape[0] > 1 and array.size:
            per = np.abs(array.reshape(array.shape[0], -1)).max(axis=1).astype(np.float64)
            self.top[name] = max(self.top.get(name, 0.0), float(per.max()))
            runs = self.iters.setdefault(name, [])
            if len(runs) < KEPT_RUNS:  # a bounded sample of feeds
                runs.append(per)
        self.inner.observe(name, array, index=index)

    def compute(self) -> dict[str, TensorRange]:
        return self.inner.compute()

    def merge(self, other: IterationWatch) -> None:
        """Add a shard that saw later feeds (merged in feed order, the sample of runs is the
        one a single pass keeps)."""
        for name, top in other.top.items():
            self.top[name] = max(self.top.get(name, 0.0), top)
        for name, runs in other.iters.items():
            mine = self.iters.setdefault(name, [])
            mine.extend(runs[:max(0, KEPT_RUNS - len(mine))])
        self.inner.merge(other.inner)  # type: ignore[attr-defined]

    def unstable(self) -> dict[str, tuple[str, float]]:
        """Tensor → (its loop, the share of the range its typical/last iteration reaches),
        for the tensors below ``MIN_SHARE``."""
        out = {}
        for name, runs in self.iters.items():
            top = self.top.get(name, 0.0)
            if top <= 0.0:
                continue
            typical = float(np.median(np.concatenate(runs)))
            last = float(np.median([r[-1] for r in runs]))
            share = min(typical, last) / top
            if share < MIN_SHARE:
                out[name] = (self.watched[name], share)
        return out
