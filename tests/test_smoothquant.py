"""SmoothQuant (``recipe.smooth_alpha``): on a pre-LN transformer whose LayerNorms give a few
channels huge values (the activation outliers of large language models), plain static int8
loses the small channels to the per-tensor scale; smoothing moves the outliers into the
weights and recovers the accuracy. Exactness of the transform itself is checked in float."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxq
from onnxq.errors import ConfigError
from onnxq.plan import QuantPlan
from onnxq.recovery.smooth import smooth
from tests import builders as B
from tests.conftest import cosine, run_model

OUTLIERS = (3, 17, 40)


def planted(layers: int = 2, hidden: int = 64, seq: int = 16, factor: float = 60.0,
            post_ln: bool = False) -> onnx.ModelProto:
    """GPT-2-style pre-LN blocks (one head): ``x + attn(LN(x))``, ``x + mlp(LN(x))``. Every
    LayerNorm scales the ``OUTLIERS`` channels by ``factor`` (scale and bias) and the weight
    rows reading them are divided by it: the same function as without outliers, but with the
    activation outliers of large language models. ``post_ln`` moves the LayerNorm after the
    residual Add (BERT-style), so its output also feeds the next residual (and the function
    changes)."""
    b = B._Builder(7, 17)
    x = "hidden_in"
    std = math.sqrt(1.0 / hidden)
    scale = b.const("attn_scale", 1.0 / math.sqrt(hidden))
    for i in range(layers):
        h = x if post_ln else b.layernorm(x, f"l{i}.ln1", hidden, 1e-5, 0.05)
        q = b.linear(h, f"l{i}.q", hidden, hidden, std, 0.02)
        k = b.linear(h, f"l{i}.k", hidden, hidden, std, 0.02)
        v = b.linear(h, f"l{i}.v", hidden, hidden, std, 0.02)
        kt = b.op("Transpose", [k], f"l{i}.kt", perm=[0, 2, 1])
        s = b.op("Mul", [b.op("MatMul", [q, kt], f"l{i}.scores"), scale], f"l{i}.scaled")
        c = b.op("MatMul", [b.op("Softmax", [s], f"l{i}.softmax", axis=-1), v], f"l{i}.ctx")
        x = b.op("Add", [x, b.linear(c, f"l{i}.o", hidden, hidden, std, 0.02)], f"l{i}.res1")
        if post_ln:
            x = b.layernorm(x, f"l{i}.ln1", hidden, 1e-5, 0.05)
        h = x if post_ln else b.layernorm(x, f"l{i}.ln2", hidden, 1e-5, 0.05)
        f = b.gelu(b.linear(h, f"l{i}.fc1", hidden, 4 * hidden, std, 0.02), f"l{i}.gelu")
        f = b.linear(f, f"l{i}.fc2", 4 * hidden, hidden, std / 2, 0.02)
        x = b.op("Add", [x, f], f"l{i}.res2")
        if post_ln:
            x = b.layernorm(x, f"l{i}.ln2", hidden, 1e-5, 0.05)
    b.op("Identity", [x], "out", out="hidden_out")
    model = b.model("planted", [("hidden_in", ["batch", seq, hidden])],
                    [("hidden_out", ["batch", seq, hidden])])
    readers = {"ln1": ("q", "k", "v"), "ln2": ("fc1",)}
    inits = {t.name: t for t in model.graph.initializer}
    rows = list(OUTLIERS)
    for i in range(layers):
        for ln, linears in readers.items():
            for name, change in ([(f"l{i}.{ln}.weight", factor), (f"l{i}.{ln}.bias", factor)]
                                 + [(f"l{i}.{r}.weight", 1 / factor) for r in linears]):
                w = numpy_helper.to_array(inits[name]).copy()
                w[rows] *= change
                inits[name].CopyFrom(numpy_helper.from_array(w, name))
    return model


def _agreement(model, result, feeds) -> float:
    return min(cosine(run_model(model, f)[0], run_model(result.model, f)[0]) for f in feeds)


@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_smoothquant_recovers_what_outliers_cost(fmt):
    """Acceptance 3 of the transformer issue: plain static int8 misses cosine 0.999, SmoothQuant
    meets it."""
    model = planted()
    calib, evals = B.feeds(model, n=16, seed=1), B.feeds(model, n=4, seed=9)
    plain = onnxq.quantize(model, calib, progress=False, format=fmt, objective="size")
    smoothed = onnxq.quantize(model, calib, progress=False, format=fmt, objective="size",
                              smooth_alpha=0.5)
    assert _agreement(model, plain, evals) < 0.999
    assert _agreement(model, smoothed, evals) >= 0.999
    note = next(n for n in smoothed.report.notes if n.startswith("SmoothQuant"))
    assert "4 MatMul input(s)" in note  # ln1 and ln2 of both layers
    # pre-LN: folded into the LayerNorms, no extra op
    assert [n.op_type for n in smoothed.model.graph.node].count("Mul") == \
        [n.op_type for n in plain.model.graph.node].count("Mul")


@pytest.mark.parametrize("post_ln", [False, True])
def test_the_smoothed_float_model_is_the_same_function(post_ln):
    """Folded into the LayerNorm (pre-LN) or a Mul on the MatMuls' branch (post-LN, where the
    LayerNorm also feeds the residual): either way the float model computes the same thing."""
    import onnxq.api as api

    model = planted(post_ln=post_ln)
    cfg = api._resolve_config(None, {"objective": "size"})
    fused, plan = api.prepare(model, cfg)
    assert isinstance(plan, QuantPlan)
    done = smooth(fused.model, plan, B.feeds(model, n=4, seed=1), 0.5)
    assert len(done.report) == (3 if post_ln else 4)  # post-LN: the last LN is the output
    assert all(("mul" in r) == post_ln for r in done.report.values())
    for feed in B.feeds(model, n=2, seed=5):
        want, got = run_model(model, feed)[0], run_model(done.model, feed)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_flat_inputs_are_left_alone_and_bad_settings_refused():
    model = B.attention_block()
    result = onnxq.quantize(model, B.feeds(model, n=4), progress=False, smooth_alpha=0.5)
    assert not any(n.startswith("SmoothQuant") for n in result.report.notes)
    with pytest.raises(ConfigError, match="smooth_alpha"):
        onnxq.quantize(model, B.feeds(model, n=2), progress=False, smooth_alpha=1.5)
    ranges = onnxq.calibrate(model, B.feeds(model, n=2), progress=False)
    with pytest.raises(ConfigError, match="smooth_alpha"):
        onnxq.quantize(model, None, ranges=ranges, progress=False, smooth_alpha=0.5)
