"""Predicted float and int8 cost of each node of a graph (``costs.CostTable`` + shapes)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import onnx_graphsurgeon as gs

from onnxq.placement.costs import CostTable, NodeCost, conv_kind

__all__ = ["node_cost", "elements"]

#: int8 forms onnxruntime runs for each elective op (kernels of the cost table, per element)
_INT8 = {"Add": ("QLinearAdd",), "Mul": ("QLinearMul",), "HardSigmoid": ("QLinearAdd",),
         "HardSwish": ("QLinearAdd", "QLinearMul"), "Sigmoid": ("QLinearSigmoid",),
         "LeakyRelu": ("QLinearSigmoid",), "Softmax": ("QLinearSigmoid",),
         "GlobalAveragePool": ("QLinearGlobalAveragePool",), "AveragePool": ("QLinearAdd",),
         "Concat": ("QLinearAdd",), "Transpose": ("Transpose.u8",)}
_FLOAT = {"Add": ("Add",), "Mul": ("Mul",), "HardSigmoid": ("HardSwish",),
          "HardSwish": ("HardSwish",), "Sigmoid": ("Sigmoid",), "LeakyRelu": ("HardSwish",),
          "Softmax": ("Sigmoid",), "GlobalAveragePool": ("GlobalAveragePool",),
          "AveragePool": ("GlobalAveragePool",), "Concat": ("Add",), "Relu": ("Add",),
          "Clip": ("Add",), "Transpose": ("Transpose.f32",)}


#: onnxruntime's fast int8 conv (MLAS's symmetric indirect kernel) needs at least this many
#: output channels; below it the conv runs im2col + a GEMM of N = outputs, K = inputs × taps,
#: which is slow when K is small too. The tables measure c → c 3×3 convs, so their int8 rates
#: jump between 8 and 16 channels: a conv with 9-15 outputs and K under ``SLOW_CONV_DEPTH``
#: reads them at ``SLOW_CONV_CHANNELS`` (their last point below the jump), not interpolated
#: across it. swift-f0's 12 → 12 7×1 and 3×1 convs (K 84, 36) ran 0.5x the float ones where
#: interpolation said 1.3-1.5x; madmom's 30 → 10 3×3 ones (K 270) gain in int8 as predicted.
SYM_CONV_MIN_OUTPUTS = 16
SLOW_CONV_DEPTH = 128
SLOW_CONV_CHANNELS = 8


def elements(shapes: Mapping[str, tuple], name: str) -> int | None:
    shape = shapes.get(name)
    return None if shape is None else math.prod(shape)


def _conv(node: gs.Node, shapes, table: CostTable) -> NodeCost | None:
    x, w = shapes.get(node.inputs[0].name), shapes.get(node.inputs[1].name)
    y = shapes.get(node.outputs[0].name)
    if x is None or w is None or y is None or len(x) < 3:
        return None
    cin, group = x[1], int(node.attrs.get("group", 1))
    macs = math.prod(y) * (cin // max(group, 1)) * math.prod(w[2:]) / 1e6
    kind = conv_kind(node, cin)
    # the tables were measured on c → c convs; a c_in → c_out one is read at their geometric
    # mean (a 3-channel stem is slow in int8 with few outputs, fine with 64)
    channels = math.sqrt(cin * y[1]) if kind in ("pointwise", "dense3", "dense3.nd") else cin
    int8_channels = channels
    depth = (cin // max(group, 1)) * math.prod(w[2:])  # the GEMM's K: inputs × taps
    if kind in ("pointwise", "dense3") and y[1] < SYM_CONV_MIN_OUTPUTS and depth < SLOW_CONV_DEPTH:
        int8_channels = min(channels, SLOW_CONV_CHANNELS)
    return NodeCost(table.overhead("float") + macs * table.conv_rate(kind, "float", channels),
                    table.overhead("int8") + macs * table.conv_rate(kind, "int8", int8_channels))


def _gemm(node: gs.Node, shapes, table: CostTable) -> NodeCost | None:
    a, y = shapes.get(node.inputs[0].name), shapes.get(node.outputs[0].name)
    if a is None or y is None or not a or not y:
        return None
    transa = node.op == "Gemm" and int(node.attrs.get("transA", 0))
    k = a[-2] if transa else a[-1]
    rows = math.prod(y[:-1]) if len(y) > 1 else 1
    macs = rows * k * y[-1] / 1e6
    return NodeCost(table.overhead("float", "MatMul") + macs * table.gemm_rate("float", rows),
                    table.overhead("int8", "QLinearMatMul")
                    + macs * table.gemm_rate("int8", rows))


def _elementwise(node: gs.Node, shapes, table: CostTable) -> NodeCost | None:
    big = max((elements(shapes, t.name) or 0) for t in list(node.inputs) + list(node.outputs))
    if big == 0:
        return None
    bcast = node.op == "Mul" and len({elements(shapes, t.name) for t in node.inputs}) > 1
    i8 = ("QLinearMul.bcast",) if bcast else _INT8.get(node.op, ())
    f32 = ("Mul.bcast",) if bcast else _FLOAT.get(node.op, ())
    over_i = sum(table.overhead("int8", k.split(".")[0]) for k in i8)
    over_f = sum(table.overhead("float", k.split(".")[0]) for k in f32)
    return NodeCost(over_f + big * sum(table.per_element(k) for k in f32),
                    over_i + big * sum(table.per_element(k) for k in i8))


def _max_pool(node: gs.Node, shapes, table: CostTable) -> NodeCost | None:
    """float NCHW(c) or int8 NHWC (``NhwcMaxPool``); the slow u8 NCHW case is a border term
    (``place``). Per input element, read at the 2×2 pool the table measured."""
    if not table.has("MaxPool.nhwc"):
        return NodeCost(0.0, 0.0)
    n = elements(shapes, node.inputs[0].name)
    if n is None:
        return NodeCost(0.0, 0.0)
    return NodeCost(table.overhead("float") + n * table.per_element("MaxPool.f32"),
                    table.overhead("int8") + n * table.per_element("MaxPool.nhwc"))


def node_cost(node: gs.Node, shapes: Mapping[str, tuple], table: CostTable) -> NodeCost | None:
    """The node's own predicted µs in float and int8 at the shapes given; None when a shape is
    unknown. Data movement costs nothing either way; Relu/Clip nothing in int8 (folded)."""
    if node.op == "Conv" and len(node.inputs) > 1:
        return _conv(node, shapes, table)
    if node.op in ("Gemm", "MatMul"):
        return _gemm(node, shapes, table)
    if node.op == "MaxPool" and len(node.outputs) == 1:
        return _max_pool(node, shapes, table)
    if node.op in _INT8 or node.op in _FLOAT:
        cost = _elementwise(node, shapes, table)
        if cost is not None and node.op in ("Relu", "Clip"):
            return NodeCost(cost.float_us, 0.0)
        return cost
    return NodeCost(0.0, 0.0)
