"""The suite's execution-provider section names the model its figures are from."""

from __future__ import annotations

from benchmarks import suite_ep


def _rows(with_ov: bool) -> list[dict]:
    rows = [{"model": "m", "method": "fp32", "openvino_latency_ms": 10.0},
            {"model": "m", "method": "onnxq_qdq", "openvino_speedup_b1": 0.5,
             "openvino_drop": 0.0, "openvino_accurate": True},
            {"model": "m", "method": "nncf", "openvino_speedup_b1": 2.0,
             "openvino_drop": 0.1, "openvino_accurate": True}]
    if with_ov:
        rows.append({"model": "m", "method": "onnxq_ov", "openvino_speedup_b1": 2.1,
                     "openvino_drop": 0.0, "openvino_accurate": True})
    return rows


def test_the_model_made_for_the_ep_is_scored_when_the_run_made_one():
    s = suite_ep.summary(_rows(True), "openvino", 0.03)
    assert s["onnxq_model"] == "onnxq_ov" and s["rows"][0]["onnxq_speedup"] == 2.1
    assert s["rows"][0]["onnxq_default_speedup"] == 0.5
    assert s["share_at_least_nncf"] == 1.0 and not s["slower_than_fp32"]
    assert "| onnxq --ep openvino speed-up |" in suite_ep.render(s, 0.03)


def test_without_that_model_the_section_says_it_shows_the_default_model():
    s = suite_ep.summary(_rows(False), "openvino", 0.03)
    assert s["onnxq_model"] == "onnxq_qdq" and s["rows"][0]["onnxq_speedup"] == 0.5
    text = suite_ep.render(s, 0.03)
    assert "| onnxq default model speed-up |" in text and "made no `--ep openvino` model" in text
    assert "--ep openvino speed-up" not in text
