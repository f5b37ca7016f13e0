"""``quantize`` checks its INT8 model against FP32 on kept calibration feeds and warns, naming
the output and the figure, when one disagrees (``onnxq.self_check``). The model that needs it:
found by the fuzz suite, a conv loop whose pooled output is a small residual of its values
(every range right, cosine 0.93 against FP32) — no rule predicted it, so onnxq measures."""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import self_check
from onnxq.cli import main
from onnxq.kernels.isa import host_target, target_of
from tests import builders as B
from tests.conftest import cosine, run_model

C, S = 32, 16  # channels, spatial size


def _residual_loop(name: str = "") -> onnx.ModelProto:
    """x → 1x1 Conv → Loop ×2 {1x1 Conv → 1x1 Conv} → GlobalAveragePool → Gemm: with the
    feeds' zero-mean texture, the pooled values are a small residual of the feature maps."""
    rng = np.random.default_rng(0)
    inits = {"w0": rng.standard_normal((C, 3, 1, 1)) / 2,
             "w1": rng.standard_normal((2 * C, C, 1, 1)) / np.sqrt(C),
             "w2": rng.standard_normal((C, 2 * C, 1, 1)) / np.sqrt(2 * C),
             "w4": rng.standard_normal((C, 5)) / np.sqrt(C), "w5": np.zeros(5),
             "trips": np.array(2, np.int64)}
    body = helper.make_graph(
        [helper.make_node("Conv", ["h", "w1"], ["a"], name=name or "c1"),
         helper.make_node("Conv", ["a", "w2"], ["b"], name=name or "c2"),
         helper.make_node("Identity", ["cond"], ["cond_out"], name=name or "keep")], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, ["n", C, S, S])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", C, S, S])])
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h0"], name=name or "c0"),
             helper.make_node("Loop", ["trips", "", "h0"], ["pooled_in"], name=name or "loop",
                              body=body),
             helper.make_node("GlobalAveragePool", ["pooled_in"], ["g"], name=name or "gap"),
             helper.make_node("Flatten", ["g"], ["f"], name=name or "flatten"),
             helper.make_node("Gemm", ["f", "w4", "w5"], ["y"], name=name or "gemm")]
    graph = helper.make_graph(
        nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, S, S])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k)
         for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _feeds(n: int = 4) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):  # zero-mean texture per channel, plus a small level
        t = rng.standard_normal((2, 3, S, S))
        t += 0.02 * rng.uniform(-1, 1, (2, 3, 1, 1)) - t.mean(axis=(2, 3), keepdims=True)
        out.append({"x": t.astype(np.float32)})
    return out


def test_a_wrong_model_is_reported_with_its_figure(caplog):
    model, feeds = _residual_loop(), _feeds()
    with caplog.at_level(logging.WARNING, logger="onnxq"):
        result = onnxq.quantize(model, feeds, progress=False, target="portable")
    worst = min(cosine(run_model(model, f)[0], run_model(result.model, f)[0]) for f in feeds)
    assert worst < 0.95  # int8 cannot carry this residual: the check is what tells the user
    found = result.report.self_check
    assert found["below"] == ["y"] and found["feeds"] == 4
    assert abs(found["outputs"]["y"]["worst_cosine"] - worst) < 1e-3
    assert any("self-check" in n and "'y'" in n and "onnxq tune" in n
               for n in result.report.notes)
    assert "self-check" in caplog.text
    assert result.report.to_dict()["self_check"] == found


def test_a_good_model_passes_quietly(caplog):
    model = B.residual_block()
    feeds = B.feeds(model, n=6)
    with caplog.at_level(logging.WARNING, logger="onnxq"):
        result = onnxq.quantize(model, feeds, progress=False)
    found = result.report.self_check
    assert found["below"] == [] and found["feeds"] == 6
    assert all(v["worst_cosine"] >= 0.99 > self_check.FLOOR for v in found["outputs"].values())
    assert "self-check" not in caplog.text


def test_models_with_repeated_node_names_are_checked():
    model, feeds = _residual_loop(name="same"), _feeds(2)
    found = onnxq.quantize(model, feeds, progress=False, target="portable").report.self_check
    assert "skipped" not in found and found["feeds"] == 2


def test_feeds_past_the_bound_are_not_kept(monkeypatch):
    monkeypatch.setattr(self_check, "MAX_BYTES", 16)
    model = B.residual_block()
    result = onnxq.quantize(model, B.feeds(model, n=2), progress=False)
    assert "no calibration feed was kept" in result.report.self_check["skipped"]


def test_cli_prints_the_warning_and_succeeds(tmp_path, caplog):
    src, data = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(_residual_loop(), src)
    feeds = _feeds()
    np.savez(data, x=np.concatenate([f["x"] for f in feeds]))
    with caplog.at_level(logging.WARNING, logger="onnxq"):  # the CLI logs to stderr
        code = main(["quantize", str(src), str(tmp_path / "q.onnx"), "--calib-data",
                     str(data), "--calib-batch", "2", "--target", "portable", "--quiet"])
    assert code == 0
    assert "self-check" in caplog.text and "'y'" in caplog.text


def test_models_over_the_weight_bound_are_not_checked(monkeypatch):
    """A model's float weights would be held in a session beside the INT8 model: above the
    bound the check is skipped (and says why), so quantize keeps its memory bound."""
    monkeypatch.setattr(self_check, "MAX_WEIGHT_BYTES", 1024)
    model = B.residual_block()
    found = onnxq.quantize(model, B.feeds(model, n=2), progress=False).report.self_check
    assert "GiB" in found["skipped"] and "onnxq compare" in found["skipped"]


def test_a_score_output_is_judged_over_all_feeds():
    """An output with one value per feed (a score, a flag): on a feed where it is near 0,
    int8 rounds it to 0 and its own cosine reads 0 (or -1 on a sign flip), which says
    nothing; over all feeds the scores agree (face mesh's face flag gave a false warning)."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="score")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])],
        initializer=[numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    values = [0.9, -0.7, 1e-4, 0.5, -1.0, 0.3]
    feeds = [{"x": np.full((1, 1, 1, 1), v, np.float32)} for v in values]
    result = onnxq.quantize(model, feeds, progress=False, objective="size")
    assert ("score", "Conv") in result.report.quantized
    got = result.report.self_check
    assert got["below"] == [] and got["outputs"]["y"]["worst_cosine"] > 0.999


def test_a_model_given_by_path_is_checked_from_its_skeleton(tmp_path, monkeypatch):
    """For a path, ``quantize`` keeps the model's graph without its weights (read at the start)
    and the check's session reads the file: the float weights are never held twice."""
    model, feeds = _residual_loop(), _feeds()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    light = self_check.skeleton(src)
    assert self_check.weight_bytes(light) == self_check.weight_bytes(model) > 0
    big = B.lcnet_shaped(image=32)
    onnx.save(big, tmp_path / "big.onnx")
    slim = self_check.skeleton(tmp_path / "big.onnx")
    large = [t for t in slim.graph.initializer if math.prod(t.dims) > self_check.KEPT_VALUES]
    assert large and all(not t.raw_data and not t.float_data for t in large)
    small = [t for t in slim.graph.initializer if math.prod(t.dims) <= self_check.KEPT_VALUES]
    for t in small:  # shape constants keep their values
        original = next(w for w in big.graph.initializer if w.name == t.name)
        assert np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(original))
    loads = []
    real_load = onnx.load

    def counting_load(path, *args, **kwargs):
        loads.append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(onnx, "load", counting_load)
    found = onnxq.quantize(src, feeds, progress=False, target="portable").report.self_check
    assert found["below"] == ["y"] and found["feeds"] == 4  # the same verdict as in memory
    assert loads.count(str(src)) == 1  # the skeleton; the check does not parse it again


def test_an_output_of_another_shape_is_named_as_such():
    """A decoder loop that stops at another step gives an output of another shape; it was
    reported as "cosine 0.0000", which reads as a broken model."""
    from onnxq import range_choice

    def model(nodes):
        return helper.make_model(helper.make_graph(
            nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
            opset_imports=[helper.make_opsetid("", 17)])

    fp32 = model([helper.make_node("Identity", ["x"], ["y"])])
    longer = model([helper.make_node("Concat", ["x", "x"], ["y"], axis=0)])
    feeds = [{"x": np.random.default_rng(k).standard_normal((2, 64)).astype(np.float32)}
             for k in range(3)]
    found = self_check.check(fp32, longer, feeds)
    assert found["below"] == ["y"] and found["outputs"]["y"] == {"other_shape": 3}
    line = self_check.warning(found)
    assert "'y' another shape than FP32's on 3 of 3 feed(s)" in line and "cosine" not in line
    assert range_choice.error(found) == 1.0


def test_the_check_computes_what_the_target_cpu_computes():
    """A model for the other kind of CPU than this one (u8 x s8 pairs saturating in int16 on
    AVX2, exact with VNNI) is checked with its int8 products as that CPU computes them, so
    the check, and the ``auto`` calibrator's choice made from it, do not depend on the machine
    quantizing; with 7-bit weights both kinds compute the same and this CPU runs it."""
    from onnxq.emulate import EmulatedSession

    other = "vnni" if target_of(host_target()).saturates else "avx2"
    model = B.residual_block()
    feeds = B.feeds(model, n=4, seed=3)
    result = onnxq.quantize(model, feeds, progress=False, objective="size", target=other,
                            reduce_range=False, calibrator="minmax")
    found = result.report.self_check
    assert found["emulated"] == other, found
    session = EmulatedSession(result.model, other)
    want = [cosine(run_model(model, f)[0], session.run(None, f)[0]) for f in feeds]
    (out,) = found["outputs"].values()
    assert out["mean_cosine"] == round(float(np.mean(want)), 6)
    seven = onnxq.quantize(model, feeds, progress=False, objective="size", target=other,
                           reduce_range=True, calibrator="minmax")
    assert "emulated" not in seven.report.self_check


def _matmul_integer(w: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
         helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["y"])], "mmi",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, w.shape[0]])],
        [helper.make_tensor_value_info(n, t, None) for n, t in
         (("y", TensorProto.INT32), ("xq", TensorProto.UINT8), ("xz", TensorProto.UINT8))],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_the_exact_session_computes_8_bit_products_exactly_on_every_cpu():
    """``make_session(exact_int8=True)``: full-range s8 weights against bright u8 inputs, whose
    pairs overflow int16 in ``vpmaddubsw``, give the exact integer products on this CPU, VNNI
    or not (without the option a Zen 3 was off by up to 28468). ``inspect`` counts such
    run-time-quantized weights among those that can saturate."""
    from onnxq.emulate import full_range_weights
    from onnxq.runtime import make_session

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (64, 32)).astype(np.int8)
    model = _matmul_integer(w)
    x = rng.uniform(0, 1, (4, 64)).astype(np.float32)
    y, xq, xz = make_session(model, exact_int8=True).run(None, {"x": x})
    assert np.array_equal(y, (xq.astype(np.int64) - int(xz)) @ w.astype(np.int64))
    assert full_range_weights(model) == ["w"]
    assert full_range_weights(_matmul_integer(np.clip(w, -63, 63))) == []
