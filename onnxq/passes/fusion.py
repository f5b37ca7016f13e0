"""Fusion: fold per-channel constant Add/Sub/Mul/Div steps and BatchNormalization into
Conv/ConvTranspose (BatchNormalization into Gemm too), scalar scales and shifts in front of a
Conv into it, a per-column constant scale into
MatMul/Gemm, MatMul+Add into Gemm, recognise exported HardSigmoid/HardSwish
(``Clip(x + 3, 0, 6) / 6``) and drop inference no-ops (Identity, Dropout).

Relu/Clip absorption into a producer's quantization range is decided by the plan
(``annotate``) and carried out by ``InsertQDQPass``: in float it is not a fusion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.passes.conv_affine import fold_conv_affine
from onnxq.passes.conv_input_affine import fold_conv_input_affine
from onnxq.passes.linear_scale import fold_linear_scale
from onnxq.pipeline import PassResult, RewriteRule, apply_rules

__all__ = ["FusionPass"]


def _sole_consumer(tensor: gs.Tensor, graph_outputs: set[str]) -> gs.Node | None:
    if tensor.name in graph_outputs or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def _bn_factors(bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (multiplier, offset) of an inference-mode BatchNormalization."""
    if len(bn.outputs) != 1 or bn.attrs.get("training_mode", 0):
        return None
    values = [G.constant_value(t) for t in bn.inputs[1:5]]
    if any(v is None for v in values):
        return None
    gamma, beta, mean, var = (np.asarray(v, dtype=np.float64) for v in values)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    mult = gamma / np.sqrt(var + eps)
    return mult, beta - mean * mult


def _replace_output(producer: gs.Node, old: gs.Node) -> None:
    """Make ``producer`` write ``old``'s output and disconnect ``old``."""
    producer.outputs[0] = old.outputs[0]
    G.detach(old)


def _fold_bn_conv(conv: gs.Node, bn: gs.Node, mult: np.ndarray, offset: np.ndarray) -> bool:
    w = G.constant_value(conv.inputs[1])
    if w is None or w.dtype != np.float32:
        return False
    group = int(conv.attrs.get("group", 1))
    if conv.op == "Conv":
        scale_shape = (-1,) + (1,) * (w.ndim - 1)
        new_w = w * mult.reshape(scale_shape)
    else:  # ConvTranspose weight: [Cin, Cout/group, k...]
        cout_g = w.shape[1]
        m = mult.reshape(group, 1, cout_g)  # output channel = g * cout_g + j
        wg = w.reshape(group, w.shape[0] // group, cout_g, -1)
        new_w = (wg * m[..., None]).reshape(w.shape)
    bias = G.constant_value(conv.inputs[2]) if len(conv.inputs) > 2 else None
    bias = np.zeros(mult.shape) if bias is None else bias.astype(np.float64)
    new_b = bias * mult + offset
    conv.inputs[1] = gs.Constant(conv.inputs[1].name + "_bnfold", new_w.astype(np.float32))
    b_const = gs.Constant(conv.name + "_bias_bnfold", new_b.astype(np.float32))
    if len(conv.inputs) > 2:
        conv.inputs[2] = b_const
    else:
        conv.inputs.append(b_const)
    return True


def _fold_bn_gemm(gemm: gs.Node, mult: np.ndarray, offset: np.ndarray) -> bool:
    w = G.constant_value(gemm.inputs[1])
    if w is None or w.ndim != 2 or gemm.attrs.get("transA", 0):
        return False
    trans_b = int(gemm.attrs.get("transB", 0))
    new_w = w * (mult[:, None] if trans_b else mult[None, :])
    alpha, beta = float(gemm.attrs.get("alpha", 1.0)), float(gemm.attrs.get("beta", 1.0))
    c = G.constant_value(gemm.inputs[2]) if len(gemm.inputs) > 2 else None
    c = np.zeros(mult.shape) if c is None else np.broadcast_to(c, mult.shape).astype(np.float64)
    new_c = beta * c * mult + offset
    gemm.inputs[1] = gs.Constant(gemm.inputs[1].name + "_bnfold", (alpha * new_w).astype(np.float32))
    c_const = gs.Constant(gemm.name + "_bias_bnfold", new_c.astype(np.float32))
    if len(gemm.inputs) > 2:
        gemm.inputs[2] = c_const
    else:
        gemm.inputs.append(c_const)
    gemm.attrs["alpha"] = 1.0
    gemm.attrs["beta"] = 1.0
    return True


def _fold_batchnorms(graph: gs.Graph) -> int:
    outputs = G.graph_output_names(graph)
    folded = 0
    for node in list(graph.nodes):
        if node.op not in {"Conv", "ConvTranspose", "Gemm"} or len(node.outputs) != 1:
            continue
        bn = _sole_consumer(node.outputs[0], outputs)
        if bn is None or bn.op != "BatchNormalization" or bn.inputs[0] is not node.outputs[0]:
            continue
        factors = _bn_factors(bn)
        if factors is None:
            continue
        ok = (_fold_bn_gemm(node, *factors) if node.op == "Gemm"
              else _fold_bn_conv(node, bn, *factors))
        if ok:
            _replace_output(node, bn)
            folded += 1
    return folded


def _pool_before_batchnorm(graph: gs.Graph) -> int:
    """``MaxPool(BatchNormalization(x))`` → ``BatchNormalization(MaxPool(x))`` where every
    channel's multiplier is >= 0: a per-channel non-decreasing map commutes with a max, so the
    swap is exact. A BN after a Relu cannot fold into its Conv (CREPE, Keras-style
    Conv-Relu-BN-MaxPool); in front of the pool it kept the pool's input float, and onnxruntime
    moves the next QuantizeLinear above the pool and runs it u8 in its plain NCHW kernel (4x
    the float NCHWc pool). Swapped, the pool reads the int8 Conv output (NHWC kernel) and the
    BN runs on the pooled tensor."""
    outputs = G.graph_output_names(graph)
    moved = 0
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization" or not bn.inputs:
            continue
        factors = _bn_factors(bn)
        pool = _sole_consumer(bn.outputs[0], outputs) if len(bn.outputs) == 1 else None
        if factors is None or np.any(factors[0] < 0) or pool is None or pool.op != "MaxPool" \
                or len(pool.outputs) != 1 or pool.inputs[0] is not bn.outputs[0]:
            continue
        x, y = bn.inputs[0], pool.outputs[0]
        pooled = gs.Variable(f"{pool.name}_before_bn", dtype=y.dtype)
        pool.inputs[0], pool.outputs[0] = x, pooled
        bn.inputs[0], bn.outputs[0] = pooled, y
        moved += 1
    return moved


def _matmul_add_to_gemm(graph: gs.Graph) -> int:
    outputs = G.graph_output_names(graph)
    fused = 0
    for mm in list(graph.nodes):
        if mm.op != "MatMul" or len(mm.inputs) != 2:
            continue
        a, b = mm.inputs
        w = G.constant_shape(b)
        if w is None or len(w) != 2 or a.shape is None or len(a.shape) != 2:
            continue
        add = _sole_consumer(mm.outputs[0], outputs)
        if add is None or add.op != "Add":
            continue
        other = [t for t in add.inputs if t is not mm.outputs[0]]
        c = G.constant_value(other[0]) if len(other) == 1 else None
        if c is None or c.size != w[1] or c.shape[-1] != w[1] or c.ndim > 2:
            continue
        gemm = gs.Node("Gemm", mm.name, inputs=[a, b, gs.Constant(add.name + "_bias",
                       np.ascontiguousarray(c.reshape(-1).astype(np.float32)))],
                       outputs=[add.outputs[0]])
        G.detach(mm, add)
        graph.nodes.append(gemm)
        fused += 1
    return fused


def _gemm_scales(graph: gs.Graph) -> int:
    """Gemm ``alpha``/``beta`` folded into its constant B and C (onnxruntime's QGemm has no
    beta, and alpha would scale the int8 product): ``alpha·A·B + beta·C`` =
    ``A·(alpha·B) + (beta·C)``."""
    folded = 0
    for node in [n for n in graph.nodes if n.op == "Gemm"]:
        alpha = float(node.attrs.get("alpha", 1.0))
        beta = float(node.attrs.get("beta", 1.0))
        if alpha == 1.0 and beta == 1.0 or len(node.inputs) < 2:
            continue
        b = G.constant_value(node.inputs[1])
        has_c = len(node.inputs) > 2 and bool(node.inputs[2].name)
        c = G.constant_value(node.inputs[2]) if has_c else None
        if b is None or (has_c and c is None) or len(node.inputs[1].outputs) != 1 or (
                has_c and len(node.inputs[2].outputs) != 1):
            continue
        node.inputs[1] = gs.Constant(G.unique_name(graph, f"{node.inputs[1].name}_alpha"),
                                     (b * np.float32(alpha)).astype(b.dtype))
        if has_c and c is not None:
            node.inputs[2] = gs.Constant(G.unique_name(graph, f"{node.inputs[2].name}_beta"),
                                         (c * np.float32(beta)).astype(c.dtype))
        node.attrs["alpha"], node.attrs["beta"] = 1.0, 1.0
        folded += 1
    return folded


def _pad_amounts(pad: gs.Node, rank: int) -> np.ndarray | None:
    """Pad's begin/end amounts as a [2, rank] array when it is a zero constant pad."""
    if pad.attrs.get("mode", "constant") not in ("constant", b"constant"):
        return None
    pads: np.ndarray | None
    value: float | None
    if "pads" in pad.attrs:  # opset < 11
        pads, value = np.asarray(pad.attrs["pads"]), float(pad.attrs.get("value", 0.0))
    else:
        pads = G.constant_value(pad.inputs[1]) if len(pad.inputs) > 1 else None
        value = 0.0
        if len(pad.inputs) > 2 and pad.inputs[2].name:
            v = G.constant_value(pad.inputs[2])
            value = None if v is None else float(v)
        if len(pad.inputs) > 3 and pad.inputs[3].name:  # axes input: keep it simple
            return None
    if pads is None or value != 0.0 or pads.size != 2 * rank or np.any(pads < 0):
        return None
    return pads.reshape(2, rank)


def _pad_into_conv(graph: gs.Graph) -> int:
    """Zero ``Pad`` of the spatial axes before a Conv becomes the Conv's own ``pads``."""
    outputs = G.graph_output_names(graph)
    fused = 0
    for pad in list(graph.nodes):
        if pad.op != "Pad" or not pad.inputs or pad.inputs[0].shape is None:
            continue
        conv = _sole_consumer(pad.outputs[0], outputs)
        rank = len(pad.inputs[0].shape)
        if conv is None or conv.op != "Conv" or conv.inputs[0] is not pad.outputs[0]:
            continue
        if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            continue
        amounts = _pad_amounts(pad, rank)
        if amounts is None or np.any(amounts[:, :2] != 0):
            continue
        spatial = rank - 2
        current = np.asarray(conv.attrs.get("pads", [0] * 2 * spatial)).reshape(2, spatial)
        conv.attrs["pads"] = [int(v) for v in (current + amounts[:, 2:]).reshape(-1)]
        conv.inputs[0] = pad.inputs[0]
        G.detach(pad)
        fused += 1
    return fused


def _drop_noops(graph: gs.Graph) -> int:
    outputs = G.graph_output_names(graph)
    dropped = 0
    for node in list(graph.nodes):
        is_dropout = node.op == "Dropout" and all(not t.outputs for t in node.outputs[1:])
        if node.op != "Identity" and not is_dropout:
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if dst.name in outputs or isinstance(src, gs.Constant) and not dst.outputs:
            continue
        G.replace_uses(dst, src)
        G.detach(node)
        dropped += 1
    return dropped


def _scalar(t: gs.Tensor) -> float | None:
    v = G.constant_value(t)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def _near(v: float | None, want: float) -> bool:
    return v is not None and abs(v - want) <= 1e-6 * max(1.0, abs(want))


def _clip_bounds(clip: gs.Node) -> tuple[float | None, float | None]:
    if "min" in clip.attrs or "max" in clip.attrs:  # opset < 11
        return clip.attrs.get("min"), clip.attrs.get("max")
    bounds = [(_scalar(t) if t.name else None) for t in clip.inputs[1:3]] + [None, None]
    return bounds[0], bounds[1]


def _relu6_of_x_plus_3(t: gs.Tensor, outputs: set[str]
                       ) -> tuple[gs.Tensor, list[gs.Node]] | None:
    """``(x, [Add, Clip])`` when ``t = Clip(x + 3, 0, 6)``: the core of every exported
    HardSigmoid / HardSwish (PaddlePaddle, older PyTorch and Keras exports)."""
    clip = G.producer(t)
    if clip is None or clip.op != "Clip":
        return None
    low, high = _clip_bounds(clip)
    if not (_near(low, 0.0) and _near(high, 6.0)):
        return None
    add = G.producer(clip.inputs[0])
    if add is None or add.op != "Add" or _sole_consumer(clip.inputs[0], outputs) is not clip:
        return None
    consts = [i for i, s in enumerate(add.inputs) if _scalar(s) is not None]
    if len(add.inputs) != 2 or len(consts) != 1 or not _near(_scalar(add.inputs[consts[0]]), 3.0):
        return None
    return add.inputs[1 - consts[0]], [add, clip]


def _over_6(node: gs.Node) -> gs.Tensor | None:
    """``y`` when ``node`` computes ``y / 6`` or ``y · (1/6)``."""
    if len(node.inputs) != 2:
        return None
    if node.op == "Div":
        return node.inputs[0] if _near(_scalar(node.inputs[1]), 6.0) else None
    if node.op == "Mul":
        for i in (0, 1):
            if _near(_scalar(node.inputs[i]), 1.0 / 6.0):
                return node.inputs[1 - i]
    return None


def _hard_swish_operands(y: gs.Tensor, outputs: set[str]
                         ) -> tuple[gs.Tensor, list[gs.Node]] | None:
    """``(x, nodes)`` when ``y = x · Clip(x + 3, 0, 6)``."""
    mul = G.producer(y)
    if mul is None or mul.op != "Mul" or len(mul.inputs) != 2:
        return None
    for i in (0, 1):
        core = mul.inputs[1 - i]
        found = _relu6_of_x_plus_3(core, outputs) if _sole_consumer(core, outputs) is mul \
            else None
        if found is not None and found[0] is mul.inputs[i]:
            return found[0], found[1] + [mul]
    return None


def _hard_activation_forms(graph: gs.Graph, outputs: set[str]) -> int:
    """``Clip(x + 3, 0, 6) / 6`` → ``HardSigmoid(x; 1/6, 1/2)`` and ``x · Clip(x + 3, 0, 6) / 6``
    → ``x · HardSigmoid(x)`` (HardSwish at any opset). The same function; onnxruntime runs one
    or two kernels instead of four and fuses the float ones into HardSwish and into the Conv
    before it (a PP-LCNet classifier: 1.6× faster in float), and the int8 plan gets its cheap
    HardSigmoid form."""
    hsig = {"alpha": 1.0 / 6.0, "beta": 0.5}
    rewritten = 0
    for node in list(graph.nodes):
        y = _over_6(node) if node.op in ("Div", "Mul") and len(node.outputs) == 1 else None
        reader = _sole_consumer(y, outputs) if y is not None else None
        if y is None or reader is None or id(reader) != id(node):
            continue
        out = node.outputs[0]
        sigmoid = _relu6_of_x_plus_3(y, outputs)
        swish = None if sigmoid is not None else _hard_swish_operands(y, outputs)
        if sigmoid is not None:
            x, dead = sigmoid
            new = [gs.Node("HardSigmoid", node.name, dict(hsig), inputs=[x], outputs=[out])]
        elif swish is not None:
            x, dead = swish
            h = gs.Variable(G.unique_name(graph, f"{out.name}_hardsigmoid"), out.dtype, out.shape)
            new = [gs.Node("HardSigmoid", G.unique_name(graph, f"{node.name}_hardsigmoid"),
                           dict(hsig), inputs=[x], outputs=[h]),
                   gs.Node("Mul", node.name, inputs=[x, h], outputs=[out])]
        else:
            continue
        G.detach(node, *dead)
        graph.nodes.extend(new)
        rewritten += 1
    return rewritten


@dataclass(frozen=True, slots=True, kw_only=True)
class FusionPass:
    """Float-exact rewrites that make quantization cheaper and more accurate, as a declared
    rule set applied in order (see ``RULES``)."""

    fold_batchnorm: bool = True
    matmul_add_to_gemm: bool = True
    #: off for the OpenVINO EP: it fuses the exported form itself, and its int8 kernels run
    #: the HardSigmoid form slower (PP-OCR rec 1.9x -> 0.8x FP32 there)
    hard_activations: bool = True
    #: off for the OpenVINO EP: CREPE full 1.63x -> 1.61x, tiny 0.98x -> 0.96x FP32 there
    pool_batchnorm: bool = True
    #: off for the OpenVINO EP: it folds scalar scales itself, and the ``/ 6`` of an exported
    #: HardSwish in front of a conv is part of the pattern it fuses
    input_affine: bool = True
    name: str = "fusion"

    RULES: ClassVar[tuple[RewriteRule, ...]] = (
        RewriteRule(name="noop", rewrite=lambda g, outs: _drop_noops(g)),
        RewriteRule(name="pad_conv", rewrite=lambda g, outs: _pad_into_conv(g)),
        RewriteRule(name="hard_activations", rewrite=_hard_activation_forms,
                    switch="hard_activations"),
        RewriteRule(name="conv_affine", rewrite=fold_conv_affine),  # after: Conv → Add(3) → Clip
        RewriteRule(name="conv_input_affine", rewrite=fold_conv_input_affine,
                    switch="input_affine"),
        RewriteRule(name="batchnorm", rewrite=lambda g, outs: _fold_batchnorms(g),
                    switch="fold_batchnorm"),
        RewriteRule(name="pool_batchnorm", rewrite=lambda g, outs: _pool_before_batchnorm(g),
                    switch="pool_batchnorm"),
        RewriteRule(name="matmul_add", rewrite=lambda g, outs: _matmul_add_to_gemm(g),
                    switch="matmul_add_to_gemm"),
        RewriteRule(name="gemm_alpha_beta", rewrite=lambda g, outs: _gemm_scales(g)),
        RewriteRule(name="linear_scale", rewrite=fold_linear_scale),
    )

    def run(self, graph: gs.Graph) -> PassResult:
        counts = apply_rules(self.RULES, graph, self)
        modified = any(counts.values())
        if modified:
            graph.cleanup().toposort()
        notes = tuple(f"{k}: {v} fused" for k, v in counts.items() if v)
        return PassResult(graph=graph, modified=modified, notes=notes)
