"""onnxq.score: output agreement, the per-tensor error report (incl. a planted bad range),
rendering, latency, and error cases."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import score
from onnxq.errors import CalibrationError, ConfigError, ModelError
from onnxq.qtypes import TensorRange
from tests import builders as B

PLANTED = "block2.downsample.bn_out"  # mid-network shortcut branch; not the worst when clean


@pytest.fixture(scope="module")
def residual():
    model = B.residual_block()
    feeds = B.feeds(model, batch=4, n=8, seed=1)
    result = onnxq.quantize(model, feeds, progress=False)
    return model, result, feeds


@pytest.fixture(scope="module")
def residual_report(residual):
    model, result, feeds = residual
    return score.tensor_report(model, result.model, feeds)


def _qdq(nodes: list, inits: list, src: str, dst: str, scale: float, zp: int, dtype) -> None:
    inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{src}_s"),
              numpy_helper.from_array(np.array(zp, dtype), f"{src}_zp")]
    nodes += [helper.make_node("QuantizeLinear", [src, f"{src}_s", f"{src}_zp"], [f"{src}_q"]),
              helper.make_node("DequantizeLinear", [f"{src}_q", f"{src}_s", f"{src}_zp"], [dst])]


def _tiny_pair() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """FP32: y = Relu(x). INT8: Relu -> "y_float" -> Q/DQ -> "y" (a renamed graph output, as
    onnxq writes it), plus an extra branch quantizing a tensor the FP32 model lacks."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])
    fp32 = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "fp32", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    nodes = [helper.make_node("Relu", ["x"], ["y_float"]),
             helper.make_node("Identity", ["x"], ["ghost"])]
    inits: list = []
    _qdq(nodes, inits, "y_float", "y", 0.02, 0, np.uint8)
    _qdq(nodes, inits, "ghost", "ghost_dq", 0.05, 0, np.int8)
    ghost = helper.make_tensor_value_info("ghost_dq", TensorProto.FLOAT, ["N", 16])
    int8 = helper.make_model(helper.make_graph(nodes, "int8", [x], [y, ghost], inits),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return fp32, int8


def _tiny_feeds(n: int = 3) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"x": rng.uniform(-3, 3, (4, 16)).astype(np.float32)} for _ in range(n)]


# -- (a) a well-quantized model ------------------------------------------------------------------
def test_compare_outputs_residual(residual):
    model, result, feeds = residual
    agreement = score.compare_outputs(model, result.model, feeds)
    logits = agreement["logits"]
    assert agreement.feeds == 8 and logits.elements == 8 * 4 * 10
    assert logits.cosine > 0.999 and agreement.cosine == logits.cosine
    assert logits.top1_agreement is not None and logits.top1_agreement >= 0.9
    assert 0 < logits.mean_abs_error <= logits.max_abs_error < 1.0
    assert logits.max_error_lsb is None  # logits come from a float Gemm, not a DQ


def test_tensor_report_residual(residual, residual_report):
    model, result, _ = residual
    report = residual_report
    assert len(report) >= 5 and not report.missing and report.feeds == 8
    assert all(t.sqnr_db > 20 and t.cosine > 0.99 for t in report), report
    assert [t.sqnr_db for t in report] == sorted(t.sqnr_db for t in report)
    names = {t.name for t in report}
    assert {"input", PLANTED, "stem.relu_out", "maxpool_out"} <= names
    assert all(0 <= t.saturated_fraction < 0.01 and t.scale > 0 for t in report)
    assert len(model.graph.output) == 1 and len(result.model.graph.output) == 1  # untouched


def test_attention_report_has_no_nan():
    model = B.attention_block()
    feeds = B.feeds(model, batch=2, n=3, seed=1)
    result = onnxq.quantize(model, feeds, progress=False)
    report = score.tensor_report(model, result.model, feeds)
    assert len(report) >= 5 and not report.missing
    values = [v for t in report for v in (t.sqnr_db, t.cosine, t.max_abs_error,
                                          t.saturated_fraction, t.scale)]
    assert not any(math.isnan(v) for v in values)
    assert score.compare_outputs(model, result.model, feeds).cosine > 0.99


def test_tensors_read_by_int8_kernels_are_reported_from_their_int8_values():
    """A quantized tensor with no DequantizeLinear after it (read by MatMulIntegerToFloat on
    the CPU EP) is fetched as int8 and dequantized: the same error as through a DQ node."""
    model = B.attention_block()
    feeds = B.feeds(model, batch=2, n=3, seed=1)
    result = onnxq.quantize(model, feeds, progress=False)
    nodes = result.model.graph.node
    read = {i for n in nodes if n.op_type == "DequantizeLinear" for i in n.input}
    raw = [n.input[0] for n in nodes if n.op_type == "QuantizeLinear" and n.output[0] not in read]
    assert raw  # the premise: some activations reach an int8 kernel without a DQ
    report = score.tensor_report(model, result.model, feeds)
    rows = {t.name: t for t in report}
    assert not report.missing and set(raw) <= set(rows)
    assert all(rows[t].sqnr_db > 20 and rows[t].cosine > 0.999 for t in raw), report
    with_dq = onnx.ModelProto()  # the same model with a DQ (read by an extra output) per tensor
    with_dq.CopyFrom(result.model)
    for n in [n for n in with_dq.graph.node if n.op_type == "QuantizeLinear"
              and n.input[0] in raw]:
        with_dq.graph.node.append(helper.make_node("DequantizeLinear", list(n.output) + list(
            n.input[1:]), [f"{n.input[0]}_dq"]))
        with_dq.graph.output.append(helper.make_tensor_value_info(f"{n.input[0]}_dq",
                                                                  TensorProto.FLOAT, None))
    again = {t.name: t for t in score.tensor_report(model, with_dq, feeds)}
    for t in raw:
        assert rows[t].sqnr_db == pytest.approx(again[t].sqnr_db, abs=1e-3)
        assert rows[t].max_abs_error == pytest.approx(again[t].max_abs_error, abs=1e-5)


# -- (b) the planted bad range ------------------------------------------------------------------
def test_planted_bad_range_is_ranked_first(residual, residual_report):
    model, _, feeds = residual
    assert residual_report[0].name != PLANTED  # so ranking it first means something
    ranges = onnxq.calibrate(model, feeds, progress=False)
    good = ranges[PLANTED]
    ranges[PLANTED] = TensorRange(good.lo * 0.05, good.hi * 0.05)
    broken = onnxq.quantize(model, ranges=ranges, progress=False)
    report = score.tensor_report(model, broken.model, feeds)
    worst = report[0]
    assert worst.name == PLANTED
    assert worst.saturated_fraction == max(t.saturated_fraction for t in report) > 0.3
    assert worst.sqnr_db < 10 < min(t.sqnr_db for t in residual_report)
    assert all(t.saturated_fraction < 0.01 for t in report[1:])


# -- name mapping, LSBs, user metric, missing tensors ------------------------------------------
def test_renamed_output_lsb_metric_and_missing(tmp_path):
    fp32, int8 = _tiny_pair()
    feeds = _tiny_feeds()
    onnx.save(fp32, str(tmp_path / "fp32.onnx"))
    onnx.save(int8, str(tmp_path / "int8.onnx"))
    seen = {}

    def metric(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        seen["shapes"] = (a[0].shape, b[0].shape)
        return float(np.mean(np.abs(a[0] - b[0])))

    agreement = score.compare_outputs(tmp_path / "fp32.onnx", str(tmp_path / "int8.onnx"),
                                      feeds, metric=metric)
    y = agreement["y"]
    assert seen["shapes"] == ((12, 16), (12, 16))
    assert agreement.metric == pytest.approx(y.mean_abs_error)
    assert y.max_error_lsb is not None and 0 < y.max_error_lsb <= 0.5 + 1e-4
    assert y.mean_error_lsb == pytest.approx(y.mean_abs_error / 0.02, rel=1e-4)
    report = score.tensor_report(fp32, int8, feeds)
    assert [t.name for t in report] == ["y"] and report.missing == ("ghost",)
    assert report[0].scale == pytest.approx(0.02) and report[0].zero_point == 0
    assert report[0].saturated_fraction == 0 and report[0].sqnr_db > 30


# -- (c) rendering --------------------------------------------------------------------------------
def test_render_markdown_and_html(tmp_path, residual_report):
    md = score.render_report(residual_report, tmp_path / "report.md").read_text()
    lines = md.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(residual_report)
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert f"`{residual_report[0].name}`" in table[2]
    page = score.render_report(residual_report, tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<tr>") == 1 + len(residual_report)
    match = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match and base64.b64decode(match.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    png = score.plot_sqnr(residual_report, tmp_path / "sqnr.png")
    assert png.read_bytes().startswith(b"\x89PNG")


def test_render_lists_missing_and_plain_lists(tmp_path):
    fp32, int8 = _tiny_pair()
    report = score.tensor_report(fp32, int8, _tiny_feeds(1))
    assert "ghost" in score.render_report(report, tmp_path / "r.md").read_text()
    assert "ghost" in score.render_report(report, tmp_path / "r.htm").read_text()
    inf = score.TensorError("a|b", math.inf, 1.0, 0.0, 0.0, 0.1, 0, 4)
    assert "a\\|b" in score.render_report([inf], tmp_path / "l.md").read_text()
    assert "base64," in score.render_report([], tmp_path / "e.html").read_text()
    score.plot_sqnr([inf], tmp_path / "inf.png")


# -- latency -------------------------------------------------------------------------------------
def test_measure_latency(residual):
    model, result, feeds = residual
    times = score.measure_latency({"fp32": model, "int8": result.model}, feeds[0],
                                  threads=1, min_seconds=0.05, warmup=1, rounds=2)
    assert set(times) == {"fp32", "int8"} and all(0 < t < 1 for t in times.values())


# -- (d) error cases ------------------------------------------------------------------------------
def test_errors(tmp_path, residual):
    model, result, feeds = residual
    other = B.attention_block()
    with pytest.raises(ModelError, match=r"different inputs.*hidden_in"):
        score.compare_outputs(model, other, feeds)
    with pytest.raises(ModelError, match="different inputs"):
        score.tensor_report(other, result.model, feeds)
    with pytest.raises(ModelError, match=r"input.*hidden_in|hidden_in.*input"):
        score.measure_latency({"a": model, "b": other}, feeds[0])
    with pytest.raises(CalibrationError, match="no feeds"):
        score.compare_outputs(model, result.model, [])
    with pytest.raises(CalibrationError, match="no feeds"):
        score.tensor_report(model, result.model, iter(()))
    with pytest.raises(CalibrationError, match=r"wrap it in a list"):
        score.tensor_report(model, result.model, feeds[0])
    with pytest.raises(CalibrationError, match=r"^feed #0 is missing input"):
        score.compare_outputs(model, result.model, [{"wrong": feeds[0]["input"]}])
    with pytest.raises(ModelError, match="quantizes no activation"):
        score.tensor_report(model, model, feeds[:1])
    with pytest.raises(ModelError, match=r"lacks output.*logits"):
        score.compare_outputs(model, _renamed_output(result.model), feeds[:1])
    with pytest.raises(ModelError, match="does not exist"):
        score.compare_outputs(tmp_path / "nope.onnx", model, feeds[:1])
    with pytest.raises(ModelError, match="not int"):
        score.compare_outputs(42, model, feeds[:1])
    with pytest.raises(ConfigError, match=r"\.md or \.html"):
        score.render_report([], tmp_path / "report.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        score.render_report([], tmp_path / "no" / "report.md")
    with pytest.raises(ConfigError, match="at least one model"):
        score.measure_latency({}, feeds[0])


def _renamed_output(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    out = copy.graph.output[0].name
    for node in copy.graph.node:
        node.output[:] = ["renamed" if o == out else o for o in node.output]
    copy.graph.output[0].name = "renamed"
    return copy


def test_a_folded_relu_is_compared_with_its_output_not_its_input():
    """t = Conv(x) is read by a Relu (folded into the grid of the next Conv's input) and by a
    float Sigmoid. The grid stands for Relu(t): compared with t, half the values would read as
    saturated and the SQNR as a few dB (found on NASNet's reduction cells)."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["t"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["t"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["t"], ["s"])]
    graph = helper.make_graph(
        nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "s")],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feeds = [{"x": rng.normal(0, 1, (1, 4, 16, 16)).astype(np.float32)} for _ in range(4)]
    result = onnxq.quantize(model, feeds, progress=False, objective="size")
    int8_tensors = {o for n in result.model.graph.node for o in n.output}
    assert "r" not in int8_tensors  # the premise: the Relu is folded
    rows = {t.name: t for t in score.tensor_report(model, result.model, feeds)}
    assert "r" in rows and rows["r"].saturated_fraction < 0.01 and rows["r"].sqnr_db > 25, rows
    assert all(t.saturated_fraction < 0.01 for t in rows.values()), rows


def test_a_clamp_folded_by_another_tool_is_compared_with_its_output():
    """Another tool's names: the grid on t (u8, zero point 0) stands for Relu(t), t's only
    reader in FP32, which the INT8 model lacks."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])
    fp32 = helper.make_model(helper.make_graph(
        [helper.make_node("Neg", ["x"], ["t"]), helper.make_node("Relu", ["t"], ["r"]),
         helper.make_node("Neg", ["r"], ["y"])], "fp32", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    nodes = [helper.make_node("Neg", ["x"], ["t"])]
    inits: list = []
    _qdq(nodes, inits, "t", "t_grid", 0.02, 0, np.uint8)
    nodes.append(helper.make_node("Neg", ["t_grid"], ["y"]))
    int8 = helper.make_model(helper.make_graph(nodes, "int8", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    rows = {t.name: t for t in score.tensor_report(fp32, int8, _tiny_feeds())}
    assert set(rows) == {"r"} and rows["r"].saturated_fraction == 0.0, rows
