"""Accuracy- and latency-aware tuning: the INT8 model that meets an accuracy target with the
fewest float ops, and is never slower than FP32.

Trials, cheapest first, from one calibration run (every calibrator observes the same
activations once; each trial reuses the ranges):

1. calibrators (minmax, percentile, mse, entropy), each with the configuration's accuracy
   recovery as ``quantize`` applies it (bc-fast by default); then, on the best calibrator, the
   other recovery recipes, cheapest first (``tune_recovery``); then first and last layers float;
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

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx

from onnxq.api import as_onnx, materialize, prepare, resolve
from onnxq.calibrate import collect_ranges
from onnxq.calibrators import CALIBRATORS, Calibrator, make_calibrator
from onnxq.config import QuantConfig
from onnxq.data import peek_shapes
from onnxq.distributed import Cluster, WorkerPool, connected
from onnxq.errors import ConfigError, ModelError
from onnxq.pipeline import PipelineResult
from onnxq.plan import QuantPlan
from onnxq.qtypes import TensorRange
from onnxq.quant_ops import Role
from onnxq.tune_latency import latency_pass
from onnxq.tune_mode import mode_pass
from onnxq.tune_recovery import CONFIG, RecoveryCache, overrides, tried
from onnxq.tune_runner import Outcome, Scorer, Spec, bisection_mids, score_all
from onnxq.tune_types import (
    Evaluate,
    Trial,
    TuneResult,
    TuneTarget,
    checked_metric,
    cosine_metric,
    top1_metric,
)

__all__ = ["TuneTarget", "Trial", "TuneResult", "tune", "cosine_metric", "top1_metric"]

logger = logging.getLogger(__name__)

class _FanOut:
    """One calibration run feeding every calibrator (statistics collected once)."""

    name = "fan-out"
    def __init__(self, calibrators: Mapping[str, Calibrator]) -> None:
        self.calibrators = dict(calibrators)
        # compute() fills it; a plan with nothing to calibrate leaves it empty
        self.results: dict[str, dict[str, TensorRange]] = {k: {} for k in self.calibrators}

    def observe(self, name: str, array: np.ndarray, *, index: int | None = None) -> None:
        for c in self.calibrators.values():
            c.observe(name, array, index=index)

    def merge(self, other: _FanOut) -> None:
        for key, c in self.calibrators.items():
            c.merge(other.calibrators[key])  # type: ignore[attr-defined]

    def compute(self) -> dict[str, TensorRange]:
        self.results = {k: c.compute() for k, c in self.calibrators.items()}
        return next(iter(self.results.values()))


def _prepared(model, config: QuantConfig, calib: Sequence[Mapping]
              ) -> tuple[PipelineResult, QuantPlan]:
    """``prepare`` for a model that has a plan (an already quantized one has nothing to tune),
    with the calibration feeds' shapes, as ``quantize`` places it."""
    fused, plan = prepare(model, config, peek_shapes(list(calib))[0])
    if plan is None:
        raise ConfigError("the model is already quantized; there is nothing to tune")
    return fused, plan


def _all_ranges(model, calibration_data, config: QuantConfig,
                cluster: Cluster | None) -> dict[str, dict]:
    fused, plan = _prepared(model, config, calibration_data)
    fan = _fan_out(config)
    collect_ranges(fused.model, plan.calibration_tensors, calibration_data, fan,
                   progress=False, max_samples=config.calibration.max_samples,
                   allow_nonfinite=config.calibration.allow_nonfinite, partial=True,
                   cluster=cluster)
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
                 config: QuantConfig, latency_feed: Mapping | None,
                 cluster: Cluster | None = None) -> None:
        self.model, self.calib, self.evaluate = model, calib, evaluate
        self.pool: WorkerPool | None = None  # trials are scored here unless tune sets one
        self.width = 1  # trials scored at once
        self.bar = None  # tqdm over the trials (tune sets it)
        self.target, self.config, self.latency_feed = target, config, latency_feed
        self.start = time.monotonic()
        self.trials: list[Trial] = []
        self.models: dict[int, onnx.ModelProto] = {}
        self.fp32 = _fp32(model)  # loaded once: evaluation, ranking and timing reuse it
        self._plans: dict[tuple, tuple[PipelineResult, QuantPlan]] = {}
        self.ranges = _all_ranges(model, calib, config, cluster)
        self.recovery = RecoveryCache(calib, config)
        self.fp32_metric = evaluate(self.fp32)
        self.allowed = target.allowed_drop(self.fp32_metric)

    # -- budget ------------------------------------------------------------------------------
    def out_of_budget(self) -> str | None:
        if time.monotonic() - self.start > self.target.time_budget:
            return f"time budget of {self.target.time_budget:.0f} s reached"
        if len(self.trials) >= self.target.max_trials:
            return f"{self.target.max_trials} trials reached"
        return None

    # -- trials ------------------------------------------------------------------------------
    def run(self, recipe: str, calibrator: str, per_channel: bool,
            float_nodes: Sequence[str], recovery: str = CONFIG) -> Trial:
        return self.record(self.score([Spec(recipe, calibrator, per_channel,
                                            tuple(float_nodes), recovery)])[0])

    def score(self, specs: Sequence[Spec]) -> list[Outcome]:
        """Build each trial's model here, then score them all (concurrently on workers)."""
        outcomes = [self._build(spec) for spec in specs]
        score_all(outcomes, self.evaluate, self.pool)
        return outcomes

    def _build(self, spec: Spec) -> Outcome:
        t0 = time.monotonic()
        cfg = self.config.with_overrides(
            calibrator=spec.calibrator, per_channel=spec.per_channel,
            exclude_nodes=sorted(set(self.config.exclude_nodes) | set(spec.float_nodes)),
            **overrides(spec.recovery))
        try:
            fused, plan = self.prepared(cfg)
            if any(t not in self.ranges[spec.calibrator] for t in plan.calibration_tensors):
                self._extend_ranges(cfg)  # this plan variant needs tensors not measured yet
            ranges = self.ranges[spec.calibrator]
            fused, recovered = self.recovery.apply(fused, plan, cfg, ranges, _plan_key(cfg))
            result = materialize(fused, plan, cfg, ranges, consume=False, recovered=recovered)
        except ModelError as exc:  # e.g. nothing left to quantize: logged, not fatal
            return Outcome(spec, failure=f"failed: {exc}", seconds=time.monotonic() - t0)
        return Outcome(spec, model=result.model, seconds=time.monotonic() - t0)

    def record(self, outcome: Outcome) -> Trial:
        """The outcome as the next trial of the log."""
        spec = outcome.spec
        trial = Trial(index=len(self.trials), recipe=spec.recipe, calibrator=spec.calibrator,
                      per_channel=spec.per_channel, float_nodes=spec.float_nodes,
                      recovery=spec.recovery, seconds=outcome.seconds)
        self.trials.append(trial)
        if self.bar is not None:
            self.bar.update(1)
        if outcome.failure is not None or outcome.metric is None or outcome.model is None:
            trial.decision = outcome.failure or "failed"
            return trial
        trial.metric = outcome.metric
        trial.drop = self.fp32_metric - trial.metric
        trial.meets_target = trial.drop <= self.allowed
        trial.decision = "meets the accuracy target" if trial.meets_target else "too inaccurate"
        self.models[trial.index] = outcome.model
        logger.info("trial %d %s: metric %.5f drop %.5f", trial.index, spec.recipe,
                    trial.metric, trial.drop)
        return trial

    def lookahead(self, specs: Sequence[Spec], more: Callable[[Trial], bool]) -> list[Trial]:
        """Run ``specs`` in order while ``more(trial)`` and the budget allow, scoring up to
        ``width`` of them at a time; the ones past the stop are dropped unrecorded."""
        done: list[Trial] = []
        i = 0
        while i < len(specs) and not (done and self.out_of_budget()):
            room = self.target.max_trials - len(self.trials)
            batch = specs[i:i + max(1, min(self.width, room))]
            for outcome in self.score(batch):
                done.append(self.record(outcome))
                if not more(done[-1]) or self.out_of_budget():
                    return done
            i += len(batch)
        return done

    def prepared(self, cfg: QuantConfig) -> tuple[PipelineResult, QuantPlan]:
        """Preprocess + fusion + plan, once per distinct plan-shaping setting (trials that
        differ only in calibrator share it)."""
        key = _plan_key(cfg)
        if key not in self._plans:
            self._plans[key] = _prepared(self.model, cfg, self.calib)
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


def _plan_key(cfg: QuantConfig) -> tuple:
    """The settings that shape the prepared model and its plan."""
    return (cfg.min_opset, cfg.weight.per_channel, cfg.exclude_nodes, cfg.exclude_op_types,
            cfg.fold_activations, cfg.weight.weight_only_ops, cfg.recipe.data_layers)


def _fp32(model) -> onnx.ModelProto:
    from onnxq.io import load_model

    return load_model(model)


def _anchors(s: _Search, config: QuantConfig
             ) -> tuple[list[str], tuple[PipelineResult, QuantPlan]]:
    fused, plan = s.prepared(config)
    return [n.name for n in plan.nodes if n.role is Role.ANCHOR], (fused, plan)


def _recipes(s: _Search) -> None:
    specs = [Spec("default (minmax, per-channel)", "minmax", True, ())] + [
        Spec(f"calibrator {m}", m, True, ()) for m in CALIBRATORS if m != "minmax"]
    first = len(s.trials)  # the default meeting the target ends this step
    trials = s.lookahead(specs, lambda t: t.index != first or not t.meets_target)
    if s.best() is not None or s.out_of_budget():
        return
    best = max(trials, key=lambda t: t.metric or -np.inf)
    recipes = tried(s.config)
    trials += s.lookahead([Spec(f"recipe {name} ({best.calibrator})", best.calibrator, True, (),
                                name) for name in recipes], lambda t: not t.meets_target)
    if s.best() is not None or s.out_of_budget():
        return
    best = max(trials, key=lambda t: t.metric or -np.inf)
    anchors, _ = _anchors(s, s.config)
    if len(anchors) > 2:
        s.run("first and last layers float", best.calibrator, True, (anchors[0], anchors[-1]),
              best.recovery)


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

    def spec(k: int) -> Spec:
        return Spec(f"{k} most sensitive node(s) float", base.calibrator, base.per_channel,
                    base.float_nodes + tuple(ranking[:k]), base.recovery)

    ks = [1 << i for i in range(max(0, len(ranking) - 1).bit_length())]  # greedy doubling
    lo, hi = 0, None
    for k, t in zip(ks, s.lookahead([spec(k) for k in ks], lambda t: not t.meets_target),
                    strict=False):
        lo, hi = (lo, k) if t.meets_target else (k, None)
    while hi is not None and hi - lo > 1 and not s.out_of_budget():  # bisection
        mids = bisection_mids(lo, hi, max(1, min(s.width, s.target.max_trials - len(s.trials))))
        scored = dict(zip(mids, s.score([spec(m) for m in mids]), strict=True))
        while hi - lo > 1 and (lo + hi) // 2 in scored and not s.out_of_budget():
            mid = (lo + hi) // 2
            t = s.record(scored[mid])
            lo, hi = (lo, mid) if t.meets_target else (mid, hi)


def tune(model, calibration_data: Iterable[Mapping], evaluate: Evaluate | None = None, *,
         target: TuneTarget | None = None, config: QuantConfig | None = None,
         eval_data: Sequence[Mapping] | None = None,
         latency_feed: Mapping | None = None, cluster: Cluster | None = None,
         progress: bool = True) -> TuneResult:
    """Search for the INT8 model that meets ``target`` (see the module doc).

    ``evaluate(model) -> float`` scores a model, higher is better; without it the score is
    the mean per-sample output cosine with FP32 on ``eval_data``. Calibration and evaluation
    data should not overlap. ``cluster``: calibrate and score trials on Ray workers
    (``onnxq.distributed``; ``evaluate`` must then be picklable); the trial log and the
    chosen model are the same as without. ``progress``: a bar over the trials.
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
    evaluate = checked_metric(evaluate)
    with contextlib.ExitStack() as stack:
        ray = stack.enter_context(connected(cluster)) if cluster is not None else None
        s = _Search(model, calib, evaluate, target, config, latency_feed, cluster)
        s.bar = stack.enter_context(_trial_bar(target, progress))
        if ray is not None and cluster is not None:  # after the calibration's workers left
            s.pool = stack.enter_context(WorkerPool(ray, functools.partial(Scorer, evaluate),
                                                    cluster.workers))
            s.width = cluster.workers
        chosen, stopped = _search(s)
    if chosen is not None:
        chosen.decision += "; chosen"
        model_out = s.models[chosen.index]
    else:
        model_out = _fp32(model)
    return TuneResult(model=model_out, chosen=chosen, fp32_metric=s.fp32_metric,
                      allowed_drop=s.allowed, trials=s.trials, stopped=stopped)


def _trial_bar(target: TuneTarget, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=target.max_trials, desc="tuning", unit="trial", disable=not progress,
                leave=False)


def _search(s: _Search) -> tuple[Trial | None, str]:
    stopped = "search complete"
    chosen: Trial | None = None
    try:
        _recipes(s)
        if s.best() is None and not s.out_of_budget():
            _fallback(s)
        chosen = s.best()
        if chosen is not None and s.target.latency and not s.out_of_budget():
            chosen = latency_pass(s, chosen)
        chosen = mode_pass(s, chosen)
        stopped = s.out_of_budget() or stopped
    except KeyboardInterrupt:
        stopped = "interrupted (Ctrl-C): best model so far"
        chosen = s.best()
    return chosen, stopped
