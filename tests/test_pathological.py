"""Pathological inputs are refused or reported, naming the tensor (they gave all-zero or
traceback results): huge ranges in a ranges file, zero-width calibrated ranges, weights near
float32's limit, .npy calibration data, malformed ranges files, a --config folder, a metric
that fails."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.cli import main
from onnxq.errors import CalibrationError
from tests import builders as B
from tests.conftest import cosine, run_model


@pytest.fixture()
def files(tmp_path):
    model = B.conv_bn_relu()
    onnx.save(model, tmp_path / "m.onnx")
    feed = B.feeds(model, batch=2, n=1, seed=1)[0]
    np.savez(tmp_path / "c.npz", **feed)
    np.save(tmp_path / "c.npy", next(iter(feed.values())))
    (tmp_path / "list.json").write_text(json.dumps({"ranges": []}))
    name = next(iter(feed))
    (tmp_path / "huge.json").write_text(json.dumps({"ranges": {name: {"min": -1e39,
                                                                      "max": 1e39}}}))
    return tmp_path


@pytest.mark.parametrize("extra,needle", [
    (["--calib-data", "c.npy"], "without an input name (a .npy)"),
    (["--ranges", "list.json"], "is not an onnxq ranges file"),
    (["--ranges", "huge.json"], "has range [-1e+39, 1e+39]"),
    (["--calib-data", "c.npz", "--config", "."], "is a directory"),
])
def test_bad_files_are_refused(files, capsys, monkeypatch, extra, needle):
    monkeypatch.chdir(files)
    assert main(["quantize", "m.onnx", "o.onnx", *extra, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (files / "o.onnx").exists()


def test_a_failing_metric_is_a_clean_error(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    assert main(["tune", "m.onnx", "o.onnx", "--calib-data", "c.npz", "--eval-data", "c.npz",
                 "--metric", "os:system", "--no-latency"]) == 2
    assert "the metric system failed: TypeError" in capsys.readouterr().err


def test_zero_width_ranges_are_reported(caplog):
    model = B.conv_bn_relu()
    zeros = [{k: np.zeros_like(v) for k, v in f.items()} for f in B.feeds(model, n=2)]
    result = onnxq.quantize(model, zeros, progress=False)
    assert any("zero-width calibrated range" in n for n in result.report.notes)
    assert "constant" in caplog.text


def test_activations_beyond_1e30_are_refused_naming_the_tensor():
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 1e31).astype(np.float32)
    w2 = (rng.standard_normal((4, 4, 1, 1)) * 0.3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c"], name="huge"),
         helper.make_node("Mul", ["c", "tiny"], ["m"], name="scale_down"),
         helper.make_node("Conv", ["m", "w2"], ["y"], name="normal")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         # a spatial scale: not one per channel, so it cannot fold into the huge conv
         numpy_helper.from_array(np.full((4, 4), 1e-31, np.float32), "tiny")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": rng.uniform(0, 1, (2, 3, 6, 6)).astype(np.float32)} for _ in range(3)]
    with pytest.raises(CalibrationError, match="tensor 'c' has a calibrated range"):
        onnxq.quantize(model, feeds, progress=False)  # its output would be all zeros
    result = onnxq.quantize(model, feeds, progress=False, exclude_nodes=["huge", "scale_down"])
    assert cosine(run_model(model, feeds[0])[0], run_model(result.model, feeds[0])[0]) >= 0.99

