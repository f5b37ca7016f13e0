"""The benchmark's metric noise floor: FP32 scored on its own data with a sub-LSB dither, and
how a zoo miss is reported against it (benchmarks/noise_floor.py)."""

from __future__ import annotations

import numpy as np

from benchmarks import noise_floor, suite
from benchmarks.real_models import Bench, EvalResult


def test_dither_stays_under_half_a_source_step_and_touches_only_named_float_inputs():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1.0, 1.0, (2, 3, 8, 8)).astype(np.float32)
    state = np.zeros((2, 1, 4), np.float32)
    ids = np.arange(6, dtype=np.int64)[None]
    feed = {"image": image, "state": state, "ids": ids}
    before = {k: v.copy() for k, v in feed.items()}
    out = noise_floor.dither(feed, {"image": 8, "ids": 8, "absent": 8},
                             np.random.default_rng(1))
    step = float(image.max() - image.min()) / 255
    delta = out["image"].astype(np.float64) - image
    assert out["image"].dtype == np.float32 and out["image"].shape == image.shape
    assert np.abs(delta).max() <= 0.5 * step + 1e-6 and np.abs(delta).max() > 0.4 * step
    assert out["state"] is state and out["ids"] is ids  # not named / not float: untouched
    for k, v in before.items():  # the caller's feed is never modified
        assert np.array_equal(feed[k], v)
    again = noise_floor.dither(feed, {"image": 8}, np.random.default_rng(1))
    assert np.array_equal(again["image"], out["image"])  # a seed gives the same noise
    finer = noise_floor.dither(feed, {"image": 16}, np.random.default_rng(1))
    assert np.abs(finer["image"] - image).max() <= 0.5 * float(image.max() - image.min()) / 65535


def test_measure_scores_fp32_on_dithered_inputs_against_its_own_result():
    """A toy scorer whose metric is the share of inputs whose sign FP32 keeps: inputs near 0
    flip under the dither, so the floor is a positive, seed-dependent drop; no named input
    means no floor."""
    x = np.linspace(-1.0, 1.0, 2001, dtype=np.float32)[None]

    def run(feed):
        return [np.asarray(feed["x"])]

    def evaluate(run_fn, ref):
        out = run_fn({"x": x})[0]
        if ref is None:
            return EvalResult(100.0, out)
        return EvalResult(100.0 * float(np.mean(np.sign(out) == np.sign(ref.outputs))), out)

    ref = evaluate(run, None)
    floor = noise_floor.measure(evaluate, run, ref, {"x": 8})
    assert len(floor["drops"]) == len(noise_floor.SEEDS) and floor["bits"] == {"x": 8}
    assert all(d >= 0 for d in floor["drops"]) and floor["drop"] > 0
    assert floor == noise_floor.measure(evaluate, run, ref, {"x": 8})  # deterministic
    assert noise_floor.measure(evaluate, run, ref, {}) is None


def _bench():
    return Bench(name="m", family="cnn", model=None, calib=[], feed_b1={}, feed_b8=None,
                 evaluate=None, metric="%", description="", data={})


def test_an_accuracy_miss_is_reported_against_the_noise_floor_without_changing_the_verdict():
    floor = {"drop": 4.0, "drops": [3.0, 4.0, 5.0], "bits": {"input": 8}}
    rows = [{"model": "effnet_lite0", "method": "fp32", "status": "ok", "noise_floor": floor},
            {"model": "effnet_lite0", "method": "onnxq_qdq", "status": "ok",
             "speedup_b1": 2.0, "drop": 3.5, "metric": 96.5, "cosine": 0.99},
            {"model": "effnet_lite0", "method": "ort_best", "status": "ok",
             "speedup_b1": 2.0, "drop": 6.0, "metric": 94.0, "cosine": 0.98},
            {"model": "effnet_lite0", "method": "ort_default", "status": "ok",
             "speedup_b1": 0.5, "drop": 1.0, "metric": 99.0, "cosine": 0.99}]
    suite.zoo_verdicts(_bench(), rows)
    assert [r["zoo_pass"] for r in rows[1:]] == [False, False, False]
    assert rows[1]["within_noise_floor"] is True
    assert rows[1]["zoo_why"] == "drop 3.50 <= noise floor 4.00"
    assert rows[2]["within_noise_floor"] is False
    assert rows[2]["zoo_why"] == "drop 6.00 > noise floor 4.00"
    rates = {r["method"]: r for r in suite.zoo_pass_rates(
        rows, ["onnxq_qdq", "ort_best", "ort_default"])}
    assert rates["onnxq_qdq"]["misses_within_noise_floor"] == 1
    assert rates["ort_best"]["misses_within_noise_floor"] == 0
    assert rates["ort_default"]["misses_within_noise_floor"] == 0  # slower than FP32


def test_a_model_without_a_floor_reports_its_miss_plainly():
    rows = [{"model": "magika", "method": "fp32", "status": "ok", "noise_floor": None},
            {"model": "magika", "method": "onnxq_qdq", "status": "ok", "speedup_b1": 2.0,
             "drop": 3.0, "metric": 90.0, "cosine": 0.99}]
    suite.zoo_verdicts(_bench(), rows)
    assert rows[1]["zoo_why"] == "drop 3.00" and rows[1]["within_noise_floor"] is False
