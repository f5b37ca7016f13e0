"""Accuracy recovery in ``tune``: every trial is corrected as ``quantize`` corrects its model,
and when no calibrator meets the target the search tries the other recovery recipes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxq
from onnxq.config import QuantConfig
from onnxq.config_resolve import types_for
from onnxq.tune import TuneTarget, tune
from onnxq.tune_recovery import TUNE_RECIPES
from tests import builders as B
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


def _any_size_chain() -> onnx.ModelProto:
    """Convs on an image of any size: the placement can price them only with the feeds'
    shapes (every symbolic dim counts as 1 without them)."""
    b = B._Builder(3, 17)
    x = b.relu(b.conv("input", "c1", 3, 32, 3, bias=True), "r1")
    x = b.relu(b.conv(x, "c2", 32, 64, 3, bias=True), "r2")
    y = b.conv(x, "c3", 64, 64, 1, bias=True)
    return b.model("any_size", [("input", ["batch", 3, "h", "w"])],
                   [(y, ["batch", 64, "h", "w"])])


@pytest.mark.placement
def test_tune_places_with_the_calibration_shapes_as_quantize_does():
    """Tune built its plans without the feeds' shapes, so its trials could run other layers
    int8 than ``quantize`` (on NudeNet its min-max trial scored 90.4 against quantize's
    92.5 with the same calibrator)."""
    model = _any_size_chain()
    rng = np.random.default_rng(0)
    calib = [{"input": rng.random((1, 3, 96, 96), np.float32)} for _ in range(4)]
    result = tune(model, calib, eval_data=calib[:2], progress=False,
                  target=TuneTarget(max_drop=10.0, latency=False))
    same = onnxq.quantize(model, calib, progress=False, calibrator="minmax")
    assert result.chosen is not None and result.chosen.index == 0
    assert sorted(n.op_type for n in result.model.graph.node) == \
        sorted(n.op_type for n in same.model.graph.node)
    got, want = _initializers(result.model), _initializers(same.model)
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_tune_tries_the_recovery_recipes_when_every_calibrator_misses():
    model = _clipped_chain()
    calib, evals = _heavy_feeds(8, 1), _heavy_feeds(4, 2)
    result = tune(model, calib, eval_data=evals, progress=False,
                  target=TuneTarget(max_drop=-1.0, latency=False, max_trials=10))
    trials = result.trials
    calibrators = [t for t in trials if t.recipe.startswith(("default", "calibrator"))]
    assert len(calibrators) == 4 and all(t.recovery == "config" for t in calibrators)
    seven_bit = types_for(QuantConfig())[2]  # u8-weights only where weights are 7-bit (no VNNI)
    recipes = [r for r in TUNE_RECIPES if r != "u8-weights" or seven_bit]
    tried = trials[len(calibrators):len(calibrators) + len(recipes)]
    assert [t.recovery for t in tried] == recipes
    assert all(t.metric is not None for t in tried), result.table()
    best = max(calibrators, key=lambda t: t.metric)
    assert all(t.calibrator == best.calibrator for t in tried)
    plain = tried[recipes.index("plain")]
    assert plain.metric != best.metric  # the correction is really off in that trial
    # the fallback after them keeps the best trial's recipe
    later = trials[len(calibrators) + len(recipes):]
    assert later and later[0].recovery == max(calibrators + tried, key=lambda t: t.metric).recovery
    assert "recovery" in result.log()["trials"][0]


@pytest.mark.placement
def test_tune_on_a_model_the_placement_keeps_float_returns_fp32_cleanly():
    """Nothing left to calibrate (every node float by the placement) used to end in an
    AttributeError from the calibrator fan-out."""
    model = _any_size_chain()
    rng = np.random.default_rng(0)
    calib = [{"input": rng.random((1, 3, 2, 2), np.float32)} for _ in range(4)]
    assert not onnxq.quantize(model, calib, progress=False).report.quantized
    result = tune(model, calib, eval_data=calib[:2], progress=False,
                  target=TuneTarget(max_drop=10.0))
    # the only trial is the float graph itself; timing noise decides whether it or FP32 is
    # "chosen", and both are the same float model
    assert [n.op_type for n in result.model.graph.node] == \
        [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("name", ["residual_block", "matmul_add", "attention_block"])
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_u8_weights_are_8_bit_and_exact_on_every_cpu(name, fmt):
    """``--recipe u8-weights``: on a 7-bit target every weight becomes u8 with zero point 128
    and full 8 bits; onnxruntime's u8 x u8 kernels compute them exactly on this CPU, whether it
    has VNNI or not (the exact emulation agrees bit for bit)."""
    from onnxq.config import recipe_overrides
    from onnxq.emulate import EmulatedSession
    from tests.conftest import run_model

    model = getattr(B, name)()
    q = onnxq.quantize(model, B.feeds(model, batch=2, n=4, seed=1), progress=False,
                       target="avx2", objective="size", format=fmt,
                       **recipe_overrides("u8-weights")).model
    consts = _initializers(q)
    weights = [v for v in consts.values() if v.dtype == np.uint8 and v.ndim >= 2]
    assert weights and not [k for k, v in consts.items() if v.dtype == np.int8 and v.ndim >= 2]
    assert all(int(np.abs(w.astype(int) - 128).max()) >= 127 for w in weights)
    feed = B.feeds(model, batch=2, n=1, seed=7)[0]
    names = [o.name for o in q.graph.output]
    for got, want in zip(run_model(q, feed), EmulatedSession(q, "vnni").run(names, feed),
                         strict=True):
        assert np.array_equal(got, want)


def test_tune_tries_u8_weights_where_weights_have_7_bits():
    """On a 7-bit target (AVX2) a model whose error is the weights' meets a target with 8-bit
    u8 weights that no calibrator or cheaper recipe meets; tune finds it. Where weights
    already have 8 bits the recipe is not tried."""
    from onnxq.api import resolve
    from onnxq.config import QuantConfig
    from onnxq.tune_recovery import tried

    model = B.matmul_add()
    calib, evals = B.feeds(model, batch=2, n=6, seed=1), B.feeds(model, batch=2, n=4, seed=2)
    config = QuantConfig().with_overrides(target="avx2", objective="size")
    result = tune(model, calib, eval_data=evals, progress=False, config=config,
                  target=TuneTarget(max_drop=1e-4, latency=False, max_trials=12))
    assert result.chosen is not None and result.chosen.recovery == "u8-weights", \
        [(t.recipe, t.drop) for t in result.trials]
    assert all(t.drop > 1e-4 for t in result.trials if t.recovery != "u8-weights")
    assert any(i.data_type == onnx.TensorProto.UINT8 and len(i.dims) == 2
               for i in result.model.graph.initializer)
    assert "u8-weights" not in tried(resolve(config.with_overrides(target="vnni")))
