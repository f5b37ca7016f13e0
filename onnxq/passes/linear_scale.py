"""A constant per-column scale after a MatMul/Gemm with a constant weight folded into the
weight (and the bias between them) — a rule of ``FusionPass``.

``x·W (+ b) → Mul(γ)`` (or ``Div(γ)``) with one ``γ`` per output column is ``x·(W·diag γ) (+
b·γ)``. Transformers write it as a layer scale after a block's last projection (ConvNeXt,
CaiT, DeiT III), and some exports scale the attention query after its projection. Folded, the
elementwise op is gone (in an int8 model it was a float pass over the product of its own), and
the scale lives in the per-column weight scales, at no cost in precision. Exact up to float
rounding.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G

__all__ = ["fold_linear_scale"]


def _sole_reader(t: gs.Tensor, outputs: set[str], ops: tuple[str, ...]) -> gs.Node | None:
    if t.name in outputs or len(t.outputs) != 1 or t.outputs[0].op not in ops:
        return None
    node = t.outputs[0]
    return node if len(node.inputs) == 2 and len(node.outputs) == 1 else None


def _columns(node: gs.Node, t: gs.Tensor, n: int, max_rank: int) -> np.ndarray | None:
    """The other input of ``node`` (beside ``t``) as one float per output column (a scalar
    repeated), when applying it neither widens nor re-shapes the product; else None."""
    other = node.inputs[1] if node.inputs[0] is t else node.inputs[0]
    if node.op == "Div" and node.inputs[0] is not t:
        return None
    value = G.constant_value(other, cache=False)
    if value is None or value.dtype != np.float32 or value.ndim > max_rank:
        return None
    if value.size == 1:
        return np.full(n, float(value.reshape(-1)[0]), np.float64)
    if value.size != n or value.shape[-1] != n:
        return None
    return value.reshape(n).astype(np.float64)


def _weight(node: gs.Node) -> tuple[tuple[int, ...], int] | None:
    """(shape of the constant 2-D float weight, the axis of its output columns) of a
    MatMul/Gemm, read without loading the weight (it may be a large one kept in its file)."""
    if len(node.inputs) < 2 or len(node.outputs) != 1:
        return None
    shape = G.constant_shape(node.inputs[1])
    if shape is None or len(shape) != 2 or not G.is_float32_constant(node.inputs[1]):
        return None
    if node.op == "Gemm":
        if node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0 \
                or node.attrs.get("transA", 0):
            return None
        return shape, 0 if int(node.attrs.get("transB", 0)) else 1
    return shape, 1


def _fold_one(graph: gs.Graph, node: gs.Node, outputs: set[str]) -> bool:
    found = _weight(node)
    if found is None:
        return False
    w_shape, axis = found
    n = w_shape[axis]
    x = node.inputs[0]
    max_rank = len(x.shape) if x.shape is not None else 1  # unknown: never widen
    y, add = node.outputs[0], None
    if node.op == "MatMul" and (add := _sole_reader(y, outputs, ("Add",))) is not None:
        if _columns(add, y, n, max_rank) is None:
            return False
        y = add.outputs[0]
    scale = _sole_reader(y, outputs, ("Mul", "Div"))
    c = None if scale is None else _columns(scale, y, n, max_rank)
    if scale is None or c is None or (scale.op == "Div" and not np.all(c != 0)):
        return False
    c = 1.0 / c if scale.op == "Div" else c
    holder, index = (add, 1 if add.inputs[0] is node.outputs[0] else 0) if add is not None \
        else (node, 2)
    bias = None
    if len(holder.inputs) > index and holder.inputs[index].name:
        bias = G.constant_value(holder.inputs[index], cache=False)
        if bias is None or bias.dtype != np.float32 or not (bias.size == 1
                                                            or bias.shape[-1] == n):
            return False  # a Gemm's C computed at run time, or not per column
    base = G.unique_name(graph, f"{node.inputs[1].name}_{scale.op.lower()}", ("", "_b"))
    shaped = c.reshape((1, n) if axis == 1 else (n, 1))
    w = G.constant_value(node.inputs[1], cache=False)
    assert w is not None  # _weight: a constant weight
    node.inputs[1] = gs.Constant(base, (w.astype(np.float64) * shaped).astype(np.float32))
    if bias is not None:
        grown = np.broadcast_to(bias.astype(np.float64), np.broadcast_shapes(bias.shape, (n,)))
        holder.inputs[index] = gs.Constant(base + "_b", (grown * c).astype(np.float32))
    last = add if add is not None else node
    last.outputs[0] = scale.outputs[0]
    G.detach(scale)
    return True


def fold_linear_scale(graph: gs.Graph, outputs: set[str]) -> int:
    """Fold every per-column constant ``Mul``/``Div`` that alone reads a MatMul/Gemm product
    with a constant 2-D weight (directly, or through a per-column constant bias ``Add``) into
    the weight and bias; returns how many were folded."""
    folded = 0
    for node in list(graph.nodes):
        if node.op in ("MatMul", "Gemm") and _fold_one(graph, node, outputs):
            folded += 1
    return folded
