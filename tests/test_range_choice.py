"""The ``auto`` calibration method: min/max or percentile ranges, whichever model is closer to
FP32 on the kept calibration feeds (``onnxq.range_choice``)."""

from __future__ import annotations

import numpy as np
import pytest

import onnxq
from onnxq.calibrators import AutoRanges, MinMaxCalibrator, PercentileCalibrator
from onnxq.recovery.stats import keep_feeds
from tests import builders as B
from tests.conftest import run_model


def test_auto_ranges_are_both_methods_from_one_pass():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4, 1000)).astype(np.float32) * s for s in (1, 3, 0.5)]
    auto, mm, pc = AutoRanges(), MinMaxCalibrator(), PercentileCalibrator()
    for cal in (auto, mm, pc):
        for x in batches:
            cal.observe("t", x)
    assert auto.compute() == mm.compute()
    assert auto.alternative() == pc.compute()
    assert auto.alternative()["t"].hi < auto.compute()["t"].hi


def test_spread_feeds_sample_the_whole_stream_the_same_way_each_time():
    feeds = [{"x": np.full((1, 2), i, np.float32)} for i in range(200)]
    picks = []
    for _ in range(2):
        kept = keep_feeds(iter(feeds), 16, spread=True)
        assert sum(1 for _ in kept) == 200  # every feed still flows through
        picks.append([int(f["x"][0, 0]) for f in kept.kept])
    assert picks[0] == picks[1] and len(picks[0]) == 16
    assert picks[0] == sorted(picks[0]) and max(picks[0]) >= 100  # not just the first 16
    short = keep_feeds(iter(feeds[:5]), 16, spread=True)
    list(short)
    assert [int(f["x"][0, 0]) for f in short.kept] == [0, 1, 2, 3, 4]


def _spiky_calibration(model, rare: bool, n: int = 32):
    """Standard-normal images; ``rare``: one pixel of one feed at 150 (an outlier that makes a
    min/max grid 30x coarser for every other value); else: every feed has one 12-sigma pixel
    (under 0.001 % of the values, so a percentile cut clips it) that carries the output (a
    max-pooled model's answer)."""
    feeds = B.feeds(model, batch=1, n=n, seed=3)
    rng = np.random.default_rng(5)
    for i, f in enumerate(feeds):
        x = f["input"]
        if rare and i == n // 2:
            x[0, 0, 7, 7] = 150.0
        elif not rare:
            x[0, 0, rng.integers(0, x.shape[2]), rng.integers(0, x.shape[3])] = 12.0
    return feeds


def _max_pooled() -> B.onnx.ModelProto:
    b = B._Builder(0, 17)
    x = b.conv("input", "conv1", 1, 8, 1, pad=0, bias=True)
    x = b.op("GlobalMaxPool", [x], "gmp")
    x = b.op("Flatten", [x], "flat", axis=1)
    y = b.gemm(x, "fc", 8, 4, out="logits")
    return b.model("max_pooled", [("input", [1, 1, 512, 512])], [(y, [1, 4])])


def _error(model, quantized, feeds) -> float:
    errs = []
    for f in feeds:
        a = run_model(model, f)[0].ravel().astype(np.float64)
        b = run_model(quantized, f)[0].ravel().astype(np.float64)
        errs.append(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.mean(errs))


@pytest.mark.parametrize("case", ["rare_outlier", "signal_in_the_tail"])
def test_auto_keeps_the_model_closer_to_fp32(case):
    rare = case == "rare_outlier"
    model = B.conv_bn_relu() if rare else _max_pooled()
    calib = _spiky_calibration(model, rare, n=32 if rare else 16)
    held_out = _spiky_calibration(model, rare=False, n=8) if not rare else \
        B.feeds(model, batch=1, n=8, seed=11)
    result = onnxq.quantize(model, calib, progress=False, objective="size")
    want = "percentile" if rare else "minmax"
    assert result.config.calibration.method == want  # the saved config reproduces the model
    note = next(n for n in result.report.notes if n.startswith("calibration auto"))
    assert ("percentile ranges chosen" in note) == rare, note
    other = onnxq.quantize(model, calib, progress=False, objective="size",
                           calibrator="minmax" if rare else "percentile")
    same = onnxq.quantize(model, calib, progress=False, objective="size", calibrator=want)
    assert same.model.SerializeToString() == result.model.SerializeToString()
    # the choice made on calibration feeds holds on data it never saw
    assert _error(model, result.model, held_out) < _error(model, other.model, held_out)


def test_precomputed_ranges_make_no_choice():
    model = B.conv_bn_relu()
    calib = B.feeds(model, batch=1, n=4, seed=1)
    ranges = onnxq.calibrate(model, calib, progress=False)  # auto: the min/max ranges
    by_ranges = onnxq.quantize(model, ranges=ranges, progress=False)
    minmax = onnxq.quantize(model, calib, progress=False, calibrator="minmax",
                            bias_correction="off")  # --ranges: no calibration run to correct
    assert by_ranges.model.SerializeToString() == minmax.model.SerializeToString()
    assert not any(n.startswith("calibration auto") for n in by_ranges.report.notes)


def test_a_slow_comparison_keeps_min_max_and_says_so(monkeypatch):
    from onnxq import range_choice

    monkeypatch.setattr(range_choice, "MAX_CHECK_S", 0.0)
    model = B.conv_bn_relu()
    calib = _spiky_calibration(model, rare=True)
    result = onnxq.quantize(model, calib, progress=False, objective="size")
    assert result.config.calibration.method == "minmax"
    note = next(n for n in result.report.notes if n.startswith("calibration auto"))
    assert "over 0 s" in note and "--calibrator percentile" in note, note
    assert result.report.self_check["outputs"]  # the check that ran is still reported
