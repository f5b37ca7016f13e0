"""A constant per-channel affine step after a Conv/ConvTranspose folded into its weight and
bias (a rule of ``FusionPass``).

Exporters that write the bias or a scale as separate ops (PaddlePaddle's ConvTranspose, a
BatchNormalization decomposed into ``Mul`` and ``Add``, some Keras and TFLite conversions)
leave ``Conv → Add(c)`` / ``Mul(c)`` / ``Sub(c)`` / ``Div(c)`` where ``c`` is one value per
output channel. Folded, the step is gone (in int8 it was a QLinearAdd/QLinearMul of its own,
or a float op between two conversions), and a BatchNormalization after it can fold into the
conv as well (PP-OCR's DB head: ``ConvTranspose → Add → BatchNormalization → Relu`` becomes one
ConvTranspose and a Relu). Exact up to float rounding.

A scalar scale (``Mul``/``Div``) folds. A scalar shift folds too (PP-LCNetV3's learnable
affine blocks: ``Conv → Mul(a) → Add(b) → HardSwish``; each unfolded ``Add`` was an int8
``QLinearAdd`` and a requantization of its own), except where a clamp reads it: a scalar
``x + 3`` before a ``Clip``/``Relu``/``Min``/``Max`` starts an exported HardSigmoid, which the
rule before this one recognises on the CPU EP and the OpenVINO EP fuses itself.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G

__all__ = ["fold_conv_affine"]

_STEPS = ("Add", "Sub", "Mul", "Div")
_CLAMPS = ("Clip", "Relu", "Min", "Max")


def _geometry(conv: gs.Node) -> tuple[int, int] | None:
    """(weight rank, output channels) of a Conv/ConvTranspose with a constant float weight,
    read without loading the weight (it may be a large one kept in its file)."""
    w = conv.inputs[1] if len(conv.inputs) > 1 else None
    shape = G.constant_shape(w)
    if shape is None or len(shape) < 3 or not G.is_float32_constant(w):
        return None
    if conv.op == "Conv":
        return len(shape), shape[0]
    return len(shape), shape[1] * int(conv.attrs.get("group", 1))


def _per_channel(value: np.ndarray, channels: int, rank: int, scalar: bool) -> np.ndarray | None:
    """``value`` as one float per output channel, when applying it to an ``[N, C, …]`` output
    of ``rank`` dims neither broadcasts that output to a larger shape nor varies along N or the
    spatial axes (a one-element ``value`` only where ``scalar``); else None."""
    if value.dtype != np.float32 or value.ndim > rank:
        return None
    if value.size == 1 and (scalar or channels == 1):
        return np.full(channels, float(value.reshape(-1)[0]), np.float64)
    shape = (1,) * (rank - value.ndim) + value.shape
    if value.size != channels or shape[1] != channels:
        return None
    return value.reshape(channels).astype(np.float64)


def _starts_clamp(node: gs.Node, outputs: set[str]) -> bool:
    """Whether ``node``'s output is a graph output or is read by a clamp (``Clip``, ``Relu``,
    ``Min``, ``Max``): a scalar ``x + 3`` there may start an exported HardSigmoid/HardSwish that
    ``hard_activations`` did not rewrite (it is off for the OpenVINO EP, which fuses the
    exported form itself), and folding the shift would hide that pattern."""
    y = node.outputs[0]
    return y.name in outputs or any(r.op in _CLAMPS for r in y.outputs)


def _step(conv: gs.Node, channels: int, rank: int, outputs: set[str]
          ) -> tuple[gs.Node, str, np.ndarray] | None:
    """(node, "scale"|"shift", per-channel value) of the affine step that alone reads
    ``conv``'s output, or None."""
    y = conv.outputs[0]
    if y.name in outputs or len(y.outputs) != 1 or y.outputs[0].op not in _STEPS:
        return None
    node = y.outputs[0]
    if len(node.inputs) != 2 or len(node.outputs) != 1 or node.inputs[0] is node.inputs[1]:
        return None
    other = node.inputs[1] if node.inputs[0] is y else node.inputs[0]
    if node.op in ("Sub", "Div") and node.inputs[0] is not y:
        return None  # c - y, c / y: not affine in y with a positive slope
    value = G.constant_value(other, cache=False)
    scale = node.op in ("Mul", "Div")
    scalar = scale or not _starts_clamp(node, outputs)
    c = None if value is None else _per_channel(value, channels, rank, scalar=scalar)
    if c is None or (node.op == "Div" and not np.all(c != 0)):
        return None
    if node.op == "Sub":
        c = -c
    elif node.op == "Div":
        c = 1.0 / c
    return node, "scale" if scale else "shift", c


def _scaled(conv: gs.Node, w: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``w`` with output channel ``o`` multiplied by ``c[o]``."""
    if conv.op == "Conv":
        return w * c.reshape((-1,) + (1,) * (w.ndim - 1))
    group = int(conv.attrs.get("group", 1))  # ConvTranspose: [Cin, Cout/group, k...]
    wg = w.reshape(group, w.shape[0] // group, w.shape[1], -1)
    return (wg * c.reshape(group, 1, w.shape[1], 1)).reshape(w.shape)


def fold_conv_affine(graph: gs.Graph, outputs: set[str]) -> int:
    """Fold every per-channel ``Add``/``Sub``/``Mul``/``Div`` by a constant that alone reads a
    Conv/ConvTranspose output into the conv's weight and bias, chains included; returns how
    many steps were folded."""
    folded = 0
    for conv in list(graph.nodes):
        if conv.op not in ("Conv", "ConvTranspose") or len(conv.outputs) != 1:
            continue
        while (geometry := _geometry(conv)) is not None:
            rank, channels = geometry
            has_bias = len(conv.inputs) > 2 and bool(conv.inputs[2].name)
            bias = G.constant_value(conv.inputs[2], cache=False) if has_bias else \
                np.zeros(channels, np.float32)
            found = _step(conv, channels, rank, outputs)
            if found is None or bias is None or bias.shape != (channels,):
                break
            node, kind, c = found
            bias = bias.astype(np.float64)
            base = G.unique_name(graph, f"{conv.inputs[1].name}_{node.op.lower()}", ("", "_b"))
            if kind == "scale":
                w = G.constant_value(conv.inputs[1], cache=False)
                assert w is not None  # _geometry: a constant weight
                conv.inputs[1] = gs.Constant(base, _scaled(conv, w.astype(np.float64), c)
                                             .astype(np.float32))
                bias = bias * c
            else:
                bias = bias + c
            new_bias = gs.Constant(base + "_b", bias.astype(np.float32))
            if len(conv.inputs) > 2:
                conv.inputs[2] = new_bias
            else:
                conv.inputs.append(new_bias)
            conv.outputs[0] = node.outputs[0]
            G.detach(node)
            folded += 1
    return folded
