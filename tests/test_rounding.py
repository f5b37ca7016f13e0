"""Hessian-based weight rounding (recipe.rounding = "gptq"): input statistics, the rounding
itself, and the end-to-end recipe."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxq
from onnxq import api
from onnxq import graph as G
from onnxq.config import QuantConfig
from onnxq.recovery.grams import Geometry, InputGrams, patches
from onnxq.recovery.rounding import gptq, output_error
from onnxq.runtime import make_session
from tests import builders as B


def _conv_model(w: np.ndarray, **attrs) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", 1, None)],
                              [helper.make_tensor_value_info("y", 1, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


CONVS = [  # (input shape, weight shape, attributes)
    ((2, 4, 9, 11), (6, 4, 3, 3), dict(strides=[2, 1], pads=[1, 0, 2, 1])),
    ((1, 6, 10, 10), (6, 1, 3, 3), dict(group=6, pads=[1, 1, 1, 1])),          # depthwise
    ((2, 4, 12, 12), (8, 2, 3, 3), dict(group=2, dilations=[2, 2], strides=[2, 2])),
    ((1, 4, 7, 8), (5, 4, 3, 2), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((3, 5, 17), (7, 5, 4), dict(strides=[3], pads=[2, 1])),                    # 1-D
]


@pytest.mark.parametrize("shapes", CONVS, ids=["strided", "depthwise", "grouped-dilated",
                                                 "same-upper", "1d"])
def test_patches_are_what_the_weight_multiplies(shapes):
    """W (as [groups, rows, K]) times the patches is exactly the convolution's output."""
    x_shape, w_shape, attrs = shapes
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    y = make_session(_conv_model(w, **attrs)).run(None, {"x": x})[0]
    n = len(w_shape) - 2
    pads = attrs.get("pads", [0] * 2 * n)
    g = Geometry("conv", int(np.prod(w_shape[1:])), attrs.get("group", 1), tuple(w_shape[2:]),
                 tuple(attrs.get("strides", [1] * n)), tuple(attrs.get("dilations", [1] * n)),
                 tuple((pads[i], pads[i + n]) for i in range(n)),
                 attrs.get("auto_pad", "NOTSET"))
    cols = patches(x, g, max_rows=10 ** 9)
    groups = g.groups
    got = np.matmul(w.reshape(groups, w_shape[0] // groups, -1).astype(np.float64), cols)
    want = np.moveaxis(y, 1, 0).reshape(groups, w_shape[0] // groups, -1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert patches(x, g, max_rows=7).shape[2] == 7  # sampled, evenly
    assert patches(x[:, :1], g) is None  # the wrong channel count is refused, not guessed


def test_row_patches_and_shared_statistics():
    """A MatMul's vectors are its input's rows; layers reading one tensor with one geometry
    share one H, which is E[x xᵀ] over every row seen."""
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 5, 8)) for _ in range(3)]

    class Sink:
        name = "sink"

        def observe(self, *a, **k):
            pass

        def compute(self):
            return {}

    g = Geometry("rows", 8)
    grams = InputGrams(Sink(), {"q": ("x", g), "k": ("x", g), "v": ("y", Geometry("rows", 3))})
    for x in xs:
        grams.observe("x", x)
    got = grams.grams()
    rows = np.concatenate([x.reshape(-1, 8) for x in xs])
    np.testing.assert_allclose(got["q"][0], rows.T @ rows / len(rows), rtol=1e-12)
    assert got["q"] is got["k"] or np.array_equal(got["q"], got["k"])
    assert "v" not in got  # never observed: no statistics, no guess
    small = InputGrams(Sink(), {"q": ("x", g), "big": ("z", Geometry("rows", 64))},
                       max_bytes=8 * 8 * 8)
    assert small.left_out == ["big"]


def _correlated(groups: int, k: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((groups, k, n))
    x += 0.8 * x[:, :1]  # correlated features, as real activations are
    x[:, : k // 4] *= 4.0
    return np.matmul(x, np.swapaxes(x, 1, 2)) / n


@pytest.mark.parametrize("levels", [127, 63])
def test_gptq_lowers_the_output_error_on_the_same_grid(levels):
    rng = np.random.default_rng(2)
    for groups, rows, k in ((1, 24, 300), (8, 2, 9)):  # dense (two blocks), depthwise-like
        w = rng.standard_normal((groups, rows, k))
        h = _correlated(groups, k, 4 * k, seed=3)
        scale = np.abs(w).max(axis=2) / levels
        q = gptq(w, h, scale, levels)
        nearest = np.clip(np.rint(w / scale[..., None]), -levels, levels)
        assert q.dtype == np.int64 and np.abs(q).max() <= levels
        # every row's abs-max stays on the grid's edge, so the scale is unchanged
        np.testing.assert_array_equal(np.abs(q).max(axis=2), levels)
        s = scale[..., None]
        before, after = output_error(nearest * s - w, h), output_error(q * s - w, h)
        assert after < 0.75 * before, (before, after)
        assert np.array_equal(q, gptq(w, h, scale, levels))  # deterministic


def test_gptq_leaves_unreached_columns_at_nearest():
    """A column no calibration input reaches (zero in H) gets round-to-nearest."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((1, 6, 10))
    h = _correlated(1, 10, 50, seed=5)
    h[:, 3, :] = h[:, :, 3] = 0.0
    scale = np.abs(w).max(axis=2) / 127
    q = gptq(w, h, scale, 127)
    np.testing.assert_array_equal(q[..., 3], np.clip(np.rint(w[..., 3] / scale), -127, 127))


def _mse(model, reference, feeds):
    a = make_session(reference)
    b = make_session(model)
    return float(np.mean([np.mean((a.run(None, f)[0] - b.run(None, f)[0]) ** 2)
                          for f in feeds]))


@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_rounding_recipe_end_to_end(fmt):
    """gptq rounding changes the int8 weights, keeps them on onnxq's grid (the same scales)
    and lowers the model's output error; the report says what it did."""
    model = B.depthwise_hardswish()
    feeds = B.feeds(model, batch=4, n=8, seed=7)
    common = dict(progress=False, objective="size", format=fmt, bias_correction="off")
    nearest = onnxq.quantize(model, feeds, rounding="nearest", **common)
    rounded = onnxq.quantize(model, feeds, rounding="gptq", **common)
    info = rounded.report.recovery["rounding"]
    assert info["mode"] == "gptq" and info["layers"] >= 5 and info["mean_error_ratio"] < 1
    assert _mse(rounded.model, model, feeds) < _mse(nearest.model, model, feeds)
    cfg = api.resolve(QuantConfig().with_overrides(objective="size"))
    levels = 63 if api.types_for(cfg)[2] else 127

    def int8_weights(m):
        return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer
                if i.data_type in (onnx.TensorProto.INT8,) and len(i.dims) >= 2}

    a, b = int8_weights(nearest.model), int8_weights(rounded.model)
    assert a and len(a) == len(b)
    # depthwise convs (shape[1] == 1 here) keep 8 bits on every target: exact everywhere
    assert all(np.abs(v.astype(int)).max() == (127 if v.shape[1] == 1 else levels)
               for v in b.values())
    assert sum(int(np.sum(x != y)) for x, y in zip(a.values(), b.values(), strict=True)) > 0
    assert any("weight rounding" in n or "rounding" in n for n in rounded.report.notes)


def test_rounding_with_bias_correction_and_matmuls_is_deterministic():
    model = B.matmul_add_3d()
    before = model.SerializeToString(deterministic=True)
    feeds = B.feeds(model, batch=4, n=6, seed=8)
    runs = [onnxq.quantize(model, feeds, progress=False, objective="size", rounding="gptq")
            for _ in range(2)]
    assert runs[0].model.SerializeToString(deterministic=True) == \
        runs[1].model.SerializeToString(deterministic=True)
    assert runs[0].report.recovery["rounding"]["layers"] == 2
    assert "bias_correction" in runs[0].report.recovery
    assert model.SerializeToString(deterministic=True) == before


def test_rounding_stops_at_the_time_budget():
    model = B.depthwise_hardswish()
    feeds = B.feeds(model, batch=2, n=2, seed=9)
    result = onnxq.quantize(model, feeds, progress=False, objective="size", rounding="gptq",
                            recipe_budget_s=1e-9)
    assert any("weight rounding stopped at the time budget" in n for n in result.report.notes)
    graph = G.import_graph(result.model)
    assert graph.nodes  # still a complete, valid model
    onnx.checker.check_model(result.model)


def _normalized_input_cnn() -> onnx.ModelProto:
    """(x − mean) / std → Pad → Conv → Relu → Conv → Relu → Conv: the first conv reads the
    model's data through constant preprocessing; the others do not."""
    b = B._Builder(11, 17)
    x = b.op("Sub", ["input", b.const("mean", np.full((1, 3, 1, 1), 0.45, np.float32))], "sub")
    x = b.op("Div", [x, b.const("std", np.full((1, 3, 1, 1), 0.22, np.float32))], "div")
    x = b.op("Pad", [x, b.const("pads", [0, 0, 1, 1, 0, 0, 1, 1], np.int64)], "pad")
    x = b.relu(b.conv(x, "stem", 3, 8, 3, pad=0, bias=True), "r1")
    x = b.relu(b.conv(x, "c2", 8, 8, 3, bias=True), "r2")
    y = b.conv(x, "c3", 8, 4, 1, bias=True)
    return b.model("normalized", [("input", ["batch", 3, 12, 12])], [(y, ["batch", 4, 12, 12])])


def test_data_layers_float_keeps_only_the_layer_reading_the_data_float():
    model = _normalized_input_cnn()
    rng = np.random.default_rng(12)
    feeds = [{"input": (rng.integers(0, 256, (2, 3, 12, 12)) / 255).astype(np.float32)}
             for _ in range(4)]
    common = dict(progress=False, objective="size")
    int8 = onnxq.quantize(model, feeds, **common)
    kept = onnxq.quantize(model, feeds, data_layers="float", **common)
    assert "stem" in dict(int8.report.quantized)
    assert "stem" not in dict(kept.report.quantized)
    assert {"c2", "c3"} <= set(dict(kept.report.quantized))
    why = dict(kept.report.skipped)["stem"]
    assert "reads the model's data" in why and "'input'" in why
    ops = {n.name: n.op_type for n in kept.model.graph.node}
    assert ops["stem"] == "Conv"  # float input: nothing quantizes the data
    producers = {o: n.op_type for n in kept.model.graph.node for o in n.output}
    stem = next(n for n in kept.model.graph.node if n.name == "stem")
    assert producers.get(stem.input[0]) != "DequantizeLinear"
    assert _mse(kept.model, model, feeds) < _mse(int8.model, model, feeds)
    # calibrate() covers every node whatever the recipe: its ranges serve both settings
    ranges = onnxq.calibrate(model, feeds, progress=False, data_layers="float")
    again = onnxq.quantize(model, None, ranges=ranges, **common)
    assert "stem" in dict(again.report.quantized)


def test_a_model_whose_only_layer_reads_the_data_is_still_quantized():
    b = B._Builder(13, 17)
    y = b.conv("input", "only", 3, 4, 3, bias=True)
    model = b.model("one", [("input", ["batch", 3, 8, 8])], [(y, ["batch", 4, 8, 8])])
    feeds = B.feeds(model, batch=2, n=2)
    result = onnxq.quantize(model, feeds, progress=False, objective="size",
                            data_layers="float")
    assert "only" in dict(result.report.quantized)
