"""The ``auto`` calibration method: min/max or percentile ranges, whichever model is closer to
FP32 on the kept calibration feeds (``onnxq.range_choice``)."""

from __future__ import annotations

import numpy as np
import onnx
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
    """1 - cosine against FP32, with the int8 products computed as the target (vnni) does, so
    that the figure is the same on an AVX2 machine, whose kernels saturate 8-bit weights."""
    from onnxq.emulate import EmulatedSession

    session, errs = EmulatedSession(quantized, "vnni"), []
    for f in feeds:
        a = run_model(model, f)[0].ravel().astype(np.float64)
        b = session.run(None, f)[0].ravel().astype(np.float64)
        errs.append(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.mean(errs))


@pytest.mark.parametrize("case", ["rare_outlier", "signal_in_the_tail"])
def test_auto_keeps_the_model_closer_to_fp32(case):
    rare = case == "rare_outlier"
    model = B.conv_bn_relu() if rare else _max_pooled()
    calib = _spiky_calibration(model, rare, n=32 if rare else 16)
    held_out = _spiky_calibration(model, rare=False, n=8) if not rare else \
        B.feeds(model, batch=1, n=8, seed=11)
    # 8-bit weights (the VNNI targets): with 7-bit ones (avx2) the weights' error dominates,
    # the outlier's cost is under the 0.8 ratio and min/max is kept, as the rule says
    result = onnxq.quantize(model, calib, progress=False, objective="size", target="vnni")
    want = "percentile" if rare else "minmax"
    assert result.config.calibration.method == want  # the saved config reproduces the model
    note = next(n for n in result.report.notes if n.startswith("calibration auto"))
    assert ("percentile ranges chosen" in note) == rare, note
    other = onnxq.quantize(model, calib, progress=False, objective="size", target="vnni",
                           calibrator="minmax" if rare else "percentile")
    same = onnxq.quantize(model, calib, progress=False, objective="size", calibrator=want,
                          target="vnni")
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

    monkeypatch.setattr(range_choice, "MAX_CHECK_MACS", 0.0)
    model = B.conv_bn_relu()
    calib = _spiky_calibration(model, rare=True)
    result = onnxq.quantize(model, calib, progress=False, objective="size")
    assert result.config.calibration.method == "minmax"
    note = next(n for n in result.report.notes if n.startswith("calibration auto"))
    assert "G multiply-accumulates, over the 0 G allowed" in note and "--calibrator percentile" in note, note
    assert result.report.self_check["outputs"]  # the check that ran is still reported


def test_the_comparisons_work_is_counted_not_timed():
    """Whether the second model is compared depends on counted multiply-accumulates, so the
    output is the same on a fast and a slow (or busy) machine."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxq import range_choice

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    m = numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "m")
    t = numpy_helper.from_array(rng.standard_normal((8, 4, 2, 2)).astype(np.float32), "t")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("ConvTranspose", ["c", "t"], ["d"], strides=[2, 2]),
         helper.make_node("Transpose", ["d"], ["e"], perm=[0, 2, 3, 1]),
         helper.make_node("MatMul", ["p", "m"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "h"]),
         helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 6, 8])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, m, t])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feed = {"x": np.zeros((2, 3, 10, 10), np.float32), "p": np.zeros((2, 6, 8), np.float32)}
    conv = 8 * 10 * 10 * 3 * 9        # output elements x (c_in x kernel)
    deconv = 8 * 10 * 10 * 4 * 2 * 2  # input elements x (c_out x kernel)
    matmul = 6 * 5 * 8                # output elements x K
    per_feed = 2 * (conv + deconv + matmul)  # batch 2
    assert range_choice.work(model, [feed]) == 2 * per_feed  # FP32 + the min/max model
    assert range_choice.work(model, [feed, feed]) == 4 * per_feed


def test_the_work_of_a_model_whose_first_dim_is_not_a_batch_counts_each_frame_once():
    """A spectrogram [frames, bins] unsqueezed into one image: its first dim is not a batch.
    The count multiplied shapes sized for the whole feed by the feed's first dim (200 frames:
    200x too much), so ``auto`` skipped its comparison as too costly."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxq import range_choice

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([0, 1], np.int64), "axes")]
    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["x4"])]
    x, cin = "x4", 1
    for i, c in enumerate((16, 32)):
        inits.append(numpy_helper.from_array(
            rng.standard_normal((c, cin, 3, 3)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"]))
        x, cin = f"c{i}", c
    graph = helper.make_graph(
        nodes, "frames", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", 80])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feed = {"x": np.zeros((200, 80), np.float32)}
    macs = 16 * 198 * 78 * 9 + 32 * 196 * 76 * 16 * 9
    assert range_choice.work(model, [feed]) == 2 * macs


def test_the_work_of_a_model_given_by_path_is_counted_from_its_skeleton(tmp_path):
    """``quantize(path)`` holds the file's skeleton (weights dropped): a Reshape target kept
    there fixes the shapes after it, so the count is the in-memory model's."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxq import range_choice

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 96)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0, -1, 64], np.int64), "target")]
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "target"], ["r"]),
         helper.make_node("MatMul", ["r", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    feed = {"x": np.zeros((1, 8, 16, 16), np.float32)}
    expected = 2 * (32 * 96 * 64)  # [1, 32, 64] x [64, 96], FP32 and the min/max model
    assert range_choice.work(model, [feed]) == expected
    assert range_choice.work(tmp_path / "m.onnx", [feed]) == expected
