"""Latency-aware placement (#14): the exact min-cut, the cost model and its tables, and the
default quantize keeping float only what the cost model predicts faster in float."""

from __future__ import annotations

import itertools
import json
import math
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import graph as G
from onnxq.errors import ConfigError
from onnxq.placement import costs, measure
from onnxq.placement.layout import simulate
from onnxq.placement.mincut import Energy
from onnxq.placement.shapes import batch1_shapes
from onnxq.runtime import make_session
from tests import builders as B
from tests.conftest import cosine, run_model

pytestmark = pytest.mark.placement  # the default objective (latency)


def test_min_cut_is_the_exact_minimum():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 7)
        e = Energy(n)
        for v in range(n):
            e.add_unary(v, rng.uniform(-3, 5), rng.uniform(-3, 5))
        for _ in range(rng.randint(0, 10)):
            if n < 2:
                break
            u, v = rng.sample(range(n), 2)
            e.add_pair(u, v, rng.uniform(-2, 0), rng.uniform(0, 3), rng.uniform(0, 3), 0.0)
        best = min(e.value(list(x)) for x in itertools.product((0, 1), repeat=n))
        assert e.value(e.minimize()) == pytest.approx(best, abs=1e-9)


def test_non_submodular_pairs_are_refused():
    with pytest.raises(ValueError, match="submodular"):
        Energy(2).add_pair(0, 1, 0.0, -1.0, -1.0, 0.0)


@pytest.mark.parametrize("target", ["vnni", "avx2", "avx512", "amx", "portable", "arm"])
def test_every_target_has_a_complete_table(target):
    table = costs.table_for_target(target)
    for kind in ("pointwise", "depthwise3", "depthwise5", "dense3"):
        for dtype in ("float", "int8"):
            rates = [table.conv_rate(kind, dtype, c) for c in (1, 3, 16, 100, 5000)]
            assert all(r > 0 for r in rates)
    assert table.gemm_rate("int8", 1) > 0 and table.overhead("float") > 0
    for op in measure.BCAST_OPS:
        assert table.bcast_nhwc(op, 4) > table.bcast_nhwc(op, 256) > 0
    for op in measure.ELEMENTWISE:
        assert table.per_element(op) > 0


@pytest.mark.parametrize("target, isa_measured", [("vnni", "vnni"), ("amx", "amx"),
                                                   ("avx512", "vnni")])
def test_measured_tables_are_used_for_the_isa_they_were_measured_on(target, isa_measured):
    """An AMX Xeon's float convs are relatively faster than a Zen 4's (its int8 pointwise gain
    is 1-2.5x at 16-64 channels, not 1.6-4.7x): it has a table of its own (docs/placement.md)."""
    table = costs.table_for_target(target)
    meta = json.loads(open(table.source).read())["meta"]
    assert meta["target"] == isa_measured and meta["measured"] == "host"
    assert meta["threads"] == 2 and meta["repeats"] >= 3


def test_interpolation_is_log_linear_and_clamped():
    points = [[1, 10.0], [4, 4.0], [16, 1.0]]
    assert costs._interp(points, 0.5) == 10.0 and costs._interp(points, 99) == 1.0
    assert costs._interp(points, 2) == pytest.approx(7.0)
    assert costs._interp(points, 4) == pytest.approx(4.0)


def test_micro_models_are_valid_and_run():
    models = [measure._conv_chain(k, 8, 6, 2, q) for k in measure.CONV_KINDS
              for q in (False, True)]
    models += [measure._gemm_chain(4, 32, 2, q) for q in (False, True)]
    models += [measure._bcast_nhwc_model(op, 8)[0] for op in measure.BCAST_OPS]
    models += list(measure._elementwise_models().values())
    models += [measure._tiny_chain(op, 3) for op in measure.NODE_OPS]
    for m in models:
        onnx.checker.check_model(m, full_check=True)
        make_session(m, threads=1).run(None, measure._feed(m))


def _matmul(rows: int, width: int) -> tuple[gs.Node, dict]:
    graph = G.import_graph(helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width])],
        [numpy_helper.from_array(np.ones((width, width), np.float32), "w")])))
    return graph.nodes[0], {"x": (rows, width), "w": (width, width), "y": (rows, width)}


def test_small_nodes_cost_their_own_measured_overhead():
    """A batch-1 product of 16 × 16 costs its node's fixed cost, not arithmetic. The one
    overhead per dtype, fitted on conv chains, had int8 below float (1.57 against 2.21 µs on
    the Zen 3) where tiny chains of the ops themselves measure QLinearMatMul at 1.27 µs against
    MatMul's 0.62, and a QuantizeLinear at 0.39, not 1.57: small loop bodies were predicted
    faster in int8 and ran 0.54-0.80x FP32."""
    from onnxq.placement.model import node_cost

    table = costs.table_for_target("avx2")
    mine = table.data["node_us"]
    assert set(mine) == set(measure.NODE_OPS)
    node, shapes = _matmul(1, 16)
    cost = node_cost(node, shapes, table)
    assert cost is not None and cost.int8_us > cost.float_us  # tiny: int8 loses
    assert cost.int8_us == pytest.approx(mine["QLinearMatMul"], abs=0.05)
    assert table.border(16, to_int8=True, int8_conv=False, float_conv=False) == pytest.approx(
        mine["QuantizeLinear"], abs=0.01)
    bare = costs.CostTable({k: v for k, v in table.data.items() if k != "node_us"}, "bare")
    assert bare.overhead("int8", "QLinearMatMul") == table.data["node_overhead_us"]["int8"]
    big, big_shapes = _matmul(1, 1024)  # GEMM-bound: int8 wins whatever the overheads
    wide = node_cost(big, big_shapes, table)
    assert wide is not None and wide.int8_us < 0.7 * wide.float_us


def test_node_overheads_measures_every_op():
    found = measure.node_overheads(threads=1, seconds=0.01)
    assert set(found) == set(measure.NODE_OPS) and all(v > 0 for v in found.values())


def test_host_table_is_measured_once_and_cached(tmp_path, monkeypatch):
    calls = []
    shipped = json.loads((costs._TABLES / "vnni.json").read_text())

    def fake(**kw):
        calls.append(kw)
        return {k: v for k, v in shipped.items() if k != "meta"}

    monkeypatch.setattr(measure, "measure_table", fake)
    first = costs.host_table(tmp_path)
    second = costs.host_table(tmp_path)
    assert len(calls) == 1 and first.source == second.source
    assert json.loads(open(first.source).read())["meta"]["measured"] == "host"


def test_unknown_objective_is_a_clear_error():
    with pytest.raises(ConfigError, match="placement.objective"):
        onnxq.quantize(B.conv_bn_relu(), [], objective="fastest")


def _quantize(model, **kw):
    return onnxq.quantize(model, B.feeds(model, batch=1, n=4, seed=1), progress=False, **kw)


@pytest.fixture(scope="module")
def lcnet():
    model = B.lcnet_shaped(image=160)
    return model, _quantize(model, target="vnni"), _quantize(model, target="vnni",
                                                             objective="size")


def test_depthwise_hardswish_cnn_keeps_early_layers_float_and_late_ones_int8(lcnet):
    model, latency, size = lcnet
    placed = latency.report.placement
    kept = {n for n, why in latency.report.skipped if why.startswith("placement")}
    assert {"stem", "block0.dw", "block0.pw"} <= kept
    assert {"block12.pw", "block11.pw", "fc"} <= {n for n, _ in latency.report.quantized}
    assert placed["kept_float"] == len(kept) and placed["float_regions"]
    assert placed["predicted_us"]["placed"] < placed["predicted_us"]["all_int8"]
    assert placed["predicted_us"]["placed"] < placed["predicted_us"]["fp32"]
    assert any(n.startswith("placement (vnni.json)") for n in latency.report.notes)
    assert not size.report.placement
    assert len(size.report.quantized) > len(latency.report.quantized)
    for feed in B.feeds(model, batch=2, n=2, seed=7):
        ref = run_model(model, feed)[0]
        assert cosine(ref, run_model(latency.model, feed)[0]) >= 0.999


def test_placement_is_deterministic(lcnet):
    model, latency, _ = lcnet
    again = _quantize(model, target="vnni")
    assert again.model.SerializeToString() == latency.model.SerializeToString()


def test_avx2_table_places_too(lcnet):
    model = lcnet[0]
    result = _quantize(model, target="avx2")
    assert result.report.placement["table"] == "avx2.json"
    for feed in B.feeds(model, batch=1, n=1, seed=3):
        assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) >= 0.99


def _tiny_conv() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4, name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [numpy_helper.from_array((0.3 * rng.standard_normal((4, 1, 3, 3))).astype(
            np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_model_int8_cannot_speed_up_stays_float_and_the_report_says_why():
    model = _tiny_conv()
    result = _quantize(model)
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["QuantizeLinear"] == 0 and ops["Conv"] == 1
    assert any("stays float" in n for n in result.report.notes)
    feed = B.feeds(model, batch=2, seed=4)[0]
    np.testing.assert_allclose(run_model(result.model, feed)[0], run_model(model, feed)[0],
                               rtol=1e-5, atol=1e-5)
    assert Counter(n.op_type for n in _quantize(model, objective="size").model.graph.node)[
        "QuantizeLinear"] >= 1


def test_transformer_matmuls_stay_int8():
    model = B.attention_block(seq=64, hidden=256, heads=4)
    result = _quantize(model, target="vnni")
    matmuls = [n for n, op in result.report.quantized if op == "MatMul"]
    assert len(matmuls) >= 4 and result.report.placement["kept_float"] == 0


def test_calibrated_ranges_fit_every_objective():
    model = B.lcnet_shaped(image=64)
    ranges = onnxq.calibrate(model, B.feeds(model, n=2, seed=1), progress=False)
    for objective in ("latency", "balanced", "size"):
        onnxq.quantize(model, ranges=ranges, progress=False, objective=objective)


def test_nodes_without_known_shapes_are_named_not_counted():
    """A data-dependent Pad (pads computed from the input's values) hides every shape after it:
    those nodes stay as planned, and the predicted times leave them out instead of counting a
    sentinel."""
    b = B._Builder(21, 17)
    seen = b.op("ReduceMax", ["input"], "peak", keepdims=0)
    one = b.op("Cast", [b.op("Greater", [seen, b.const("low", -1e9)], "finite")], "one",
               to=TensorProto.INT64)
    pads = b.op("Mul", [one, b.const("mask", [0, 0, 1, 1, 0, 0, 1, 1], np.int64)], "pads_hw")
    x = b.op("Pad", ["input", pads], "dyn_pad")
    x = b.relu(b.conv(x, "c1", 3, 8, 3, pad=0, bias=True), "r1")
    y = b.conv(b.relu(b.conv(x, "c2", 8, 8, 3, bias=True), "r2"), "c3", 8, 4, 1, bias=True)
    model = b.model("dynamic_pad", [("input", [1, 3, 16, 16])], [(y, None)])
    feeds = B.feeds(model, batch=1, n=2)
    result = onnxq.quantize(model, feeds, progress=False)
    note = next(n for n in result.report.notes if n.startswith("placement ("))
    assert "have no known shapes" in note, note
    placement = result.plan.placement
    assert placement["unknown"] >= 3
    assert placement["predicted_us"]["fp32"] < 1e6  # no 1e9 sentinel in the figures


def test_shape_arithmetic_is_folded_so_the_cost_model_sees_every_shape():
    """torch's ``chunk`` exports as Shape -> Gather -> Div -> Slice, where onnx's data
    propagation stops: with the input's dims fixed the sizes are constants, so every shape
    after them is known (a ShuffleNet-style model had 103 of 190 nodes without one). The
    caller's model is not touched."""
    b = B._Builder(22, 17)
    x = b.relu(b.conv("input", "c1", 3, 16, 3, bias=True), "r1")
    channels = b.op("Gather", [b.op("Shape", [x], "shape_of"), b.const("axis1", 1, np.int64)],
                    "channels", axis=0)
    half = b.op("Unsqueeze", [b.op("Div", [channels, b.const("two", 2, np.int64)], "half_of"),
                              b.const("ax0", [0], np.int64)], "half")
    left = b.op("Slice", [x, b.const("zero", [0], np.int64), half, b.const("ax1", [1], np.int64)],
                "left")
    y = b.conv(b.relu(b.conv(left, "c2", 8, 8, 3, bias=True), "r2"), "c3", 8, 4, 1, bias=True)
    model = b.model("chunked", [("input", [1, 3, 16, 16])], [(y, None)])
    before = model.SerializeToString()
    shapes = batch1_shapes(model, None)
    assert model.SerializeToString() == before
    assert shapes[left] == (1, 8, 16, 16) and shapes[y] == (1, 4, 16, 16), shapes
    result = onnxq.quantize(model, B.feeds(model, batch=1, n=2), progress=False)
    note = next(n for n in result.report.notes if n.startswith("placement ("))
    assert "no known shapes" not in note, note


def _frames_cnn() -> onnx.ModelProto:
    """A spectrogram CNN whose leading dim is frames, not a batch (madmom's exports): input
    [frames, bins] → Unsqueeze → [1, 1, frames, bins] → unpadded 3×3 convs and a MaxPool."""
    b = B._Builder(23, 17)
    x = b.op("Unsqueeze", ["input", b.const("axes01", [0, 1], np.int64)], "to_nchw")
    x = b.relu(b.conv(x, "c1", 1, 16, 3, pad=0, bias=True), "r1")
    x = b.pool("MaxPool", b.relu(b.conv(x, "c2", 16, 32, 3, pad=0, bias=True), "r2"), "p1", 2, 2)
    y = b.relu(b.conv(x, "c3", 32, 32, 3, pad=0, bias=True), "r3")
    y = b.op("Slice", [y, b.const("s0", [1], np.int64), b.const("s1", [-1], np.int64),
                       b.const("s2", [2], np.int64)], "trim")  # onnx aborted on a -1 dim here
    return b.model("frames_cnn", [("input", ["frames", 80])], [(y, None)])


def test_a_leading_dim_that_is_not_a_batch_takes_the_feeds_size():
    """At batch 1 (one frame) the unpadded convs give negative dims: onnxq crashed in the
    placement ("pairwise term is not submodular"). The feed's frames are used instead, and a
    dim that stays impossible is never a shape."""
    model = _frames_cnn()
    feeds = [{"input": np.random.default_rng(k).standard_normal((100, 80)).astype(np.float32)}
             for k in range(4)]
    # in a child process: onnx's shape inference aborted the process on this model
    code = ("import sys, onnx; from onnxq.placement.shapes import batch1_shapes; "
            "m = onnx.load_from_string(sys.stdin.buffer.read()); "
            "print(repr((batch1_shapes(m, {'input': (100, 80)}), batch1_shapes(m, None))))")
    child = subprocess.run([sys.executable, "-c", code], input=model.SerializeToString(),
                           capture_output=True, timeout=120)
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    shapes, unfed = eval(child.stdout.decode())  # noqa: S307 - our own child's repr
    assert all(d >= 0 for dims in shapes.values() for d in dims), shapes
    assert shapes["c3_out"] == (1, 32, 46, 36), shapes["c3_out"]
    assert shapes["trim_out"] == (1, 32, 44, 36), shapes["trim_out"]
    assert "c3_out" not in unfed and all(d >= 0 for dims in unfed.values() for d in dims)
    result = onnxq.quantize(model, feeds, progress=False)
    note = next(n for n in result.report.notes if n.startswith("placement ("))
    assert "no known shapes" not in note, note
    assert cosine(run_model(model, feeds[0])[0], run_model(result.model, feeds[0])[0]) > 0.999


def test_a_predicted_gain_inside_the_cost_model_error_keeps_the_model_float(lcnet, monkeypatch):
    """Below ``MIN_GAINS`` (1.05x for latency) the whole model stays float: zoo models
    predicted at 1.02-1.03x measured 0.96-1.03x, and int8 would cost accuracy for nothing."""
    from onnxq import placement

    model, result, _ = lcnet
    speed = result.report.placement["predicted_speedup"]
    assert speed > placement.MIN_GAINS["latency"]  # the default keeps its int8 regions
    monkeypatch.setitem(placement.MIN_GAINS, "latency", speed + 0.01)
    marginal = _quantize(model, target="vnni")
    assert Counter(n.op_type for n in marginal.model.graph.node)["QuantizeLinear"] == 0
    note = next(n for n in marginal.report.notes if n.startswith("placement ("))
    assert f"only {speed:.3f}x" in note and "inside the cost model's error" in note, note
    assert marginal.report.placement["predicted_speedup"] == 1.0


def test_a_float_placement_beside_a_dynamic_lstm_needs_no_ranges(monkeypatch):
    """Every static node placed float, the LSTM still DynamicQuantizeLSTM: nothing is left
    to calibrate but the LSTM's input check, and quantize must not call that an error."""
    from onnxq import placement
    from tests import builders_flow as F

    monkeypatch.setitem(placement.MIN_GAINS, "latency", 100.0)
    model = F.recurrent("LSTM", hidden=256)
    result = _quantize(model)
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["DynamicQuantizeLSTM"] == 1 and ops["QuantizeLinear"] == 0
    assert result.report.placement["kept_float"] == result.report.placement["candidates"] >= 1


@pytest.mark.parametrize(("target", "threshold"), [("amx", 256), ("vnni", 64), ("avx2", 256)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_narrow_lstm_stays_float_and_a_wide_one_int8(bidirectional, target, threshold):
    """DynamicQuantizeLSTM quantizes the hidden state at every step: below a width it runs
    slower than the float LSTM, and the width is the target's (AMX: 256, where hidden 128 ran
    0.73-0.97x; AVX-512 VNNI: 64, where hidden 64 and 128 ran 1.15-1.24x in geometric mean;
    AVX2 unmeasured: AMX's). The size objective still makes every LSTM int8."""
    from onnxq.placement.costs import table_for_target
    from onnxq.placement.recurrent import MIN_INT8_HIDDEN
    from tests import builders_flow as F

    assert table_for_target(target).lstm_min_int8_hidden(MIN_INT8_HIDDEN) == threshold
    for hidden in (25, 32, 128, 256):
        model = F.recurrent("LSTM", hidden=hidden, bidirectional=bidirectional)
        result = _quantize(model, target=target)
        ops = Counter(n.op_type for n in result.model.graph.node)
        wide = hidden >= threshold
        assert ops["DynamicQuantizeLSTM"] == int(wide) and ops["LSTM"] == int(not wide), hidden
        if not wide:
            assert any("LSTM" in n and "kept float" in n and f"< {threshold}" in n
                       for n in result.report.notes), result.report.notes
            assert any("hidden_size" in why for _, why in result.report.skipped), \
                result.report.skipped
    sized = _quantize(F.recurrent("LSTM", hidden=25, bidirectional=bidirectional),
                      objective="size", target=target)
    assert Counter(n.op_type for n in sized.model.graph.node)["DynamicQuantizeLSTM"] == 1


@pytest.mark.parametrize("rates", [(16000,), (16000, 8000)])
def test_narrow_lstms_in_branches_stay_float_when_a_branch_is_never_calibrated(rates):
    """Silero VAD's decoder: an LSTM per sample-rate branch of an If. When the calibration
    feeds run one branch only, the plan is made again without the other branch's nodes
    (``api.settle``); the LSTMs the placement kept float must stay float through that
    (they were all DynamicQuantizeLSTM: the new plan forgot the placement's reason)."""
    from tests import builders_flow as F

    model = F.rate_lstm(hidden=32)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((6, 1, 16)).astype(np.float32),
              "rate": np.array(rates[k % len(rates)], np.int64)} for k in range(4)]

    def count(result, op):
        return sum(n.op == op for g in G.iter_graphs(G.import_graph(result.model))
                   for n in g.nodes)

    kept = onnxq.quantize(model, feeds, progress=False, target="amx")
    assert count(kept, "LSTM") == 2 and count(kept, "DynamicQuantizeLSTM") == 0
    assert any("LSTM" in n and "kept float" in n for n in kept.report.notes)
    wide = onnxq.quantize(F.rate_lstm(hidden=64), feeds, progress=False, target="vnni")
    assert count(wide, "DynamicQuantizeLSTM") >= 1
    assert cosine(run_model(kept.model, feeds[0])[0], run_model(model, feeds[0])[0]) > 0.999


def _digits_like(opset: int = 17) -> onnx.ModelProto:
    """A one-channel stem (slow in int8) → Relu → MaxPool, then convs and a dense head."""
    b = B._Builder(5, opset)
    x = b.pool("MaxPool", b.relu(b.conv("input", "c1", 1, 8, 3, bias=True), "r1"), "p1", 2, 2)
    x = b.pool("MaxPool", b.relu(b.conv(x, "c2", 8, 16, 3, bias=True), "r2"), "p2", 2, 2)
    x = b.op("Flatten", [x], "flatten", axis=1)
    y = b.gemm(b.relu(b.gemm(x, "fc1", 16 * 7 * 7, 64), "r3"), "fc2", 64, 10, out="logits")
    return b.model("digits_like", [("input", [1, 1, 28, 28])], [(y, None)])


def _slow_max_pools(model: onnx.ModelProto) -> list[str]:
    """MaxPools onnxruntime runs as u8 NCHW after a float Conv: int8 pools whose
    QuantizeLinear reads a float Conv (Relu folded), or float pools read by a QuantizeLinear
    (onnxruntime moves it above the pool)."""
    made = {o: n for n in model.graph.node for o in n.output}
    readers = Counter(i for n in model.graph.node for i in n.input)

    def float_conv(name: str) -> bool:
        node = made.get(name)
        while node is not None and node.op_type in ("Relu", "Clip"):
            node = made.get(node.input[0])
        return (node is not None and node.op_type == "Conv"
                and getattr(made.get(node.input[0]), "op_type", "") != "DequantizeLinear")

    slow = []
    for n in model.graph.node:
        if n.op_type != "MaxPool":
            continue
        src = made.get(n.input[0])
        if src is not None and src.op_type == "DequantizeLinear":
            slow += [n.name] if float_conv(made[src.input[0]].input[0]) else []
        elif readers[n.output[0]] == 1 and any(r.op_type == "QuantizeLinear" and
                                               n.output[0] in r.input for r in model.graph.node):
            slow += [n.name] if float_conv(n.input[0]) else []
    return slow


@pytest.mark.parametrize("target", ["vnni", "avx2"])
def test_placement_never_leaves_a_u8_max_pool_after_a_float_conv(target):
    """A u8 MaxPool in onnxruntime's NCHW kernel costs about 17x the float (NCHWc) or int8
    NHWC one; the digits demo ran at 0.46x FP32 at batch 8 because of one. The placement
    prices it, whichever side of the pool the float/int8 border falls."""
    result = _quantize(_digits_like(), target=target)
    assert _slow_max_pools(result.model) == []
    assert result.report.placement["predicted_speedup"] >= 1.0
    size = _quantize(_digits_like(), target=target, objective="size")  # all int8: no float conv
    assert _slow_max_pools(size.model) == []


def _ort_nchw_u8_pools(model: onnx.ModelProto, tmp_path) -> list[str]:
    """MaxPools that onnxruntime's own optimizer leaves on u8 in the NCHW kernel: the plain
    MaxPool of its optimized graph reading a QLinear* or QuantizeLinear output (an NHWC one
    becomes com.microsoft's NhwcMaxPool, a float one NCHWc's MaxPool)."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    made = onnx.load(str(tmp_path / "optimized.onnx"))
    producer = {o: n for n in made.graph.node for o in n.output}
    return [n.name for n in made.graph.node if n.op_type == "MaxPool" and n.domain in ("",)
            and (p := producer.get(n.input[0])) is not None
            and (p.op_type.startswith("QLinear") or p.op_type == "QuantizeLinear")]


def test_layout_simulation_prices_a_residual_add_that_stays_nchw():
    """onnxruntime pushes its NHWC Transposes through a two-input int8 node only when more of
    its inputs arrive NHWC than not: an Add of an int8 conv and a float region stays NCHW, and
    the pool after it runs the u8 NCHW kernel."""
    model = B.blaze_shaped(image=64, channels=16, blocks=3)
    graph = G.import_graph(model)
    shapes = batch1_shapes(model, None)
    table = costs.table_for_target("vnni")
    nodes = [n.name for n in graph.nodes]
    every = simulate(graph, dict.fromkeys(nodes, True), shapes, table)
    assert every.us == 0.0  # all int8: NHWC from the stem to the output
    mixed = {n: n not in ("block0.dw", "block0.pw") for n in nodes}  # block 0's convs float
    found = simulate(graph, mixed, shapes, table)
    # block0's Add is a tie (float + stem), so the Adds after it stay NCHW: each int8
    # pointwise output is transposed back for its Add, each int8 conv after an Add forward,
    # and block 2's pool is slow
    assert set(found.slow_pools) == {"block2.pool"}
    readers = {r for _, r in found.edges}
    assert {"block1.add", "block1.dw", "block2.dw", "block2.add"} <= readers
    assert found.us > 0


@pytest.mark.parametrize("target", ["vnni", "avx2"])
def test_default_output_runs_no_u8_max_pool_on_the_nchw_kernel(target, tmp_path):
    """The BlazeFace pattern: the placement once kept the first blocks' convs float and the
    rest int8, predicting 1.09x FP32; onnxruntime then kept every residual Add in NCHW (one
    float input), with two u8 Transposes per block and the u8 MaxPools on the NCHW kernel:
    0.42x FP32 measured. With the layout simulated, no such pool is left."""
    model = B.blaze_shaped()
    result = _quantize(model, target=target)
    assert _ort_nchw_u8_pools(result.model, tmp_path) == []
    predicted = result.report.placement["predicted_us"]
    assert predicted["placed"] <= predicted["fp32"]


def _leaky_pool_net(widths: tuple[int, int, int], image: int = 128) -> onnx.ModelProto:
    """Conv → LeakyRelu → MaxPool three times on a one-channel image (plcmos' front end). Its
    first conv, with one input channel, is slower in int8; kept float, the int8 LeakyRelu after
    it stays NCHW and so does the u8 MaxPool after that: onnxruntime's plain NCHW pool kernel."""
    rng = np.random.default_rng(0)
    inits, nodes, x, cin = [], [], "x", 1
    for i, c in enumerate(widths, 1):
        w = rng.standard_normal((c, cin, 3, 3)) * np.sqrt(2 / (cin * 9))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(c, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                                   pads=[1] * 4),
                  helper.make_node("LeakyRelu", [f"c{i}"], [f"l{i}"], name=f"leaky{i}", alpha=0.1),
                  helper.make_node("MaxPool", [f"l{i}"], [f"p{i}"], name=f"pool{i}",
                                   kernel_shape=[2, 2], strides=[2, 2])]
        x, cin = f"p{i}", c
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"], name="gap"))
    graph = helper.make_graph(nodes, "leaky_pool",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["n", 1, image, image])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_layout_simulation_prices_a_pool_a_border_reaches_through_int8_nodes():
    """A float Conv, then an int8 LeakyRelu and an int8 MaxPool: the pool's own border term
    sees an int8 producer and charged nothing; the pool ran onnxruntime's u8 NCHW kernel
    (plcmos on the Zen 3: 7.8 ms of 23 ms in that pool, 0.79-0.86x FP32)."""
    model = _leaky_pool_net((16, 32, 64))
    graph = G.import_graph(model)
    shapes = batch1_shapes(model, None)
    names = [n.name for n in graph.nodes if n.op != "GlobalAveragePool"]
    found = simulate(graph, {n: n != "conv1" for n in names}, shapes,
                     costs.table_for_target("vnni"))
    assert set(found.slow_pools) == {"pool1"}


@pytest.mark.parametrize("target", ["vnni", "avx2"])
def test_default_output_leaves_no_u8_pool_behind_a_float_conv(target, tmp_path):
    """Before, the default for ``vnni`` left pool1 (and pool3) on the u8 NCHW kernel."""
    result = _quantize(_leaky_pool_net((16, 32, 64)), target=target)
    assert _ort_nchw_u8_pools(result.model, tmp_path) == []


def _nhwc_tanh_pool_net(frames: int = 200, bins: int = 80) -> onnx.ModelProto:
    """A TensorFlow-style spectrogram CNN (madmom's onset detector): NHWC tensors, each Conv
    and MaxPool wrapped in Transposes to NCHW, Tanh after each conv, then a dense layer over
    the frames. The convs and Tanh stay float; the QuantizeLinear for the int8 dense MatMul is
    moved by onnxruntime back through the Transpose and Reshape and the pool, up to the Tanh:
    the pool then runs the u8 NCHW kernel (0.82-0.86x FP32 on AMX)."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    inits = [numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    nodes = [n("Unsqueeze", ["x", "axis0"], ["x4"], name="add_batch"),
             n("Transpose", ["x4"], ["t0"], name="to_nchw0", perm=[0, 3, 1, 2])]
    x, cin, width = "t0", 3, bins
    for i, (c, k) in enumerate(((10, (7, 3)), (20, (3, 3))), 1):
        w = rng.standard_normal((c, cin, *k)) * np.sqrt(2 / (cin * k[0] * k[1]))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(c, np.float32), f"b{i}")]
        nodes += [n("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}"),
                  n("Transpose", [f"c{i}"], [f"h{i}"], name=f"to_nhwc{i}", perm=[0, 2, 3, 1]),
                  n("Tanh", [f"h{i}"], [f"a{i}"], name=f"tanh{i}"),
                  n("Transpose", [f"a{i}"], [f"q{i}"], name=f"pool_to_nchw{i}",
                    perm=[0, 3, 1, 2]),
                  n("MaxPool", [f"q{i}"], [f"p{i}"], name=f"pool{i}", kernel_shape=[1, 3],
                    strides=[1, 3])]
        x, cin, width = f"p{i}", c, (width - k[1] + 1) // 3
    features, hidden = cin * width, 512
    inits += [numpy_helper.from_array(np.array([-1, features], np.int64), "flat"),
              numpy_helper.from_array((rng.standard_normal((features, hidden))
                                       / np.sqrt(features)).astype(np.float32), "dense.w"),
              numpy_helper.from_array(np.zeros(hidden, np.float32), "dense.b"),
              numpy_helper.from_array((rng.standard_normal((hidden, 1))
                                       / np.sqrt(hidden)).astype(np.float32), "out.w")]
    nodes += [n("Transpose", [x], ["pn"], name="pool_to_nhwc", perm=[0, 2, 3, 1]),
              n("Reshape", ["pn", "flat"], ["f"], name="flatten"),
              n("MatMul", ["f", "dense.w"], ["d"], name="dense"),
              n("Add", ["d", "dense.b"], ["db"], name="dense_bias"),
              n("Relu", ["db"], ["dr"], name="dense_relu"),
              n("MatMul", ["dr", "out.w"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "nhwc_tanh_pool",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [frames, bins, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["vnni", "avx2", "amx"])
def test_a_pool_the_quantizer_reaches_through_transposes_is_priced(target, tmp_path):
    """The pool's pairwise terms looked only at its direct producer and reader; here both are
    Transposes, which onnxruntime's QDQ propagation crosses. madmom's onset CNN and its TCN
    beat tracker: 0.82-0.87x FP32 before, 1.27x and 1.00x after (AMX, same run)."""
    model = _nhwc_tanh_pool_net()
    feeds = [{"x": np.random.default_rng(k).standard_normal((200, 80, 3)).astype(np.float32)}
             for k in range(4)]
    result = onnxq.quantize(model, feeds, progress=False, target=target)
    assert _ort_nchw_u8_pools(result.model, tmp_path) == []


@pytest.mark.parametrize("target", ["vnni", "avx2"])
def test_the_placement_never_predicts_worse_than_all_int8_or_all_float(target):
    """Charging the slow pools of the float-stem labelling pushed its int8 nodes to float one
    round later, and the model came out all float, predicted 3412 µs against 2608 µs
    all-int8 (AVX2 table): all-int8 is a candidate of its own now."""
    result = _quantize(_leaky_pool_net((32, 96, 128)), target=target)
    predicted = result.report.placement["predicted_us"]
    assert predicted["placed"] <= min(predicted["fp32"], predicted["all_int8"]) + 1e-6


def _body_ops(model: onnx.ModelProto) -> Counter:
    loop = next(n for n in model.graph.node if n.op_type in ("Loop", "Scan"))
    return Counter(n.op_type for n in loop.attribute[0].g.node)


@pytest.mark.parametrize("target", ["vnni", "avx2"])
@pytest.mark.parametrize("kind", ["loop", "scan"])
def test_a_small_loop_cell_stays_float_per_iteration(kind, target):
    """An RNN cell of MatMuls at batch 1 does a few µs of arithmetic per iteration, and its
    int8 form adds a QuantizeLinear per input and slower small kernels: on the Zen 3, a Loop
    over a 64-wide cell ran 0.54x FP32 in int8, a 256-wide one 0.78-0.80x (0.80x on the Zen 4).
    Before, bodies were never placed: every cell was int8. Each body is placed per iteration
    now, and the report says so; objective=size still quantizes it."""
    from tests import builders_flow as F

    model = (F.loop_rnn if kind == "loop" else F.scan_rnn)(features=32, hidden=64)
    feeds = F.sequence_feeds(model, n=4, batch=1, steps=12)
    result = onnxq.quantize(model, feeds, progress=False, target=target)
    body = _body_ops(result.model)
    assert "QuantizeLinear" not in body and "DequantizeLinear" not in body, body
    note = next(n for n in result.report.notes if f"{kind.title()} 'time_{kind}'" in n)
    assert note.startswith(f"placement ({target}.json, {kind.title()} 'time_{kind}', per "
                           "iteration)"), note
    assert result.report.placement["bodies"][0]["kept_float"] == 4
    sized = onnxq.quantize(model, feeds, progress=False, target=target, objective="size")
    assert _body_ops(sized.model)["QuantizeLinear"] >= 2


@pytest.mark.parametrize("target", ["vnni", "avx2"])
def test_a_wide_loop_cell_stays_int8(target):
    """A 1024-wide cell is GEMM-bound: int8 measured 1.49x FP32 on the Zen 3 (all-int8); the
    body keeps its int8 MatMuls."""
    from tests import builders_flow as F

    model = F.loop_rnn(features=80, hidden=1024)
    feeds = F.sequence_feeds(model, n=2, batch=1, steps=4)
    result = onnxq.quantize(model, feeds, progress=False, target=target)
    loop = next(n for n in result.model.graph.node if n.op_type == "Loop")
    body = loop.attribute[0].g
    producers = {o: n.op_type for n in body.node for o in n.output}
    matmuls = [n for n in body.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2
    for node in matmuls:  # both operands dequantized: an int8 product
        assert [producers.get(i) for i in node.input] == ["DequantizeLinear"] * 2, node.name
    (placed,) = result.report.placement["bodies"]
    assert placed["predicted_speedup"] > 1.3


def _volumetric(cin: int, channels: list[int]) -> onnx.ModelProto:
    """3×3×3 convs with Relus on a [1, cin, 4, 20, 20] clip."""
    b = B._Builder(31, 17)
    x, c = "input", cin
    for i, cout in enumerate(channels):
        w = b.param(f"c{i}.weight", b.normal((cout, c, 3, 3, 3), math.sqrt(2.0 / (c * 27))))
        x = b.relu(b.op("Conv", [x, w, b.param(f"c{i}.bias", b.normal((cout,), 0.1))],
                        f"c{i}", kernel_shape=[3, 3, 3], pads=[1] * 6), f"r{i}")
        c = cout
    return b.model("volumetric", [("input", [1, cin, 4, 20, 20])], [(x, None)])


@pytest.mark.parametrize("target", ["amx", "vnni", "avx2"])
def test_a_volumetric_conv_is_priced_as_one(target):
    """onnxruntime's int8 Conv over three spatial dims builds its im2col buffer in one thread:
    with few channels it ran 0.15-0.46x the float one (invisible-watermark's RivaGAN encoder,
    1×11×11 kernels, 0.74x FP32 in all). Priced as a volumetric conv, such a layer stays float
    while a wide one is int8; the same layers in 2-D would all be int8."""
    assert costs.conv_kind(gs.import_onnx(_volumetric(8, [16])).nodes[0], 8) == "dense3.nd"
    table = costs.table_for_target(target)
    assert table.conv_rate("dense3.nd", "int8", 11) > table.conv_rate("dense3.nd", "float", 11)
    assert table.conv_rate("dense3", "int8", 11) < 1.6 * table.conv_rate("dense3", "float", 11)
    model = _volumetric(8, [16, 64, 64])
    result = _quantize(model, target=target)
    int8 = {name for name, op in result.report.quantized if op == "Conv"}
    assert "c0" not in int8 and "c2" in int8, (target, int8)
    feed = B.feeds(model, batch=1, seed=3)[0]
    assert cosine(run_model(result.model, feed)[0], run_model(model, feed)[0]) > 0.99


def _bn_after_relu(channels: list[int]) -> onnx.ModelProto:
    """Keras-style blocks (tempo-cnn): 1×5 Conv → Relu → BatchNorm as a per-channel Mul and
    Add (it cannot fold into the Conv past the Relu) → MaxPool over 40×128 spectrogram frames."""
    b = B._Builder(41, 17)
    x, c = "input", 1
    for i, cout in enumerate(channels):
        w = b.param(f"c{i}.weight", b.normal((cout, c, 1, 5), math.sqrt(2.0 / (c * 5))))
        y = b.relu(b.op("Conv", [x, w, b.param(f"c{i}.bias", b.normal((cout,), 0.1))], f"c{i}",
                        kernel_shape=[1, 5], pads=[0, 2, 0, 2]), f"r{i}")
        y = b.op("Mul", [y, b.param(f"s{i}", b.uniform((1, cout, 1, 1), 0.5, 1.5))], f"bn{i}_mul")
        y = b.op("Add", [y, b.param(f"t{i}", b.normal((1, cout, 1, 1), 0.1))], f"bn{i}_add")
        x, c = b.pool("MaxPool", y, f"p{i}", 1, 2) if i % 2 else y, cout
    return b.model("bn_after_relu", [("input", [1, 1, 40, 128])], [(x, None)])


@pytest.mark.parametrize("target", ["amx", "vnni", "avx2"])
def test_a_per_channel_scale_of_few_channels_is_priced_in_nhwc(target):
    """After an int8 Conv, onnxruntime runs a per-channel QLinearMul / QLinearAdd on NHWC data,
    looping over channel runs: 3-7 ns per element at 4-8 channels against 0.25 in NCHW
    (tempo-cnn's deeptemp: 0.71x FP32 with them int8). Priced by channels, no such Mul of 16
    channels stays int8 behind an int8 Conv (all of them did before)."""
    for op in measure.BCAST_OPS:
        assert costs.table_for_target(target).bcast_nhwc(op, 8) > 4 * costs.table_for_target(
            target).per_element("QLinearMul.bcast" if op == "QLinearMul" else op)
    model = _bn_after_relu([16, 16, 32, 32])
    result = _quantize(model, target=target)
    int8 = dict(result.report.quantized)
    assert not [i for i in (0, 1) if f"c{i}" in int8 and f"bn{i}_mul" in int8], (target, int8)
    feed = B.feeds(model, batch=1, seed=3)[0]
    assert cosine(run_model(result.model, feed)[0], run_model(model, feed)[0]) > 0.99


def _conv_node(cin: int, cout: int, kernel: tuple[int, int]) -> tuple[gs.Node, dict]:
    w = gs.Constant("w", np.zeros((cout, cin, *kernel), np.float32))
    x, y = gs.Variable("x", np.float32), gs.Variable("y", np.float32)
    node = gs.Node("Conv", "conv", {"kernel_shape": list(kernel)}, inputs=[x, w], outputs=[y])
    return node, {"x": (1, cin, 128, 62), "w": (cout, cin, *kernel), "y": (1, cout, 128, 62)}


@pytest.mark.parametrize("target", ["amx", "vnni", "avx2"])
def test_a_conv_with_fewer_than_16_outputs_is_priced_off_the_fast_int8_kernel(target):
    """onnxruntime's fast int8 conv needs 16 output channels or more; below, im2col + a GEMM
    of K = inputs × taps. swift-f0's 12 → 12 7×1 and 3×1 convs ran 0.5x the float ones, where
    reading the tables between their 8- and 16-channel points said int8 was 1.3-1.5x faster.
    Such a conv (K under 128) is now read at the 8-channel point: float wins, on every table.
    A 32-output one, and madmom's 30 → 10 3×3 (K 270, faster in int8), keep their gain."""
    from onnxq.placement.model import node_cost

    table = costs.table_for_target(target)
    for kernel in ((3, 3), (7, 1)):
        narrow = node_cost(*_conv_node(12, 12, kernel), table)
        wide = node_cost(*_conv_node(32, 32, kernel), table)
        assert narrow is not None and wide is not None
        assert narrow.int8_us > narrow.float_us, (kernel, narrow)
        assert wide.int8_us < wide.float_us, (kernel, wide)
    deep = node_cost(*_conv_node(30, 10, (3, 3)), table)
    assert deep is not None and deep.int8_us < deep.float_us, deep
