"""A constant affine step in front of a Conv folded into the conv's weight and bias (a rule of
``FusionPass``; ``conv_affine`` is its twin on the output side).

``Conv(x · c)`` is a conv whose weight has input channel ``i`` scaled by ``c[i]``: exact with
zero padding too (a padded zero stays zero). ``Conv(x + b)`` is ``Conv(x)`` plus, per output
channel, the sum of its weights times ``b``: exact only where the conv reads no padding (a
padded zero would have been ``b``), so a shift folds only into an unpadded conv. When a shift
stands between the scale and a padded conv (``x · a + b``), the scale moves behind it as
``(x + b / a) · a`` and folds alone.

PaddleOCR's PP-LCNetV3 (the PP-OCRv4 recognizer and detector) writes a learnable affine block
``Mul(a) → Add(b)`` after every HardSwish, in front of the next conv; exports with the
normalisation built in write ``Div(std)`` before the stem. Each step was an elementwise pass
of its own (in an int8 model, between the activation's quantizer and the conv's, which needed
a requantization of their own).

A scale that ends an exported GELU stays (onnxruntime fuses the GELU only with it). Only
scalar scales fold, which scale the weight uniformly: a per-channel scale would change the
relative size of a weight row's entries, and so its int8 error (cross-layer equalization's
trade, decided by the ``cle`` recipe, not here). Shifts may be per channel: they move only the
bias.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G

__all__ = ["fold_conv_input_affine"]

_STEPS = ("Add", "Sub", "Mul", "Div")


def _rank(conv: gs.Node) -> int:
    return len(conv.inputs[1].shape or ())


def _unpadded(conv: gs.Node) -> bool:
    pads = conv.attrs.get("pads")
    auto = conv.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto == "VALID" or (auto == "NOTSET" and not any(int(p) for p in (pads or ())))


def _input_step(conv: gs.Node, channels: int, outputs: set[str]
                ) -> tuple[gs.Node, gs.Tensor, str, np.ndarray] | None:
    """(step, its variable input, "scale"|"shift", one value per input channel) of the affine
    step whose output only ``conv`` reads, as its data input; else None."""
    x = conv.inputs[0]
    if x.name in outputs or len(x.outputs) != 1 or len(x.inputs) != 1:
        return None
    step = x.inputs[0]
    if step.op not in _STEPS or len(step.inputs) != 2 or len(step.outputs) != 1:
        return None
    var, const = _operands(step)
    value = G.constant_value(const, cache=False) if const is not None else None
    rank = _rank(conv)
    if var is None or value is None or value.dtype != np.float32 or value.ndim > rank:
        return None
    if value.ndim == rank and (var.shape is None or len(var.shape) != rank):
        return None  # the constant might be what gives the conv input its rank
    scale = step.op in ("Mul", "Div")
    if scale and _ends_gelu(var):
        return None
    if value.size == 1:
        c = np.full(channels, float(value.reshape(-1)[0]), np.float64)
    elif scale:
        return None  # per-channel scales: module docstring
    else:
        shape = (1,) * (rank - value.ndim) + value.shape
        if value.size != channels or shape[1] != channels:
            return None
        c = value.reshape(channels).astype(np.float64)
    if not np.all(np.isfinite(c)) or (step.op == "Div" and not np.all(c != 0)):
        return None
    if step.op == "Sub":
        c = -c
    elif step.op == "Div":
        c = 1.0 / c
    return step, var, "scale" if scale else "shift", c


def _ends_gelu(t: gs.Tensor) -> bool:
    """Whether ``t`` is ``x · (1 + erf(…))`` or ``x · (1 + tanh(…))``: the scale after it is
    the ``· 0.5`` of an exported GELU, which onnxruntime fuses into one ``Gelu``/``FastGelu``
    kernel only with that scale in place (PP-OCRv6's detector: 13 of them, 1.08× → 0.87× FP32
    when they were folded into the next conv)."""
    mul = t.inputs[0] if len(t.inputs) == 1 else None
    if mul is None or mul.op != "Mul":
        return False
    for factor in mul.inputs:
        add = factor.inputs[0] if len(factor.inputs) == 1 else None
        if add is not None and add.op == "Add" and any(
                len(i.inputs) == 1 and i.inputs[0].op in ("Erf", "Tanh") for i in add.inputs):
            return True
    return False


def _shift_bias(w: np.ndarray, group: int, c: np.ndarray) -> np.ndarray:
    """Per output channel, Σ over its input channels and taps of ``w · c[input channel]``."""
    out, per_group = w.shape[0], w.shape[1]
    taps = w.reshape(out, per_group, -1).sum(axis=2)  # [O, I/g]
    rows = np.arange(out) // (out // group)  # each output channel's group
    cols = rows[:, None] * per_group + np.arange(per_group)[None, :]
    return (taps * c[cols]).sum(axis=1)


def _scalar_scale(t: gs.Tensor, outputs: set[str]) -> tuple[gs.Node, gs.Tensor, float] | None:
    """(node, its variable input, the factor) when ``t`` is only read once and is written by a
    ``Mul``/``Div`` of a variable by a nonzero finite scalar constant; else None."""
    if t.name in outputs or len(t.outputs) != 1 or len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    if node.op not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    var, const = _operands(node)
    value = G.constant_value(const, cache=False) if const is not None else None
    if var is None or value is None or value.dtype != np.float32 or value.size != 1 or \
            _ends_gelu(var):
        return None
    a = float(value.reshape(-1)[0])
    if not np.isfinite(a) or a == 0.0:
        return None
    return node, var, (a if node.op == "Mul" else 1.0 / a)


def _operands(node: gs.Node) -> tuple[gs.Tensor | None, gs.Tensor | None]:
    """(variable input, constant input) of a binary node; (None, None) unless exactly one is a
    constant, and for Sub/Div the variable comes first (``c - x`` is not affine in x with a
    positive slope)."""
    a, b = node.inputs
    ca, cb = G.constant_value(a, cache=False) is not None, G.constant_value(b, cache=False) \
        is not None
    if ca == cb or (node.op in ("Sub", "Div") and ca):
        return None, None
    return (b, a) if ca else (a, b)


def _swap_scale_behind_shift(graph: gs.Graph, shift: gs.Node, outputs: set[str]) -> bool:
    """``(x · a) ± b`` (the shift ``shift``, read by a padded conv) with a scalar ``a ≠ 0``
    becomes ``(x ± b / a) · a``, so that the scale reaches the conv. Returns whether it did."""
    mid, b_t = _operands(shift)
    if mid is None or b_t is None or (found := _scalar_scale(mid, outputs)) is None:
        return False
    scale, x, a = found
    b = G.constant_value(b_t, cache=False)
    assert b is not None  # _operands: a constant
    inner = gs.Variable(G.unique_name(graph, f"{mid.name}_shifted"), mid.dtype, mid.shape)
    out = shift.outputs[0]
    moved = gs.Node(shift.op, G.unique_name(graph, f"{shift.name}_moved"), inputs=[
        x, gs.Constant(G.unique_name(graph, f"{b_t.name}_over_scale"),
                       (b.astype(np.float64) / a).astype(np.float32))], outputs=[inner])
    rescale = gs.Node("Mul", G.unique_name(graph, f"{scale.name}_moved"), inputs=[
        inner, gs.Constant(G.unique_name(graph, f"{scale.name}_factor"),
                           np.asarray(a, np.float32))], outputs=[out])
    G.detach(shift, scale)
    graph.nodes.extend([moved, rescale])
    return True


def fold_conv_input_affine(graph: gs.Graph, outputs: set[str]) -> int:
    """Fold every scalar scale and (into unpadded convs) per-channel shift that alone feeds a
    Conv into its weight and bias, chains included; returns how many steps were folded."""
    folded = 0
    for conv in list(graph.nodes):
        if conv.op != "Conv" or len(conv.inputs) < 2 or not G.is_float32_constant(conv.inputs[1]):
            continue
        shape = G.constant_shape(conv.inputs[1])
        if shape is None or len(shape) < 3:
            continue
        group = int(conv.attrs.get("group", 1))
        channels, unpadded = shape[1] * group, _unpadded(conv)
        swapped = False
        while True:
            found = _input_step(conv, channels, outputs)
            if found is not None and found[2] == "shift" and not unpadded:
                shift, found = found[0], None
                if not swapped and _swap_scale_behind_shift(graph, shift, outputs):
                    swapped = True
                    continue
            if found is None:
                break
            step, x, kind, c = found
            w = G.constant_value(conv.inputs[1], cache=False)
            has_bias = len(conv.inputs) > 2 and bool(conv.inputs[2].name)
            bias = G.constant_value(conv.inputs[2], cache=False) if has_bias else \
                np.zeros(shape[0], np.float32)
            if w is None or bias is None or bias.shape != (shape[0],):
                break
            base = G.unique_name(graph, f"{conv.inputs[1].name}_in{step.op.lower()}",
                                 ("", "_b"))
            if kind == "scale":  # scalar: the whole weight
                conv.inputs[1] = gs.Constant(base, (w.astype(np.float64) * c[0])
                                             .astype(np.float32))
            else:
                new_bias = bias.astype(np.float64) + _shift_bias(w.astype(np.float64), group, c)
                bias_t = gs.Constant(base + "_b", new_bias.astype(np.float32))
                if len(conv.inputs) > 2:
                    conv.inputs[2] = bias_t
                else:
                    conv.inputs.append(bias_t)
            conv.inputs[0] = x
            G.detach(step)
            folded += 1
    return folded
