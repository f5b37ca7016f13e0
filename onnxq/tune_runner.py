"""How ``tune`` runs its trials: each is built on the driver (materialized), scored here or
on Ray workers, and *recorded* in the order a one-process search decides them.

With ``width`` workers the search evaluates ahead: the next trials of a fixed list (recipes,
the doubling of float nodes) or the next levels of a bisection's decision tree are scored
concurrently, then walked in order; trials the sequential search would never have reached are
dropped unrecorded. The trial log and the chosen model are therefore the same for any number
of workers — only the wall time changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from onnxq.tune_types import Evaluate

__all__ = ["Spec", "Outcome", "Scorer", "score_all", "bisection_mids"]


@dataclass(frozen=True, slots=True)
class Spec:
    """One trial to run: the recipe's name and the settings it changes."""

    recipe: str
    calibrator: str
    per_channel: bool
    float_nodes: tuple[str, ...]
    recovery: str = "config"  # the accuracy-recovery recipe (``tune_recovery``)


@dataclass(slots=True)
class Outcome:
    """A scored (or failed) trial, not yet recorded."""

    spec: Spec
    model: onnx.ModelProto | None = None
    failure: str | None = None
    metric: float | None = None
    seconds: float = 0.0


class Scorer:
    """The metric, held by a worker (unpickled once); models arrive as serialized bytes."""

    def __init__(self, evaluate: Evaluate) -> None:
        self.evaluate = evaluate

    def score(self, blob: bytes) -> tuple[float, float]:
        t0 = time.monotonic()
        value = self.evaluate(onnx.load_model_from_string(blob))
        return value, time.monotonic() - t0


def score_all(outcomes: Sequence[Outcome], evaluate: Evaluate, pool) -> None:
    """Fill in ``metric`` for every built outcome: here, or concurrently on ``pool``."""
    todo = [o for o in outcomes if o.model is not None]
    if pool is None:
        for o in todo:
            t0 = time.monotonic()
            assert o.model is not None
            o.metric = evaluate(o.model)
            o.seconds += time.monotonic() - t0
        return
    calls = [(o.model.SerializeToString(),) for o in todo if o.model is not None]
    for o, (metric, seconds) in zip(todo, pool.imap("score", calls), strict=True):
        o.metric, o.seconds = metric, o.seconds + seconds


def bisection_mids(lo: int, hi: int, width: int) -> list[int]:
    """The first ``width`` midpoints a bisection of ``(lo, hi)`` may need, breadth first
    through its decision tree (``width=1``: just the next one)."""
    mids: list[int] = []
    frontier = [(lo, hi)]
    while frontier and len(mids) < width:
        a, b = frontier.pop(0)
        if b - a <= 1:
            continue
        m = (a + b) // 2
        if m not in mids:
            mids.append(m)
        frontier += [(a, m), (m, b)]
    return mids
