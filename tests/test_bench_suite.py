"""The benchmark suite's quick mode runs end to end on one tiny built-in model and writes
well-formed results (it checks that it runs, not the numbers)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("mlxtend")

from benchmarks import peers, suite  # noqa: E402

REQUIRED_ROW_KEYS = set(suite.ROW_KEYS)
MEASURED = ("metric", "drop", "cosine", "top1_agreement", "latency_ms", "throughput_b8",
            "speedup_b1", "speedup_b8", "size_mb")


def test_quick_suite_on_digits(tmp_path):
    rc = suite.main(["--quick", "--models", "digits", "--epochs", "1", "--min-seconds", "0.05",
                     "--out", str(tmp_path), "--name", "t", "--quiet"])
    assert rc == 0
    payload = json.loads((tmp_path / "t.json").read_text())
    for key in ("rows", "targets", "models", "environment", "versions", "cpu_flags",
                "load_average_at_start", "methods", "targets_met"):
        assert key in payload, key
    assert payload["environment"]["onnxq_revision"]
    assert isinstance(payload["cpu_flags"]["vnni"], bool)

    rows = payload["rows"]
    expected = ["fp32", *peers.ONNXQ_METHODS, *suite.QUICK_PEERS]
    assert [r["method"] for r in rows] == expected  # one row per method, FP32 first
    for row in rows:
        assert REQUIRED_ROW_KEYS <= set(row), set(REQUIRED_ROW_KEYS) - set(row)
        assert row["model"] == "digits"
        assert row["status"] == "ok", row["status"]
        for key in MEASURED:
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (key, row)
        if row["method"] != "fp32":
            assert row["quantize_s"] > 0 and row["peak_rss_mb"] > 0
    assert rows[0]["drop"] == 0 and rows[0]["speedup_b1"] == 1
    for row in rows:
        if row["method"] in peers.ONNXQ_METHODS:
            assert row["targets"] == "met" or row["targets"].startswith("missed")
    checks = payload["targets"]
    assert checks and all(isinstance(c["met"], bool) for c in checks)
    assert {c["method"] for c in checks} == set(peers.ONNXQ_METHODS)

    md = (tmp_path / "t.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table) == 2 + len(expected)  # header, separator, one line per method
    assert all(ln.count("|") == table[0].count("|") for ln in table)
    assert "## Targets" in md
    for png in payload["plots"]:
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_unavailable_model_is_a_row(tmp_path, monkeypatch):
    def missing(quick=False):
        raise suite.Unavailable("skipped: pip install something")

    monkeypatch.setitem(suite.REAL_MODELS, "fake", missing)
    assert suite.main(["--quick", "--models", "fake", "--out", str(tmp_path), "--name", "u",
                       "--quiet"]) == 0
    payload = json.loads((tmp_path / "u.json").read_text())
    assert [r["status"] for r in payload["rows"]] == ["skipped: pip install something"]
    assert payload["targets"] == [] and payload["targets_met"] is False
