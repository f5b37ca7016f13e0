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


def test_zoo_pass_rate_from_rows():
    """The headline number: a row passes when it runs, is not slower than FP32 (3 % band) and
    meets its family's accuracy target; each miss says why."""
    from benchmarks.real_models import Bench

    def bench(family, min_metric=None):
        return Bench(name="m", family=family, model=None, calib=[], feed_b1={}, feed_b8=None,
                     evaluate=None, metric="%", description="", data={},
                     min_metric=min_metric)

    rows = [{"model": "magika", "method": "fp32", "status": "ok"},
            {"model": "magika", "method": "onnxq_qdq", "status": "ok", "speedup_b1": 0.98,
             "drop": 0.4, "metric": 90.0, "cosine": 0.99},
            {"model": "magika", "method": "ort_best", "status": "ok", "speedup_b1": 0.90,
             "drop": 0.1, "metric": 90.0, "cosine": 0.99},
            {"model": "magika", "method": "ort_default", "status": "failed: boom"}]
    suite.zoo_verdicts(bench("cnn"), rows)
    assert [r.get("zoo_pass") for r in rows[1:]] == [True, False, False]
    assert rows[2]["zoo_why"] == "0.90x FP32" and "boom" in rows[3]["zoo_why"]
    speech = [{"model": "minilm", "method": "onnxq_qdq", "status": "ok", "speedup_b1": 1.2,
               "drop": 3.0, "metric": 80.0, "cosine": 0.9995}]
    suite.zoo_verdicts(bench("transformer"), speech)
    assert speech[0]["zoo_pass"]  # over the drop, but cosine >= 0.999
    suite.zoo_verdicts(bench("cnn"), speech)
    assert speech[0]["zoo_why"] == "drop 3.00"
    rates = {r["method"]: r for r in suite.zoo_pass_rates(rows + speech,
                                                          ["onnxq_qdq", "ort_best"])}
    assert rates["onnxq_qdq"]["passed"] == 1 and rates["onnxq_qdq"]["models"] == 2
    assert rates["onnxq_qdq"]["rate"] == 50.0 and "minilm (drop 3.00)" in \
        rates["onnxq_qdq"]["misses"]
    assert rates["ort_best"]["rate"] == 0.0
