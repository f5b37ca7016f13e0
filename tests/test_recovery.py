"""Accuracy recovery (onnxq.recovery): bias correction, fast and full."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxq
from onnxq import api, recovery
from onnxq import graph as G
from onnxq.cli import main
from onnxq.config import QuantConfig, RecipeConfig, recipe_overrides
from onnxq.errors import ConfigError
from onnxq.passes.bias import AddZeroBiasPass, SetBiasPass
from onnxq.pipeline import Pipeline
from onnxq.recovery.bias_correction import channel_mean, fast_shifts, levels
from onnxq.recovery.targets import targets
from onnxq.runtime import make_session
from tests import builders as B


def _prepared(model, **overrides):
    cfg = api.resolve(QuantConfig().with_overrides(objective="size", **overrides))
    fused, plan = api.prepare(model, cfg)
    return cfg, fused.model, plan


def _outputs(model: onnx.ModelProto, names, feeds, optimize=True):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                          for n in names if n not in have)
    session = make_session(m, optimize=optimize)
    return [session.run(list(names), f) for f in feeds]


def _one_conv(node: onnx.NodeProto, w: np.ndarray) -> onnx.ModelProto:
    one = helper.make_node("Conv", ["x", "w"], ["y"], **{
        a.name: helper.get_attribute_value(a) for a in node.attribute})
    graph = helper.make_graph([one], "c", [helper.make_tensor_value_info("x", 1, None)],
                              [helper.make_tensor_value_info("y", 1, None)],
                              [onnx.numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_fast_shift_cancels_the_weight_error_exactly():
    """op(E[x], Wq - W) is the mean output error of int8 weights: strided, padded, grouped
    (depthwise) convs included. Checked against running each conv with Wq and W."""
    model = B.depthwise_hardswish()
    cfg, prepared, plan = _prepared(model)
    graph = G.import_graph(prepared)
    found = [t for t in targets(graph, plan) if t.op == "Conv"]
    assert {t.node for t in found} >= {"conv1", "dwconv2", "dwconv4"}
    feeds = B.feeds(model, batch=2, n=6, seed=3)
    xs = list(zip(*_outputs(prepared, [t.x for t in found], feeds), strict=True))
    means = {t.x: np.concatenate(x).mean(axis=0) for t, x in zip(found, xs, strict=True)}
    quantize = recovery.fake_quant_weight(*api.types_for(cfg)[1:])
    shifts = fast_shifts(graph, found, means, quantize)
    nodes = {n.name: n for n in prepared.graph.node}
    for t, x in zip(found, xs, strict=True):
        w = G.constant_value(next(n for n in graph.nodes if n.name == t.node).inputs[1])
        run = {k: make_session(_one_conv(nodes[t.node], v)) for k, v in
               (("fp", w), ("q", quantize(w, t.axis, t.exact)))}
        got = {k: np.mean([channel_mean(s.run(None, {"x": xi})[0], 1) for xi in x], axis=0)
               for k, s in run.items()}
        error = got["q"] - got["fp"]
        assert np.abs(error).max() > 1e-5, t.node  # int8 weights do shift the mean
        np.testing.assert_allclose(shifts[t.node], -error, atol=2e-5, rtol=1e-3)


def _mean_errors(fp32: onnx.ModelProto, int8: onnx.ModelProto, names, feeds):
    """Per tensor: max |per-channel mean of INT8 - of FP32| over the feeds."""
    a = _outputs(fp32, names, feeds)
    b = _outputs(int8, names, feeds, optimize=None)
    out = []
    for i in range(len(names)):
        ma = np.mean([channel_mean(r[i], 1) for r in a], axis=0)
        mb = np.mean([channel_mean(r[i], 1) for r in b], axis=0)
        out.append(float(np.abs(ma - mb).max()))
    return out


def _clipped_chain(seed: int = 0) -> onnx.ModelProto:
    """Conv → Relu → Conv → Relu → Conv with heavy-tailed activations: a clipping calibrator
    biases the int8 activations, an error only a data-driven correction can see."""
    b = B._Builder(seed, 17)
    x = b.relu(b.conv("input", "c1", 3, 16, 3, bias=True), "r1")
    x = b.relu(b.conv(x, "c2", 16, 16, 3, bias=True), "r2")
    y = b.conv(x, "c3", 16, 8, 1, bias=True)
    return b.model("clipped", [("input", ["batch", 3, 12, 12])], [(y, ["batch", 8, 12, 12])])


def _heavy_feeds(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [{"input": (rng.standard_t(2.5, size=(2, 3, 12, 12))).astype(np.float32)}
            for _ in range(n)]


@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_full_bias_correction_recovers_what_fast_cannot(fmt):
    """Percentile ranges clip the heavy tail: the activations' int8 mean is biased. Fast
    correction sees only the weights; full correction, layer by layer on the quantized
    upstream, brings every layer's output mean back to FP32's (on held-out feeds too)."""
    model = _clipped_chain()
    calib, held_out = _heavy_feeds(16, 1), _heavy_feeds(16, 2)
    results = {bc: onnxq.quantize(model, calib, progress=False, objective="size",
                                  calibrator="percentile", percentile=99.0, format="qdq",
                                  bias_correction=bc) for bc in ("off", "fast", "full")}
    out = model.graph.output[0].name
    errors = {bc: _mean_errors(model, r.model, [out], held_out)[0]
              for bc, r in results.items()}
    assert errors["full"] < 0.35 * errors["fast"], errors
    assert errors["full"] < 0.35 * errors["off"], errors
    info = results["full"].report.recovery["bias_correction"]
    assert info["mode"] == "full" and info["layers"] == 3 and info["levels_done"] == 3
    # both output forms carry the same correction
    other = onnxq.quantize(model, calib, progress=False, objective="size",
                           calibrator="percentile", percentile=99.0, format=fmt,
                           bias_correction="full")
    a = np.concatenate([r[0] for r in _outputs(results["full"].model, [out], held_out[:4])])
    b = np.concatenate([r[0] for r in _outputs(other.model, [out], held_out[:4])])
    assert np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b) > 0.9999


def test_full_correction_matches_every_layer_mean_on_calibration_data():
    model = B.mobilenet_shaped(image=32, num_classes=10)
    feeds = B.feeds(model, batch=2, n=6, seed=4)
    plain = onnxq.quantize(model, feeds, progress=False, objective="size",
                           bias_correction="off")
    full = onnxq.quantize(model, feeds, progress=False, objective="size",
                          bias_correction="full")
    names = ["block9.project.bn_out", "block5.project.bn_out"]
    _, prepared, _ = _prepared(model)
    present = {o for n in prepared.graph.node for o in n.output}
    names = [n for n in names if n in present] or [prepared.graph.node[-3].output[0]]
    before = _mean_errors(prepared, plain.model, names, feeds)
    after = _mean_errors(prepared, full.model, names, feeds)
    assert all(a < 0.2 * b for a, b in zip(after, before, strict=True)), (before, after)


def test_levels_never_put_a_layer_with_its_upstream():
    model = B.residual_block()
    _, prepared, plan = _prepared(model)
    found = targets(G.import_graph(prepared), plan)
    groups = levels(prepared, found)
    assert sum(len(g) for g in groups) == len(found) and len(groups) >= 2
    level_of = {t.node: i for i, g in enumerate(groups) for t in g}
    producer = {o: n for n in prepared.graph.node for o in n.output}

    def upstream(name, seen):
        node = next(n for n in prepared.graph.node if n.name == name)
        for i in node.input:
            p = producer.get(i)
            if p is not None and p.name not in seen:
                seen.add(p.name)
                upstream(p.name, seen)
        return seen

    for t in found:
        for u in upstream(t.node, set()):
            if u in level_of:
                assert level_of[u] < level_of[t.node], (u, t.node)


def test_budget_stops_full_correction_and_says_so():
    model = _clipped_chain()
    result = onnxq.quantize(model, _heavy_feeds(4, 1), progress=False, objective="size",
                            bias_correction="full", recipe_budget_s=1e-9)
    info = result.report.recovery["bias_correction"]
    assert info["levels_done"] < info["levels"]
    assert any("time budget" in n for n in result.report.notes)


def test_bias_correction_is_deterministic_and_leaves_the_input_alone():
    model = B.depthwise_hardswish()
    before = model.SerializeToString(deterministic=True)
    feeds = B.feeds(model, batch=2, n=4, seed=5)
    runs = [onnxq.quantize(model, feeds, progress=False, objective="size",
                           bias_correction=bc).model.SerializeToString(deterministic=True)
            for bc in ("full", "full", "fast", "fast")]
    assert runs[0] == runs[1] and runs[2] == runs[3] and runs[0] != runs[2]
    assert model.SerializeToString(deterministic=True) == before


def test_zero_bias_and_set_bias_passes():
    model = B.conv_bn_relu()
    for node in model.graph.node:  # drop every conv bias
        if node.op_type == "Conv" and len(node.input) > 2:
            del node.input[2:]
    result = Pipeline([AddZeroBiasPass()]).run(model)
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert convs and all(len(n.input) == 3 for n in convs)
    feeds = B.feeds(model, batch=2, n=1)
    a = make_session(model).run(None, feeds[0])[0]
    b = make_session(result.model).run(None, feeds[0])[0]
    np.testing.assert_array_equal(a, b)
    graph = G.import_graph(result.model)
    conv = next(n for n in graph.nodes if n.op == "Conv")
    width = G.constant_value(conv.inputs[2]).size
    set_pass = SetBiasPass(biases={(conv.name, 2): np.arange(width, dtype=np.float32)})
    first = set_pass.run(graph)
    assert first.modified and not set_pass.run(first.graph).modified
    assert AddZeroBiasPass().run(first.graph).modified is False


def test_recipe_configuration_and_cli(tmp_path, capsys):
    assert recipe_overrides("bc-full") == {"bias_correction": "full"}
    assert recipe_overrides("bc-full,plain") == {"bias_correction": "off",
                                                 "rounding": "nearest", "data_layers": "int8"}
    assert recipe_overrides("gptq,bc-full") == {"bias_correction": "full", "rounding": "gptq"}
    with pytest.raises(ConfigError, match="recipe.rounding='adaround'.*nearest, gptq"):
        RecipeConfig(rounding="adaround")
    with pytest.raises(ConfigError, match="unknown recipe 'adaroud'.*bc-fast"):
        recipe_overrides("adaroud")
    with pytest.raises(ConfigError, match="recipe.bias_correction='slow'.*off, fast, full"):
        RecipeConfig(bias_correction="slow")
    cfg = QuantConfig.from_dict({"recipe": {"bias_correction": "full", "samples": 8}})
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    model = B.conv_bn_relu()
    onnx.save(model, str(src))
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal(
        (4, 3, 16, 16)).astype(np.float32))
    assert main(["quantize", str(src), str(out), "--calib-data", str(tmp_path / "calib.npz"),
                 "--recipe", "nope", "--quiet"]) == 2
    assert "unknown recipe" in capsys.readouterr().err and not out.exists()
    assert main(["quantize", str(src), str(out), "--calib-data", str(tmp_path / "calib.npz"),
                 "--recipe", "bc-full", "--quiet", "--objective", "size"]) == 0
    assert out.exists()
