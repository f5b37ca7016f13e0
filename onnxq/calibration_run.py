"""The calibration run of ``quantize``: the activation ranges, and in the same pass over the
data the statistics and feeds the recipe's accuracy recovery needs (``onnxq.recovery``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxq import recovery
from onnxq.calibrate import collect_ranges_spilling
from onnxq.calibrators import AutoRanges, Calibrator, make_calibrator
from onnxq.config import QuantConfig
from onnxq.distributed import Cluster
from onnxq.dynamic_check import DynamicInputCheck, keep_accurate
from onnxq.loop_check import IterationWatch, loop_tensors
from onnxq.plan import QuantPlan
from onnxq.qtypes import TensorRange

__all__ = ["Stats", "calibrate_run"]

Feed = Mapping[str, np.ndarray]

@dataclass(frozen=True, slots=True)
class Stats:
    """What the calibration run kept for accuracy recovery."""

    means: dict[str, np.ndarray] | None = None
    feeds: tuple[Feed, ...] = ()
    grams: dict[str, np.ndarray] | None = None
    #: the ``auto`` method's second candidate: percentile ranges of the same tensors
    alternative: dict[str, TensorRange] | None = None


def calibrate_run(box: list[onnx.ModelProto], plan: QuantPlan, data, cfg: QuantConfig,
               progress: bool, *, recover: bool = False, cluster: Cluster | None = None
               ) -> tuple[dict[str, TensorRange], QuantPlan, onnx.ModelProto, Stats]:
    """The ranges; the plan without dynamic ops whose input run-time int8 would ruin
    (``dynamic_check``; watched in the same calibration run); the prepared model, which the
    caller hands over in ``box`` (a large one waits on disk meanwhile); with ``recover``, the
    statistics and feeds the recipe's recovery needs, gathered in the same run."""
    watch = sorted({n.dynamic_input for n in plan.nodes if n.dynamic_input})
    base = make_calibrator(cfg.calibration)
    check = DynamicInputCheck(base, watch, plan.calibration_tensors)
    tensors = [*plan.calibration_tensors,
               *(t for t in watch if t not in set(plan.calibration_tensors))]
    loops = IterationWatch(check, {t: loop for t, loop in loop_tensors(box[0]).items()
                                   if t in set(plan.calibration_tensors)})
    calibrator: Calibrator = loops
    means, kept = None, None
    if recover and recovery.needs_means(cfg.recipe):
        calibrator = means = recovery.InputMeans(calibrator, recovery.watched_inputs(box[0], plan))
        tensors += [t for t in means.means if t not in set(tensors)]
    grams = None
    if recover and recovery.needs_grams(cfg.recipe):
        calibrator = grams = recovery.InputGrams(calibrator,
                                                 recovery.watched_layers(box[0], plan))
        tensors += [t for t in grams.tensors if t not in set(tensors)]
    if recover and recovery.needs_feeds(cfg.recipe):
        data = kept = recovery.keep_feeds(data, cfg.recipe.samples)
    ranges, model = collect_ranges_spilling(
        box, tensors, data, calibrator, max_samples=cfg.calibration.max_samples,
        progress=progress, allow_nonfinite=cfg.calibration.allow_nonfinite, partial=True,
        cluster=cluster)
    alternative = base.alternative() if isinstance(base, AutoRanges) else None
    stats = Stats(means.batch_means() if means else None, tuple(kept.kept) if kept else (),
                  grams.grams() if grams else None, alternative)
    plan = keep_accurate(plan, check.lost())
    unstable = loops.unstable()
    if unstable:  # without a range, settle keeps their bodies float
        ranges = {t: r for t, r in ranges.items() if t not in unstable}
        worst = min(unstable, key=lambda t: unstable[t][1])
        plan = dataclasses.replace(plan, notes=plan.notes + (
            f"loop(s) {', '.join(sorted({v[0] for v in unstable.values()}))}: values change "
            f"scale across iterations (e.g. {worst!r}: its typical or last iteration reaches "
            f"{unstable[worst][1]:.1%} of its largest value); one int8 scale cannot serve "
            "every iteration, so those bodies stay float",))
    if stats.alternative is not None:  # the same tensors, or no second candidate
        alt = {t: stats.alternative[t] for t in ranges if t in stats.alternative}
        stats = dataclasses.replace(stats, alternative=alt if len(alt) == len(ranges) else None)
    return ranges, plan, model, stats
