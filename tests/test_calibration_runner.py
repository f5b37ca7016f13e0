"""The calibration runner: dynamic shapes, bounded memory, agreement with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.api import prepare
from onnxq.calibrate import collect_ranges
from onnxq.calibrators import MinMaxCalibrator, PercentileCalibrator
from onnxq.config import PlacementConfig, QuantConfig
from tests import builders as B
from tests.conftest import cosine, run_model

SIZE = PlacementConfig(objective="size")  # every planned node int8 (no placement)


def _dynamic_seq_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((32, 64)) * 0.2).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((64, 16)) * 0.2).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")],
        "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 16])],
        [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("calibrator", ["minmax", "entropy", "percentile", "mse"])
def test_variable_sequence_length(calibrator):
    model = _dynamic_seq_model()
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1 + i % 3, 4 + 7 * i, 32)).astype(np.float32)}
             for i in range(8)]
    result = onnxq.quantize(model, feeds, progress=False, calibrator=calibrator)
    for seq in (3, 50):
        feed = {"x": rng.standard_normal((2, seq, 32)).astype(np.float32)}
        assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) > 0.995


def test_all_zero_tensor_gets_a_valid_scale():
    """A tensor that is constant (all zeros) still quantizes to a loadable model."""
    model = _dynamic_seq_model()
    feeds = [{"x": np.zeros((1, 4, 32), np.float32)}]
    result = onnxq.quantize(model, feeds, progress=False)
    scales = [numpy_helper.to_array(i) for i in result.model.graph.initializer
              if i.name.endswith("_scale")]
    assert all(np.all(s > 0) and np.all(np.isfinite(s)) for s in scales)
    run_model(result.model, {"x": np.ones((1, 4, 32), np.float32)})


def test_max_samples_limits_the_run():
    model = _dynamic_seq_model()
    seen = []

    class Spy(MinMaxCalibrator):
        def observe(self, name, array, *, index=None):
            seen.append(index)
            super().observe(name, array, index=index)

    fused, plan = prepare(model, QuantConfig())
    feeds = ({"x": np.ones((1, 4, 32), np.float32)} for _ in range(100))  # a generator
    collect_ranges(fused.model, plan.calibration_tensors, feeds, Spy(), max_samples=5,
                   progress=False)
    assert max(seen) == 4


def _ort_ranges(model: onnx.ModelProto, feeds: list[dict], method, tmp_path,
                **extra) -> dict[str, tuple[float, float]]:
    from onnxruntime.quantization.calibrate import create_calibrator

    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))

    class Reader:
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    cal = create_calibrator(str(path), augmented_model_path=str(tmp_path / "aug.onnx"),
                            calibrate_method=method, extra_options=extra)
    cal.collect_data(Reader())
    data = cal.compute_data().data
    return {k: (float(np.ravel(v.range_value[0])[0]), float(np.ravel(v.range_value[1])[0]))
            for k, v in data.items()}


def test_minmax_matches_onnxruntime_exactly(tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod

    model = B.residual_block()
    feeds = B.feeds(model, batch=2, n=6, seed=4)
    fused, plan = prepare(model, QuantConfig(fold_activations=False, placement=SIZE))
    ours = collect_ranges(fused.model, plan.calibration_tensors, feeds, MinMaxCalibrator(),
                          progress=False)
    theirs = _ort_ranges(fused.model, feeds, CalibrationMethod.MinMax, tmp_path)
    common = sorted(set(ours) & set(theirs))
    assert len(common) >= 5
    for name in common:
        lo, hi = theirs[name]
        # onnxruntime widens to include 0 as onnxq does
        assert ours[name].lo == pytest.approx(min(lo, 0.0), abs=1e-6), name
        assert ours[name].hi == pytest.approx(max(hi, 0.0), abs=1e-6), name


def test_percentile_agrees_with_onnxruntime(tmp_path):
    """onnxruntime's percentile is symmetric over |x| and returns the lower edge of the bin
    where its CDF crosses p; onnxq's symmetric mode interpolates within the bin. Stated
    tolerance: 3 % of the threshold (a few of onnxruntime's 2048 bins)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod

    model = _dynamic_seq_model()
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((2, 16, 32)).astype(np.float32)} for _ in range(8)]
    fused, plan = prepare(model, QuantConfig())
    ours = collect_ranges(fused.model, plan.calibration_tensors, feeds,
                          PercentileCalibrator(percentile=99.9, symmetric=True),
                          progress=False)
    theirs = _ort_ranges(fused.model, feeds, CalibrationMethod.Percentile, tmp_path,
                         percentile=99.9, symmetric=True, num_bins=2048)
    for name in sorted(set(ours) & set(theirs)):
        t_ours = max(abs(ours[name].lo), ours[name].hi)
        t_theirs = max(abs(theirs[name][0]), abs(theirs[name][1]))
        assert t_ours == pytest.approx(t_theirs, rel=0.03), name


def test_spilled_calibration_gives_the_same_model(monkeypatch):
    """Large prepared models wait on disk during calibration (``collect_ranges_spilling``):
    forced on a small model, the output is byte-identical to the in-memory path."""
    import importlib

    import onnxq
    from tests import builders as B

    calibrate = importlib.import_module("onnxq.calibrate")  # the module, not onnxq.calibrate()
    model = B.residual_block()
    feeds = B.feeds(model, batch=2, n=4, seed=3)
    normal = onnxq.quantize(model, feeds, progress=False, target="vnni")
    monkeypatch.setattr(calibrate, "SPILL_BYTES", 0)
    spilled = onnxq.quantize(model, feeds, progress=False, target="vnni")
    assert spilled.model.SerializeToString() == normal.model.SerializeToString()
