"""Cross-layer equalization: an exact rewrite (FP32 outputs unchanged), equal per-channel
weight ranges across each pair, idempotent, only through positively homogeneous activations,
and the input model untouched."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxq
from onnxq import graph as G
from onnxq.passes import CrossLayerEqualizationPass
from tests import builders as B
from tests.conftest import run_model


def _chain(act: str = "Relu") -> onnx.ModelProto:
    """conv → act → depthwise conv → act → pointwise conv → LeakyRelu → conv, with four
    channels of the first conv's output made 100x larger (and its reader's inputs 100x
    smaller): the range spread equalization removes."""
    b = B._Builder(3, 17)
    x = b.conv("input", "c1", 3, 16, 3, bias=True)
    x = b.op(act, [x], "a1", **({"min": 0.0, "max": 6.0} if act == "Clip" else {}))
    x = b.op("Relu", [b.conv(x, "dw", 16, 16, 3, group=16, bias=True)], "a2")
    x = b.op("LeakyRelu", [b.conv(x, "pw", 16, 24, 1, bias=True)], "a3", alpha=0.1)
    y = b.conv(x, "c4", 24, 8, 1, bias=True)
    model = b.model("chain", [("input", [2, 3, 12, 12])], [(y, None)])
    inits = {t.name: t for t in model.graph.initializer}
    for name, scale, axis in (("c1.weight", 100.0, 0), ("c1.bias", 100.0, 0),
                              ("dw.weight", 0.01, 0)):
        value = onnx.numpy_helper.to_array(inits[name]).copy()
        index = [slice(None)] * value.ndim
        index[axis] = slice(0, 4)
        value[tuple(index)] *= scale
        inits[name].CopyFrom(onnx.numpy_helper.from_array(value, name))
    return model


def _ranges(graph, a: str, b: str, depthwise: bool):
    nodes = {n.name: n for n in graph.nodes}
    wa, wb = (np.asarray(nodes[n].inputs[1].values) for n in (a, b))
    ra = np.abs(wa.reshape(wa.shape[0], -1)).max(1)
    rb = np.abs(np.moveaxis(wb, 0 if depthwise else 1, 0).reshape(ra.shape[0], -1)).max(1)
    return ra, rb


def test_equalization_is_exact_and_equalizes_every_pair():
    model = _chain()
    before = model.SerializeToString()
    graph = G.import_graph(model)
    result = CrossLayerEqualizationPass().run(graph)
    assert result.modified and "3 conv pair(s)" in result.notes[0]
    assert model.SerializeToString() == before  # the input model is never written
    out = G.export_graph(result.graph, model)
    feed = B.feeds(model, batch=2, seed=1)[0]
    np.testing.assert_allclose(run_model(out, feed)[0], run_model(model, feed)[0],
                               rtol=1e-4, atol=1e-4)
    for a, b, depthwise in (("c1", "dw", True), ("dw", "pw", False), ("pw", "c4", False)):
        ra, rb = _ranges(result.graph, a, b, depthwise)
        np.testing.assert_allclose(ra, rb, rtol=0.01)  # settled: each channel's ranges equal
    again = CrossLayerEqualizationPass().run(result.graph)
    assert not again.modified and again.notes == ()


def test_equalization_never_crosses_a_clip():
    """Clip (ReLU6) is not positively homogeneous: scaling through it would change FP32."""
    graph = G.import_graph(_chain("Clip"))
    result = CrossLayerEqualizationPass().run(graph)
    assert "2 conv pair(s)" in result.notes[0]  # dw → pw and pw → c4 only
    ra, rb = _ranges(result.graph, "c1", "dw", True)
    assert ra.max() / ra.min() > 50  # c1's planted spread is still there


@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_the_cle_recipe_recovers_the_range_spread(fmt):
    model = _chain()
    feeds = B.feeds(model, batch=2, n=8, seed=2)
    ref = [run_model(model, f)[0] for f in feeds]

    def error(**kw):
        q = onnxq.quantize(model, feeds, progress=False, objective="size", format=fmt, **kw)
        out = [run_model(q.model, f)[0] for f in feeds]
        return float(np.mean([np.abs(o - r).mean() for o, r in zip(out, ref, strict=True)]))

    plain, equalized = error(), error(equalize=True)
    assert equalized < 0.5 * plain, (plain, equalized)


def test_a_bias_shared_with_another_conv_gets_its_own_copy():
    """tf2onnx merges equal constants, so TFLite's zero depthwise biases are one initializer
    read by many convs: the pair is still equalized, on a copy; the other reader keeps its."""
    model = _chain()
    inits = {t.name: t for t in model.graph.initializer}
    zero = np.zeros(16, np.float32)
    for name in ("c1.bias", "dw.bias"):  # both 16 channels: one shared zero constant
        inits[name].CopyFrom(onnx.numpy_helper.from_array(zero, name))
    for node in model.graph.node:
        node.input[:] = ["shared_zero" if i in ("c1.bias", "dw.bias") else i for i in node.input]
    model.graph.initializer.append(onnx.numpy_helper.from_array(zero, "shared_zero"))
    graph = G.import_graph(model)
    result = CrossLayerEqualizationPass().run(graph)
    assert "3 conv pair(s)" in result.notes[0]
    out = G.export_graph(result.graph, model)
    feed = B.feeds(model, batch=2, seed=1)[0]
    np.testing.assert_allclose(run_model(out, feed)[0], run_model(model, feed)[0],
                               rtol=1e-4, atol=1e-4)
    nodes = {n.name: n for n in result.graph.nodes}
    assert nodes["c1"].inputs[2] is not nodes["dw"].inputs[2]
    ra, rb = _ranges(result.graph, "c1", "dw", True)
    np.testing.assert_allclose(ra, rb, rtol=0.01)
