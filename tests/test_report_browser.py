"""The HTML report in a real headless Chromium (Debian's ``chromium``): rendered at phone
width, its tables and inline images load, nothing is logged to the console. Skipped with the
reason where Chromium is absent (``.ci/run`` installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import onnx
import pytest

import onnxq
from onnxq.cli import main
from tests import builders as B

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt install chromium)")
_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]


def _browse(page, *extra: str) -> tuple[str, list[str]]:
    """The DOM after load, and the console lines Chromium logged."""
    proc = subprocess.run([CHROMIUM, *_FLAGS, "--virtual-time-budget=3000",
                           "--enable-logging=stderr", "--v=0", *extra, "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    return proc.stdout, [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]


def _report(tmp_path):
    model = B.conv_bn_relu()
    onnx.save(model, str(tmp_path / "m.onnx"))
    feeds = B.feeds(model, n=8)
    np.savez(tmp_path / "eval.npz", input=np.concatenate([f["input"] for f in feeds]))
    onnxq.quantize(model, feeds, progress=False, objective="size").save(tmp_path / "q.onnx")
    assert main(["compare", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), "--data",
                 str(tmp_path / "eval.npz"), "--report", str(tmp_path / "report.html")]) == 0
    return tmp_path / "report.html"


def test_the_report_renders_in_a_real_browser_at_phone_width(tmp_path, capsys):
    page = _report(tmp_path)
    dom, console = _browse(page, "--window-size=412,915")
    assert console == []
    rendered = re.search(r'data-rendered="tables:(\d+) images:(\d+) broken:(\d+)"', dom)
    # the per-tensor table; the SQNR and latency charts, none broken
    assert rendered and rendered.groups() == ("1", "2", "0"), dom[:300]
    assert "Speed-up over FP32: INT8" in dom
    assert dom.count("<tr>") >= 6  # header + the five quantized tensors
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *_FLAGS, "--window-size=412,915", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000  # text and a chart, not blank


def test_the_checks_see_a_broken_page(tmp_path):
    """The detector itself: a broken image and a script error are caught."""
    page = tmp_path / "bad.html"
    page.write_text(_report(tmp_path).read_text().replace(
        "data:image/png;base64,", "data:image/png;base64,AAAA").replace(
        "</body>", "<script>missing()</script></body>"))
    dom, console = _browse(page)
    assert any("missing is not defined" in line for line in console)
    assert re.search(r'broken:[1-9]"', dom)


def test_the_quantize_report_page(tmp_path):
    model = B.residual_block()
    onnx.save(model, str(tmp_path / "m.onnx"))
    feeds = B.feeds(model, n=4)
    np.savez(tmp_path / "c.npz", input=np.concatenate([f["input"] for f in feeds]))
    for name in ("r.html", "r.json"):
        assert main(["quantize", str(tmp_path / "m.onnx"), str(tmp_path / f"q_{name}.onnx"),
                     "--calib-data", str(tmp_path / "c.npz"), "--objective", "latency",
                     "--report", str(tmp_path / name), "--quiet"]) == 0
    import json

    assert "quantized" in json.loads((tmp_path / "r.json").read_text())
    page = (tmp_path / "r.html").read_text()
    assert "Kept in float" in page and "placement" in page
    dom, console = _browse(tmp_path / "r.html", "--window-size=412,915")
    assert console == []
    assert re.search(r'data-rendered="tables:\d+ images:0 broken:0"', dom)
