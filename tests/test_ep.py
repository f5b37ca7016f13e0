"""Scoring on several execution providers (``onnxq bench --ep``): the child protocol that runs
an EP in another interpreter, clear errors when an EP's interpreter is missing, and the
OpenVINO EP in its own venv (``make venv-openvino``; skipped, with the reason, without it)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxq
from onnxq.cli import main
from tests import builders as B

ROOT = Path(__file__).resolve().parents[1]


def _openvino_python() -> str | None:
    path = os.environ.get("ONNXQ_OPENVINO_PYTHON") or str(ROOT / ".venv-openvino/bin/python")
    return path if Path(path).is_file() else None


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ep")
    model = B.resnet18_shaped(image=32, num_classes=10)
    onnx.save(model, tmp / "fp32.onnx")
    onnxq.quantize(model, B.feeds(model, batch=2, n=4, seed=1), progress=False).save(
        tmp / "int8.onnx")
    np.savez(tmp / "eval.npz", input=np.random.default_rng(2).standard_normal(
        (6, 3, 32, 32)).astype(np.float32))
    return tmp


def _bench(models: Path, *extra: str) -> int:
    return main(["bench", str(models / "fp32.onnx"), str(models / "int8.onnx"), "--data",
                 str(models / "eval.npz"), "--seconds", "0.2", "--json",
                 str(models / "b.json"), *extra])


def test_an_ep_in_another_interpreter(models, capsys):
    """The child protocol, with this interpreter standing in for another venv's."""
    assert _bench(models, "--ep", "cpu", "--ep-python", f"cpu={sys.executable}") == 0
    rows = json.loads((models / "b.json").read_text())["rows"]
    assert [(r["ep"], r["model"]) for r in rows] == [("cpu", "fp32.onnx"), ("cpu", "int8.onnx")]
    assert rows[1]["cosine_vs_first"] > 0.995 and rows[1]["python"] == sys.executable
    assert rows[1]["median_seconds"] > 0
    assert "session providers" in capsys.readouterr().out


def test_a_missing_ep_interpreter_is_a_clear_error(models, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("ONNXQ_OPENVINO_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)  # no .venv-openvino here
    assert _bench(models, "--ep", "cpu,openvino") == 2
    err = capsys.readouterr().err
    assert "make venv-openvino" in err and "Traceback" not in err
    assert _bench(models, "--ep", "cpu", "--ep-python", "tpu=/bin/python") == 2
    assert "EP=PYTHON" in capsys.readouterr().err
    assert _bench(models, "--ep", "openvino", "--ep-python", "openvino=/nope/python") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "fake").write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    (tmp_path / "fake").chmod(0o755)
    assert _bench(models, "--ep", "openvino", "--ep-python",
                  f"openvino={tmp_path / 'fake'}") == 2
    assert "exited 3 without an answer: broken" in capsys.readouterr().err


@pytest.mark.skipif(_openvino_python() is None,
                    reason="no OpenVINO EP venv (make venv-openvino, or set "
                           "ONNXQ_OPENVINO_PYTHON); onnxruntime-openvino cannot share this venv")
def test_openvino_ep_side_by_side_with_the_cpu_ep(models):
    """Both onnxruntime builds in one table: the INT8 model runs on the OpenVINO EP (its
    own onnxruntime) and agrees with FP32 there as on the CPU EP."""
    assert _bench(models, "--ep", "cpu,openvino", "--ep-python",
                  f"openvino={_openvino_python()}") == 0
    rows = {(r["ep"], r["model"]): r
            for r in json.loads((models / "b.json").read_text())["rows"]}
    assert set(rows) == {(e, m) for e in ("cpu", "openvino")
                         for m in ("fp32.onnx", "int8.onnx")}
    ov = rows[("openvino", "int8.onnx")]
    assert ov["providers"][0] == "OpenVINOExecutionProvider"
    assert ov["onnxruntime"] != rows[("cpu", "int8.onnx")]["onnxruntime"]  # two builds
    for ep in ("cpu", "openvino"):
        assert rows[(ep, "int8.onnx")]["cosine_vs_first"] > 0.995, ep
        assert rows[(ep, "int8.onnx")]["top1_vs_first"] >= 0.8, ep


def test_a_model_made_for_the_openvino_ep(tmp_path, capsys, caplog):
    """target_ep openvino: standard ops only (the LSTM stays an LSTM, not the com.microsoft
    DynamicQuantizeLSTM the OpenVINO EP cannot run), int8 only at the compute ops' inputs
    (no Q/DQ around element-wise ops), QDQ only; the resolved config says so."""
    from onnxq.config import QuantConfig
    from onnxq.config_resolve import OPENVINO_FLOAT_OPS, resolve
    from onnxq.errors import ConfigError
    from tests import builders_flow as F

    model = F.recurrent("LSTM")
    feeds = F.sequence_feeds(model, 8)
    cpu = onnxq.quantize(model, feeds, progress=False)
    assert any(n.domain == "com.microsoft" for n in cpu.model.graph.node)
    ov = onnxq.quantize(model, feeds, progress=False, target_ep="openvino")
    assert "no such op" not in caplog.text  # the EP's implied exclusions are not the user's
    assert not any(n.domain not in ("", "ai.onnx") for n in ov.model.graph.node)
    assert {n.op_type for n in ov.model.graph.node} >= {"LSTM", "QuantizeLinear"}
    assert set(OPENVINO_FLOAT_OPS) <= set(ov.config.exclude_op_types)
    cnn = B.mobilenet_shaped(image=32, num_classes=10)  # HardSwish, Add, GlobalAveragePool
    out = onnxq.quantize(cnn, B.feeds(cnn, batch=1, n=4), progress=False, target_ep="openvino")
    int8_ops = {op for _, op in out.report.quantized}
    assert "Conv" in int8_ops and not int8_ops & set(OPENVINO_FLOAT_OPS)
    assert {op for _, op in onnxq.quantize(cnn, B.feeds(cnn, batch=1, n=4), progress=False,
                                           objective="size").report.quantized} & {"Add",
                                                                                  "HardSwish"}
    with pytest.raises(ConfigError, match="format qdq"):
        resolve(QuantConfig(format="qlinear", target_ep="openvino"))
    assert resolve(QuantConfig(target_ep="auto")).target_ep == "cpu"  # no OpenVINO EP here
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.concatenate([f["x"] for f in feeds], axis=1))
    assert main(["quantize", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), "--calib-data",
                 str(tmp_path / "c.npz"), "--ep", "openvino", "--quiet"]) == 0
    assert "LSTM" in {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}


def test_every_output_of_every_feed_on_an_ep(models):
    """``outputs_on_ep`` (the suite's task metric on another EP): every output of every
    feed, untimed, through the child protocol; equal to a plain session's outputs."""
    from onnxq.ep import outputs_on_ep
    from onnxq.runtime import make_session

    feeds = [{"input": np.random.default_rng(i).standard_normal((2, 3, 32, 32))
              .astype(np.float32)} for i in range(3)]
    got = outputs_on_ep({"int8": str(models / "int8.onnx")}, feeds, "cpu",
                        pythons={"cpu": sys.executable})
    sess = make_session(str(models / "int8.onnx"))
    assert len(got["int8"]) == 3
    for feed, outs in zip(feeds, got["int8"], strict=True):
        want = sess.run(None, feed)
        assert len(outs) == len(want)
        for a, b in zip(outs, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
