"""A constant per-channel ``Add`` after a Conv/ConvTranspose folded into its bias (a rule of
``FusionPass``).

Exporters that write the bias as a separate op (PaddlePaddle's ConvTranspose, some Keras
and TFLite conversions) leave ``Conv → Add(c)`` where ``c`` is one value per output channel.
Folded, the Add is gone, and a BatchNormalization after it can fold into the conv as well
(PP-OCR's DB head: ``ConvTranspose → Add → BatchNormalization → Relu`` becomes one
ConvTranspose and a Relu). Exact up to float rounding of the bias sum.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G

__all__ = ["fold_conv_add"]


def _out_channels(conv: gs.Node) -> tuple[int, int] | None:
    """(output channels, weight rank) of a Conv/ConvTranspose with a constant float weight."""
    shape = G.constant_shape(conv.inputs[1]) if len(conv.inputs) > 1 else None
    if shape is None or len(shape) < 3:
        return None
    if conv.op == "Conv":
        return shape[0], len(shape)
    return shape[1] * int(conv.attrs.get("group", 1)), len(shape)


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as one float per output channel, when adding it to an ``[N, C, …]`` output of
    ``rank`` dims neither broadcasts that output to a larger shape nor varies along N or the
    spatial axes; else None."""
    if value.dtype != np.float32 or value.ndim > rank or value.size != channels:
        return None  # a scalar shift of many channels is an activation's (x + 3), not a bias
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[1] != channels or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return value.reshape(channels).astype(np.float64)


def fold_conv_add(graph: gs.Graph, outputs: set[str]) -> int:
    """Fold every ``Conv|ConvTranspose → Add(constant per-channel)`` whose conv output is read
    by that Add only into the conv's bias; returns how many were folded."""
    folded = 0
    for conv in list(graph.nodes):
        if conv.op not in ("Conv", "ConvTranspose") or len(conv.outputs) != 1:
            continue
        y = conv.outputs[0]
        if y.name in outputs or len(y.outputs) != 1 or y.outputs[0].op != "Add":
            continue
        add, geometry = y.outputs[0], _out_channels(conv)
        others = [t for t in add.inputs if t is not y]
        if geometry is None or len(add.inputs) != 2 or len(others) != 1:
            continue
        value = G.constant_value(others[0])
        extra = None if value is None else _per_channel(value, *geometry)
        bias = G.constant_value(conv.inputs[2]) if len(conv.inputs) > 2 and \
            conv.inputs[2].name else np.zeros(geometry[0], np.float32)
        if extra is None or bias is None or bias.shape != (geometry[0],):
            continue
        new_bias = gs.Constant(f"{conv.name}_bias_add",
                               (bias.astype(np.float64) + extra).astype(np.float32))
        if len(conv.inputs) > 2:
            conv.inputs[2] = new_bias
        else:
            conv.inputs.append(new_bias)
        conv.outputs[0] = add.outputs[0]
        G.detach(add)
        folded += 1
    return folded
