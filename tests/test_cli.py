"""The CLI happy paths: quantize (both data layouts, config file, report) and inspect."""

from __future__ import annotations

import json

import numpy as np
import onnx

from onnxq.cli import main
from tests import builders as B
from tests.conftest import cosine, run_model


def test_quantize_and_inspect(tmp_path, capsys):
    model = B.residual_block()
    src = tmp_path / "fp32.onnx"
    onnx.save(model, str(src))
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feed in enumerate(B.feeds(model, batch=2, n=4, seed=1)):
        np.savez(calib / f"{i:03d}.npz", **feed)
    out, report = tmp_path / "int8.onnx", tmp_path / "report.json"
    assert main(["quantize", str(src), str(out), "--calib-data", str(calib), "--quiet",
                 "--report", str(report)]) == 0
    assert capsys.readouterr().out == ""
    data = json.loads(report.read_text())
    assert any(item["op"] == "Conv" for item in data["quantized"])
    feed = B.feeds(model, batch=2, seed=3)[0]
    assert cosine(run_model(model, feed)[0], run_model(onnx.load(str(out)), feed)[0]) > 0.999

    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantize_linear"] > 0 and info["op_histogram"]["Conv"] == 6
    assert main(["inspect", str(out)]) == 0
    assert "QuantizeLinear" in capsys.readouterr().out


def test_quantize_split_npz_with_config_and_flags(tmp_path, capsys):
    model = B.conv_bn_relu()
    src = tmp_path / "fp32.onnx"
    onnx.save(model, str(src))
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal(
        (12, 3, 16, 16)).astype(np.float32))
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[weight]\nper_channel = true\n")
    out = tmp_path / "int8.onnx"
    assert main(["quantize", str(src), str(out), "--calib-data", str(tmp_path / "calib.npz"),
                 "--calib-batch", "4", "--config", str(cfg), "--per-tensor",
                 "--activation-type", "u8"]) == 0
    text = capsys.readouterr().out
    assert "per-tensor" in text and f"wrote {out}" in text
    q = onnx.load(str(out))
    assert all(not any(a.name == "axis" for a in n.attribute) for n in q.graph.node
               if n.op_type == "DequantizeLinear")


def test_calibrate_then_quantize_with_saved_ranges(tmp_path, capsys):
    model = B.conv_bn_relu()
    src = tmp_path / "fp32.onnx"
    onnx.save(model, str(src))
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal(
        (8, 3, 16, 16)).astype(np.float32))
    ranges = tmp_path / "ranges.json"
    assert main(["calibrate", str(src), "--calib-data", str(tmp_path / "calib.npz"),
                 "--calibrator", "percentile", "--percentile", "99.99", "-o", str(ranges),
                 "--quiet"]) == 0
    data = json.loads(ranges.read_text())
    assert data["calibration"]["method"] == "percentile" and data["ranges"]
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    # bias correction needs the calibration run, so the comparison is without it
    assert main(["quantize", str(src), str(a), "--ranges", str(ranges), "--quiet"]) == 0
    assert main(["quantize", str(src), str(b), "--calib-data", str(tmp_path / "calib.npz"),
                 "--calibrator", "percentile", "--percentile", "99.99", "--quiet",
                 "--recipe", "plain"]) == 0
    assert a.read_bytes() == b.read_bytes()
    # ranges from another model are refused
    other = tmp_path / "other.onnx"
    onnx.save(B.residual_block(), str(other))
    assert main(["quantize", str(other), str(tmp_path / "c.onnx"), "--ranges",
                 str(ranges)]) == 2
    assert "recalibrate" in capsys.readouterr().err
    assert main(["quantize", str(src), str(tmp_path / "d.onnx")]) == 2


def test_compare_and_bench(tmp_path, capsys):
    model = B.residual_block()
    src, out = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(src))
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal(
        (8, 8, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", input=np.random.default_rng(1).standard_normal(
        (8, 8, 16, 16)).astype(np.float32))
    assert main(["quantize", str(src), str(out), "--calib-data", str(tmp_path / "calib.npz"),
                 "--quiet"]) == 0
    assert main(["compare", str(src), str(out), "--data", str(tmp_path / "eval.npz"),
                 "--batch", "4", "--report", str(tmp_path / "r.html"),
                 "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "cosine" in text and "worst quantized tensors" in text
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["tensors"] and data["outputs"][0]["cosine"] > 0.999
    assert "data:image/png;base64" in (tmp_path / "r.html").read_text()
    assert main(["bench", str(src), str(out), "--data", str(tmp_path / "eval.npz"),
                 "--seconds", "0.2", "--json", str(tmp_path / "b.json"),
                 "--plot", str(tmp_path / "b.png")]) == 0
    assert set(json.loads((tmp_path / "b.json").read_text())["median_seconds"]) == {
        "fp32.onnx", "int8.onnx"}
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_data_the_model_cannot_run_is_a_clear_error_in_every_command(tmp_path, capsys):
    """A spectrogram model [frames, bins] given one .npz of [frames, bins]: the .npz is split
    along its first axis into samples, so onnxruntime gets [1, bins] and fails. compare,
    bench, profile and tune printed a traceback and "internal error"; quantize already said
    which feed failed."""
    b = B._Builder(31, 17)
    x = b.op("Unsqueeze", ["input", b.const("axes01", [0, 1], np.int64)], "to_nchw")
    y = b.relu(b.conv(b.relu(b.conv(x, "c1", 1, 8, 3, pad=0, bias=True), "r1"), "c2", 8, 8, 3,
                      pad=0, bias=True), "r2")
    model = b.model("frames", [("input", ["frames", 40])], [(y, None)])
    src, data = tmp_path / "fp32.onnx", tmp_path / "one.npz"
    onnx.save(model, str(src))
    np.savez(data, input=np.random.default_rng(0).standard_normal((50, 40)).astype(np.float32))
    commands = {"compare": ["compare", str(src), str(src), "--data", str(data)],
                "bench": ["bench", str(src), "--data", str(data), "--seconds", "0.1"],
                "profile": ["profile", str(src), "--data", str(data)],
                "tune": ["tune", str(src), str(tmp_path / "t.onnx"), "--calib-data", str(data),
                         "--eval-data", str(data), "--quiet"]}
    for name, argv in commands.items():
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (name, err[-1500:])
        assert "Traceback" not in err and "internal error" not in err, (name, err[-1500:])
        assert "onnxq: error:" in err and "folder of .npz" in err or "feed" in err, (name, err)
    assert not (tmp_path / "t.onnx").exists()


def test_compare_report_says_why_compute_stayed_float(tmp_path):
    """The INT8 model records why its compute nodes stayed float; the compare page shows it
    (and says so when a model carries no reasons)."""
    from onnxq.report import float_reasons
    from onnxq.score import float_compute

    model = B.residual_block()
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    src, out = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(src))
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal(
        (8, 8, 16, 16)).astype(np.float32))
    assert main(["quantize", str(src), str(out), "--calib-data", str(tmp_path / "calib.npz"),
                 "--exclude-nodes", conv, "--quiet"]) == 0
    int8 = onnx.load(str(out))
    why = float_reasons(int8)
    assert list(why) == [conv] and "exclude" in why[conv]
    assert [(n, w) for n, _, w in float_compute(int8)] == [(conv, why[conv])]
    assert main(["compare", str(src), str(out), "--data", str(tmp_path / "calib.npz"),
                 "--batch", "4", "--report", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<th>why</th>" in page and why[conv].split()[0] in page
    stripped = onnx.load(str(out))
    del stripped.metadata_props[:]
    assert float_compute(stripped)[0][2] == ""


def test_quiet_silences_every_progress_bar(tmp_path, capsys):
    """Long steps show a bar (calibration, tuning trials, comparison); --quiet leaves stderr
    empty."""
    model = B.residual_block()
    src = tmp_path / "fp32.onnx"
    onnx.save(model, str(src))
    rng = np.random.default_rng(0)
    for name in ("calib", "eval"):
        np.savez(tmp_path / f"{name}.npz",
                 input=rng.standard_normal((8, 8, 16, 16)).astype(np.float32))
    data = ["--calib-data", str(tmp_path / "calib.npz")]
    runs = {"quantize": ["quantize", str(src), str(tmp_path / "q.onnx"), *data],
            "tune": ["tune", str(src), str(tmp_path / "t.onnx"), *data, "--eval-data",
                     str(tmp_path / "eval.npz"), "--batch", "4", "--no-latency",
                     "--max-trials", "2"],
            "compare": ["compare", str(src), str(tmp_path / "q.onnx"), "--data",
                        str(tmp_path / "eval.npz")]}
    bars = {"quantize": "calibrating", "tune": "tuning", "compare": "comparing outputs"}
    for name, args in runs.items():
        assert main([*args, "--quiet"]) == 0, name
        assert capsys.readouterr().err == "", name
        assert main(args) == 0, name
        assert bars[name] in capsys.readouterr().err, name
