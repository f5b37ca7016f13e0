"""Accuracy recovery in ``tune``: every trial is corrected as ``quantize`` corrects its model,
and when no calibrator meets the target the search tries the other recovery recipes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

import onnxq
from onnxq.tune import TuneTarget, tune
from onnxq.tune_recovery import TUNE_RECIPES
from tests.test_recovery import _clipped_chain, _heavy_feeds


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_a_tune_trial_is_the_model_quantize_builds():
    """The first trial (min-max, the configuration's recipe: fast bias correction) is
    byte for byte the weights and biases ``quantize`` gives with the same calibrator; before,
    tune's trials skipped the correction and started from a worse model."""
    model = _clipped_chain()
    calib, evals = _heavy_feeds(8, 1), _heavy_feeds(4, 2)
    result = tune(model, calib, eval_data=evals, progress=False,
                  target=TuneTarget(max_drop=10.0, latency=False))
    assert result.chosen is not None and result.chosen.index == 0
    assert result.chosen.recovery == "config"
    same = onnxq.quantize(model, calib, progress=False, calibrator="minmax")
    plain = onnxq.quantize(model, calib, progress=False, calibrator="minmax",
                           bias_correction="off")
    got, want, uncorrected = (_initializers(m) for m in (result.model, same.model, plain.model))
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert any(not np.array_equal(got[n], uncorrected[n]) for n in got)


def test_tune_tries_the_recovery_recipes_when_every_calibrator_misses():
    model = _clipped_chain()
    calib, evals = _heavy_feeds(8, 1), _heavy_feeds(4, 2)
    result = tune(model, calib, eval_data=evals, progress=False,
                  target=TuneTarget(max_drop=-1.0, latency=False, max_trials=10))
    trials = result.trials
    calibrators = [t for t in trials if t.recipe.startswith(("default", "calibrator"))]
    assert len(calibrators) == 4 and all(t.recovery == "config" for t in calibrators)
    tried = trials[len(calibrators):len(calibrators) + len(TUNE_RECIPES)]
    assert [t.recovery for t in tried] == list(TUNE_RECIPES)
    assert all(t.metric is not None for t in tried), result.table()
    best = max(calibrators, key=lambda t: t.metric)
    assert all(t.calibrator == best.calibrator for t in tried)
    plain = tried[TUNE_RECIPES.index("plain")]
    assert plain.metric != best.metric  # the correction is really off in that trial
    # the fallback after them keeps the best trial's recipe
    later = trials[len(calibrators) + len(TUNE_RECIPES):]
    assert later and later[0].recovery == max(calibrators + tried, key=lambda t: t.metric).recovery
    assert "recovery" in result.log()["trials"][0]
