"""What ``onnxq.tune`` is given and returns: the target, each trial, the result with its log
and table, the two built-in metrics (output cosine with FP32, top-1 accuracy), and the guard
around a user's metric."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxq.errors import ConfigError, OnnxqError

__all__ = ["Evaluate", "TuneTarget", "Trial", "TuneResult", "cosine_metric", "top1_metric",
           "checked_metric"]

Evaluate = Callable[[onnx.ModelProto], float]


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneTarget:
    """``max_drop``: absolute metric drop allowed (0.01 = one point of a [0, 1] metric);
    ``max_relative_drop``: relative to the FP32 metric. ``latency``: never slower than FP32
    at ``batch`` (timed with ``threads``)."""

    max_drop: float | None = 0.01
    max_relative_drop: float | None = None
    time_budget: float = 600.0
    max_trials: int = 40
    latency: bool = True
    threads: int = 2

    def allowed_drop(self, fp32_metric: float) -> float:
        if self.max_relative_drop is not None:
            return abs(fp32_metric) * self.max_relative_drop
        if self.max_drop is None:
            raise ConfigError("give max_drop or max_relative_drop")
        return self.max_drop


@dataclass(slots=True, kw_only=True)
class Trial:
    index: int
    recipe: str
    calibrator: str
    per_channel: bool
    float_nodes: tuple[str, ...]
    recovery: str = "config"  # the accuracy-recovery recipe: "config" = the configuration's
    metric: float | None = None
    drop: float | None = None
    latency_ratio: float | None = None  # FP32 time / INT8 time (> 1: faster than FP32)
    meets_target: bool = False
    decision: str = ""
    seconds: float = 0.0


@dataclass(slots=True, kw_only=True)
class TuneResult:
    model: onnx.ModelProto
    chosen: Trial | None  # None: FP32 returned
    fp32_metric: float
    allowed_drop: float
    trials: list[Trial] = field(default_factory=list)
    stopped: str = "search complete"

    def log(self) -> dict:
        return {"fp32_metric": self.fp32_metric, "allowed_drop": self.allowed_drop,
                "stopped": self.stopped, "chosen": self.chosen.index if self.chosen else None,
                "trials": [asdict(t) for t in self.trials]}

    def save_log(self, path: str | Path) -> Path:
        from onnxq.io import write_text_atomic

        return write_text_atomic(path, json.dumps(self.log(), indent=2) + "\n")

    def table(self) -> str:
        lines = [f"{'#':>3} {'recipe':<34}{'float':>6}{'metric':>10}{'drop':>9}{'speed':>7}"
                 "  decision"]
        for t in self.trials:
            metric = "-" if t.metric is None else f"{t.metric:.4f}"
            drop = "-" if t.drop is None else f"{t.drop:.4f}"
            speed = "-" if t.latency_ratio is None else f"{t.latency_ratio:.2f}x"
            lines.append(f"{t.index:>3} {t.recipe[:33]:<34}{len(t.float_nodes):>6}{metric:>10}"
                         f"{drop:>9}{speed:>7}  {t.decision}")
        chosen = (f"chosen: trial {self.chosen.index} (margin "
                  f"{self.allowed_drop - (self.chosen.drop or 0):.4f})" if self.chosen
                  else "chosen: FP32 (no INT8 model met the target without being slower)")
        return "\n".join(lines + [chosen, f"stopped: {self.stopped}"])


def cosine_metric(reference: onnx.ModelProto, feeds: Sequence[Mapping]) -> Evaluate:
    """Mean per-sample cosine similarity of the first output with ``reference``'s."""
    from onnxq.emulate import target_session
    from onnxq.runtime import input_specs, iter_feeds, make_session

    feeds = list(iter_feeds(feeds, input_specs(reference), "eval feed"))
    ref_sess = make_session(reference, threads=2)
    refs = [ref_sess.run(None, dict(f))[0] for f in feeds]

    def evaluate(model: onnx.ModelProto) -> float:
        sess = target_session(model, threads=2)  # as the model's target CPU computes it
        sims = []
        for f, r in zip(feeds, refs, strict=True):
            y = sess.run(None, dict(f))[0].reshape(len(r), -1).astype(np.float64)
            x = r.reshape(len(r), -1).astype(np.float64)
            sims.extend((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
                                          + 1e-30))
        return float(np.mean(sims))

    return evaluate


def top1_metric(feeds: Sequence[Mapping], labels: Sequence[np.ndarray]) -> Evaluate:
    """Top-1 accuracy in [0, 1] of the first output against ``labels`` (one array per feed)."""
    from onnxq.emulate import target_session

    def evaluate(model: onnx.ModelProto) -> float:
        sess = target_session(model, threads=2)  # as the model's target CPU computes it
        hits = total = 0
        for f, y in zip(feeds, labels, strict=True):
            pred = sess.run(None, dict(f))[0].reshape(len(y), -1).argmax(1)
            hits += int((pred == np.asarray(y).reshape(-1)).sum())
            total += len(y)
        return hits / max(total, 1)

    return evaluate


def checked_metric(evaluate: Evaluate) -> Evaluate:
    """The user's metric, with its failures and non-numbers as clean errors."""
    name = getattr(evaluate, "__qualname__", repr(evaluate))

    def checked(model: onnx.ModelProto) -> float:
        try:
            value = evaluate(model)
        except (OnnxqError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of user code
            raise ConfigError(f"the metric {name} failed: {type(exc).__name__}: {exc}; it must "
                              "take an onnx.ModelProto and return a number (higher is "
                              "better)") from None
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or \
                not np.isfinite(value):
            raise ConfigError(f"the metric {name} returned {value!r}; it must return a finite "
                              "number (higher is better)")
        return float(value)

    return checked
