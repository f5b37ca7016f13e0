"""Accuracy- and latency-aware tuning: the INT8 model that meets an accuracy target with the
fewest float ops, and is never slower than FP32.

Trials, cheapest first, all from one calibration run (every calibrator observes the same
activations once; each trial reuses the ranges):

1. recipes that change no op type: calibrator (minmax, percentile, mse, entropy) and
   per-channel weights, then the first and last compute layers kept float;
2. if the target is still missed: rank the quantized nodes by a cheap sensitivity proxy
   (SQNR of their quantized inputs/outputs against FP32, ``onnxq.score.tensor_report``), and
   find by bisection the shortest prefix of that ranking to keep in float;
3. latency: the chosen model is timed against FP32 (interleaved); if it is slower, groups of
   nodes whose int8 form measures slower (depthwise convs, ops next to float-only
   activations, elementwise int8 ops) are put back to float while that helps; a model that
   is still slower than FP32 is not shipped: FP32 is returned and the log says why.

The time budget and Ctrl-C stop the search and return the best model found so far.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from onnxq.api import as_onnx, materialize, prepare, resolve
from onnxq.calibrate import collect_ranges
from onnxq.calibrators import CALIBRATORS, Calibrator, make_calibrator
from onnxq.config import QuantConfig
from onnxq.errors import ConfigError, ModelError, OnnxqError
from onnxq.pipeline import PipelineResult
from onnxq.plan import QuantPlan
from onnxq.qtypes import TensorRange
from onnxq.quant_ops import Role
from onnxq.tune_types import (
    Evaluate,
    Trial,
    TuneResult,
    TuneTarget,
    cosine_metric,
    top1_metric,
)

__all__ = ["TuneTarget", "Trial", "TuneResult", "tune", "cosine_metric", "top1_metric"]

logger = logging.getLogger(__name__)

class _FanOut:
    """One calibration run feeding every calibrator (statistics collected once)."""

    name = "fan-out"
    results: dict[str, dict[str, TensorRange]]  # set by compute()

    def __init__(self, calibrators: Mapping[str, Calibrator]) -> None:
        self.calibrators = dict(calibrators)

    def observe(self, name: str, array: np.ndarray, *, index: int | None = None) -> None:
        for c in self.calibrators.values():
            c.observe(name, array, index=index)

    def compute(self) -> dict[str, TensorRange]:
        self.results = {k: c.compute() for k, c in self.calibrators.items()}
        return next(iter(self.results.values()))


def _prepared(model, config: QuantConfig) -> tuple[PipelineResult, QuantPlan]:
    """``prepare`` for a model that has a plan: an already quantized one has nothing to tune."""
    fused, plan = prepare(model, config)
    if plan is None:
        raise ConfigError("the model is already quantized; there is nothing to tune")
    return fused, plan


def _all_ranges(model, calibration_data, config: QuantConfig) -> dict[str, dict]:
    fused, plan = _prepared(model, config)
    fan = _fan_out(config)
    collect_ranges(fused.model, plan.calibration_tensors, calibration_data, fan,
                   progress=False, max_samples=config.calibration.max_samples,
                   allow_nonfinite=config.calibration.allow_nonfinite, partial=True)
    return fan.results


def _fan_out(config: QuantConfig) -> _FanOut:
    """Every calibrator, each with the user's settings (bins, percentile, ...) but its own
    method."""
    bins = config.calibration.num_bins
    return _FanOut({m: make_calibrator(config.with_overrides(
        calibrator=m, num_bins=max(bins, 512) if m == "entropy" else bins).calibration)
        for m in CALIBRATORS})


class _Search:
    """Working state of one ``tune`` call."""

    def __init__(self, model, calib: list, evaluate: Evaluate, target: TuneTarget,
                 config: QuantConfig, latency_feed: Mapping | None) -> None:
        self.model, self.calib, self.evaluate = model, calib, evaluate
        self.target, self.config, self.latency_feed = target, config, latency_feed
        self.start = time.monotonic()
        self.trials: list[Trial] = []
        self.models: dict[int, onnx.ModelProto] = {}
        self.fp32 = _fp32(model)  # loaded once: evaluation, ranking and timing reuse it
        self._plans: dict[tuple, tuple[PipelineResult, QuantPlan]] = {}
        self.ranges = _all_ranges(model, calib, config)
        self.fp32_metric = evaluate(self.fp32)
        self.allowed = target.allowed_drop(self.fp32_metric)

    # -- budget ------------------------------------------------------------------------------
    def out_of_budget(self) -> str | None:
        if time.monotonic() - self.start > self.target.time_budget:
            return f"time budget of {self.target.time_budget:.0f} s reached"
        if len(self.trials) >= self.target.max_trials:
            return f"{self.target.max_trials} trials reached"
        return None

    # -- one trial ---------------------------------------------------------------------------
    def run(self, recipe: str, calibrator: str, per_channel: bool,
            float_nodes: Sequence[str]) -> Trial:
        t0 = time.monotonic()
        trial = Trial(index=len(self.trials), recipe=recipe, calibrator=calibrator,
                      per_channel=per_channel, float_nodes=tuple(float_nodes))
        cfg = self.config.with_overrides(calibrator=calibrator, per_channel=per_channel,
                                         exclude_nodes=sorted(set(self.config.exclude_nodes)
                                                              | set(float_nodes)))
        try:
            fused, plan = self.prepared(cfg)
            if any(t not in self.ranges[calibrator] for t in plan.calibration_tensors):
                self._extend_ranges(cfg)  # this plan variant needs tensors not measured yet
            result = materialize(fused, plan, cfg, self.ranges[calibrator], consume=False)
        except ModelError as exc:  # e.g. nothing left to quantize: logged, not fatal
            trial.decision = f"failed: {exc}"
            trial.seconds = time.monotonic() - t0
            self.trials.append(trial)
            return trial
        trial.metric = self.evaluate(result.model)
        trial.drop = self.fp32_metric - trial.metric
        trial.meets_target = trial.drop <= self.allowed
        trial.seconds = time.monotonic() - t0
        trial.decision = "meets the accuracy target" if trial.meets_target else "too inaccurate"
        self.trials.append(trial)
        self.models[trial.index] = result.model
        logger.info("trial %d %s: metric %.5f drop %.5f", trial.index, recipe, trial.metric,
                    trial.drop)
        return trial

    def prepared(self, cfg: QuantConfig) -> tuple[PipelineResult, QuantPlan]:
        """Preprocess + fusion + plan, once per distinct plan-shaping setting (trials that
        differ only in calibrator share it)."""
        key = (cfg.min_opset, cfg.weight.per_channel, cfg.exclude_nodes, cfg.exclude_op_types,
               cfg.fold_activations, cfg.weight.weight_only_ops)
        if key not in self._plans:
            self._plans[key] = _prepared(self.model, cfg)
        return self._plans[key]

    def _extend_ranges(self, cfg: QuantConfig) -> None:
        """A plan variant needs tensors the first calibration did not measure."""
        fused, plan = self.prepared(cfg)
        missing = [t for t in plan.calibration_tensors if t not in self.ranges["minmax"]]
        fan = _fan_out(self.config)
        collect_ranges(fused.model, missing, self.calib, fan, progress=False,
                       max_samples=self.config.calibration.max_samples,
                       allow_nonfinite=self.config.calibration.allow_nonfinite, partial=True)
        for method, extra in fan.results.items():
            self.ranges[method].update(extra)

    def best(self, accurate_only: bool = True) -> Trial | None:
        pool = [t for t in self.trials if t.meets_target or not accurate_only]
        if not pool:
            return None
        return min(pool, key=lambda t: (len(t.float_nodes), -(t.metric or -np.inf)))


def _fp32(model) -> onnx.ModelProto:
    from onnxq.io import load_model

    return load_model(model)


def _anchors(s: _Search, config: QuantConfig
             ) -> tuple[list[str], tuple[PipelineResult, QuantPlan]]:
    fused, plan = s.prepared(config)
    return [n.name for n in plan.nodes if n.role is Role.ANCHOR], (fused, plan)


def _recipes(s: _Search) -> None:
    trials = [s.run("default (minmax, per-channel)", "minmax", True, ())]
    for method in [m for m in CALIBRATORS if m != "minmax"]:  # registry order
        if s.out_of_budget() or any(t.meets_target and not t.float_nodes for t in trials[:1]):
            break
        trials.append(s.run(f"calibrator {method}", method, True, ()))
    if s.best() is not None or s.out_of_budget():
        return
    best = max(trials, key=lambda t: t.metric or -np.inf)
    anchors, _ = _anchors(s, s.config)
    if len(anchors) > 2:
        s.run("first and last layers float", best.calibrator, True, (anchors[0], anchors[-1]))


def _ranking(s: _Search, trial: Trial) -> list[str]:
    """Quantized nodes, most sensitive first (lowest SQNR of the tensors they touch)."""
    from onnxq.score import tensor_report

    report = tensor_report(s.fp32, s.models[trial.index], s.calib[:8])
    sqnr = {t.name: t.sqnr_db for t in report}
    cfg = s.config.with_overrides(exclude_nodes=list(trial.float_nodes))
    (fused, plan) = _anchors(s, cfg)[1]
    by_name = {n.name: n for n in fused.model.graph.node}
    scored = []
    for node in plan.nodes:
        proto = by_name.get(node.name)
        if proto is None:
            continue
        values = [sqnr[t] for t in list(proto.input) + list(proto.output) if t in sqnr]
        if values:
            scored.append((min(values), node.name))
    return [name for _, name in sorted(scored)]


def _fallback(s: _Search) -> None:
    # Rank from the best trial that kept every node int8: a recipe that already put nodes in
    # float (first/last layers) would hide them from the ranking, and whether that recipe
    # scores best depends on the CPU's types (7-bit weights on AVX2), not on the model.
    full = [t for t in s.trials if not t.float_nodes and t.metric is not None]
    base = max(full or s.trials, key=lambda t: t.metric or -np.inf)
    ranking = _ranking(s, base)
    lo, hi, k = 0, None, 1
    while hi is None and k <= len(ranking) - 1 and not s.out_of_budget():  # greedy doubling
        t = s.run(f"{k} most sensitive node(s) float", base.calibrator, base.per_channel,
                  base.float_nodes + tuple(ranking[:k]))
        lo, hi = (lo, k) if t.meets_target else (k, None)
        k *= 2
    while hi is not None and hi - lo > 1 and not s.out_of_budget():  # bisection
        mid = (lo + hi) // 2
        t = s.run(f"{mid} most sensitive node(s) float", base.calibrator, base.per_channel,
                  base.float_nodes + tuple(ranking[:mid]))
        lo, hi = (lo, mid) if t.meets_target else (mid, hi)


def _latency_groups(s: _Search, config: QuantConfig) -> dict[str, list[str]]:
    from onnxq.quant_ops import FLOAT_ONLY

    _, (fused, plan) = _anchors(s, config)
    graph = fused.model.graph
    quantized = {n.name: n for n in plan.nodes}
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    depthwise, near_float, elementwise = [], [], []
    for n in graph.node:
        if n.name not in quantized:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if n.op_type == "Conv" and group > 1:
            depthwise.append(n.name)
        touches = [producers.get(i) for i in n.input] + [r for o in n.output
                                                         for r in readers.get(o, [])]
        if any(t is not None and t.op_type in FLOAT_ONLY for t in touches):
            near_float.append(n.name)
        if quantized[n.name].role is Role.ELECTIVE:
            elementwise.append(n.name)
    groups = {"depthwise convs float": depthwise, "ops next to float-only ops float":
              near_float, "elementwise int8 ops float": elementwise}
    return {k: v for k, v in groups.items() if v}


def _speed(s: _Search, trial: Trial) -> float:
    from onnxq.score import measure_latency

    feed = s.latency_feed or s.calib[0]
    times = measure_latency({"fp32": s.fp32, "int8": s.models[trial.index]}, feed,
                            threads=s.target.threads, min_seconds=1.0)
    trial.latency_ratio = times["fp32"] / times["int8"]
    return trial.latency_ratio


def _latency(s: _Search, chosen: Trial) -> Trial | None:
    """Make the choice at least as fast as FP32, or give it up (None)."""
    if _speed(s, chosen) >= 1.0:
        return chosen
    chosen.decision += "; slower than FP32"
    for recipe, nodes in _latency_groups(s, s.config).items():
        if s.out_of_budget():
            break
        t = s.run(recipe, chosen.calibrator, chosen.per_channel,
                  tuple(dict.fromkeys(chosen.float_nodes + tuple(nodes))))
        if t.meets_target and _speed(s, t) > (chosen.latency_ratio or 0):
            t.decision += "; faster, kept"
            chosen = t
            assert t.latency_ratio is not None  # _speed(s, t) in the condition just set it
            if t.latency_ratio >= 1.0:
                return chosen
        else:
            t.decision += "; rejected"
    return chosen if (chosen.latency_ratio or 0) >= 1.0 else None


def tune(model, calibration_data: Iterable[Mapping], evaluate: Evaluate | None = None, *,
         target: TuneTarget | None = None, config: QuantConfig | None = None,
         eval_data: Sequence[Mapping] | None = None,
         latency_feed: Mapping | None = None) -> TuneResult:
    """Search for the INT8 model that meets ``target`` (see the module doc).

    ``evaluate(model) -> float`` scores a model, higher is better; without it the score is
    the mean per-sample output cosine with FP32 on ``eval_data``. Calibration and evaluation
    data should not overlap.
    """
    target = target or TuneTarget()
    config = resolve(config or QuantConfig())  # the target's types, fixed for every trial
    model, calibration_data = as_onnx(model, calibration_data)
    calib = list(calibration_data)
    if evaluate is None:
        if not eval_data:
            raise ConfigError("tune needs evaluate=callable or eval_data (feeds) for the "
                              "default cosine metric")
        evaluate = cosine_metric(_fp32(model), list(eval_data))
    s = _Search(model, calib, _checked(evaluate), target, config, latency_feed)
    stopped = "search complete"
    chosen: Trial | None = None
    try:
        _recipes(s)
        if s.best() is None and not s.out_of_budget():
            _fallback(s)
        chosen = s.best()
        if chosen is not None and target.latency and not s.out_of_budget():
            chosen = _latency(s, chosen)
        stopped = s.out_of_budget() or stopped
    except KeyboardInterrupt:
        stopped = "interrupted (Ctrl-C): best model so far"
        chosen = s.best()
    if chosen is not None:
        chosen.decision += "; chosen"
        model_out = s.models[chosen.index]
    else:
        model_out = _fp32(model)
    return TuneResult(model=model_out, chosen=chosen, fp32_metric=s.fp32_metric,
                      allowed_drop=s.allowed, trials=s.trials, stopped=stopped)


def _checked(evaluate: Evaluate) -> Evaluate:
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
