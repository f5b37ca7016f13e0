"""Accuracy recovery inside ``tune``'s trials.

Every trial is built the way ``quantize`` builds its model: the configuration's recipe
(``bc-fast`` by default) corrects the prepared float model before it is materialized. A trial
may name another recipe (``TUNE_RECIPES``); the statistics each recipe needs come from the
calibration feeds tune already holds, and are measured once and reused:

* the batch-mean input of each corrected layer (fast bias correction), by tensor name, so a
  trial whose plan keeps more nodes float reuses what an earlier trial measured;
* the second moments of the layer inputs (``gptq``), per plan;
* the feeds themselves (full bias correction).

Recipes that rewrite the float model before calibration (``cle``, ``smoothquant``) would need
their own ranges and are not tried.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from onnxq import recovery
from onnxq.api import recover_prepared
from onnxq.calibrate import collect_ranges
from onnxq.calibration_run import Stats
from onnxq.calibrators import make_calibrator
from onnxq.config import QuantConfig, recipe_overrides
from onnxq.config_resolve import types_for
from onnxq.pipeline import PipelineResult
from onnxq.plan import QuantPlan
from onnxq.qtypes import TensorRange

__all__ = ["TUNE_RECIPES", "RecoveryCache", "overrides", "tried"]

#: the recipes tune tries when every calibrator misses the target, cheapest first: no
#: correction (bias correction can cost a little on rare models), data layers float (changes
#: which convs run int8; no extra statistics), 8-bit u8 weights (only where the target's
#: weights have 7 bits: exact, but slower kernels on CPUs without VNNI), Hessian rounding (one
#: pass for its statistics), full bias correction (one run of the kept feeds per network level)
TUNE_RECIPES: tuple[str, ...] = ("plain", "float-data", "u8-weights", "gptq", "bc-full")

#: the trial's name for "the configuration's own recipe"
CONFIG = "config"


def overrides(name: str) -> dict:
    """Flat config overrides for a trial's recipe (``CONFIG``: none)."""
    return {} if name == CONFIG else recipe_overrides(name)


def tried(config: QuantConfig) -> list[str]:
    """The ``TUNE_RECIPES`` that change ``config`` (resolved): the others would repeat its
    own trial. ``u8-weights`` only where the target gives weights 7 bits."""
    seven_bit = types_for(config)[2]
    return [name for name in TUNE_RECIPES
            if config.with_overrides(**overrides(name)) != config
            and (name != "u8-weights" or seven_bit)]


class RecoveryCache:
    """The recipes' statistics over ``calib``, measured on first use."""

    def __init__(self, calib: Sequence[Mapping[str, np.ndarray]], config: QuantConfig) -> None:
        self.calib = calib
        self.config = config
        self.means: dict[str, np.ndarray] = {}
        self.grams: dict[Hashable, dict[str, np.ndarray]] = {}

    def apply(self, fused: PipelineResult, plan: QuantPlan, cfg: QuantConfig,
              ranges: Mapping[str, TensorRange], key: Hashable
              ) -> tuple[PipelineResult, recovery.Recovery | None]:
        """``fused`` (untouched) corrected by ``cfg``'s recipe: a corrected copy and the
        report, or ``fused`` itself and None for the plain recipe."""
        if cfg.recipe.is_plain:
            return fused, None
        stats = Stats(self._means(fused, plan, cfg), self._feeds(cfg),
                      self._grams(fused, plan, cfg, key))
        work = dataclasses.replace(fused, model=copy.deepcopy(fused.model))
        return recover_prepared(work, plan, cfg, ranges, stats, progress=False)

    def _collect(self, fused: PipelineResult, wrapper, tensors: Sequence[str]) -> None:
        collect_ranges(fused.model, list(tensors), self.calib, wrapper, progress=False,
                       max_samples=self.config.calibration.max_samples,
                       allow_nonfinite=self.config.calibration.allow_nonfinite, partial=True)

    def _means(self, fused: PipelineResult, plan: QuantPlan, cfg: QuantConfig
               ) -> dict[str, np.ndarray] | None:
        if not recovery.needs_means(cfg.recipe):
            return None
        watch = recovery.watched_inputs(fused.model, plan)
        missing = {t: axis for t, axis in watch.items() if t not in self.means}
        if missing:
            means = recovery.InputMeans(make_calibrator(self.config.calibration), missing)
            self._collect(fused, means, sorted(missing))
            self.means.update(means.batch_means())
        return {t: self.means[t] for t in watch if t in self.means}

    def _grams(self, fused: PipelineResult, plan: QuantPlan, cfg: QuantConfig,
               key: Hashable) -> dict[str, np.ndarray] | None:
        if not recovery.needs_grams(cfg.recipe):
            return None
        if key not in self.grams:
            grams = recovery.InputGrams(make_calibrator(self.config.calibration),
                                        recovery.watched_layers(fused.model, plan))
            self._collect(fused, grams, grams.tensors)
            self.grams[key] = grams.grams()
        return self.grams[key]

    def _feeds(self, cfg: QuantConfig) -> tuple:
        if not recovery.needs_feeds(cfg.recipe):
            return ()
        return tuple(self.calib[:cfg.recipe.samples])

