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
