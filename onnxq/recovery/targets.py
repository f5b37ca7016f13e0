"""The compute nodes accuracy recovery works on: quantized Conv/ConvTranspose/Gemm/MatMul of
the main graph with a constant weight and a bias it can move (their own, or the Add after a
MatMul), with the tensors and axes the algorithms need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.kernels.isa import exact_depthwise
from onnxq.plan import QuantPlan
from onnxq.qtypes import QType
from onnxq.quant_math import dequantize, quantize, weight_params

__all__ = ["Target", "targets", "fake_quant_weight", "WeightQuantizer"]


class WeightQuantizer(Protocol):
    """The float values of a weight after int8 quantization along ``axis``; ``exact``: a
    weight that keeps 8 bits even where the target's others get 7 (``Target.exact``)."""

    def __call__(self, w: np.ndarray, axis: int | None, exact: bool = False) -> np.ndarray: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    node: str                  # the compute node
    op: str
    x: str                     # its activation input
    weight: str                # its weight tensor
    weight_index: int
    axis: int | None           # per-channel axis of the weight (None: per tensor)
    holder: str                # the node holding the bias (the node itself, or its Add)
    bias_index: int
    output: str                # the tensor that holds W·x + b
    channel_axis: int          # channel axis of x and of the output: 1 (conv) or -1
    beta: float = 1.0          # Gemm: the stored bias is scaled by beta
    exact: bool = False        # a depthwise conv: 8-bit weights on every target


def _is_float_const(t: gs.Tensor) -> bool:
    v = G.constant_shape(t)
    return v is not None and t.dtype is not None and np.dtype(t.dtype) == np.float32


def _target(node: gs.Node, plan_node, adds: dict[str, gs.Node]) -> Target | None:
    if plan_node.weight is None or node.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return None
    index, axis = plan_node.weight
    if index != 1 or not _is_float_const(node.inputs[1]) or not node.inputs[0].name:
        return None
    shape = G.constant_shape(node.inputs[1]) or ()
    conv = node.op in ("Conv", "ConvTranspose")
    if node.op == "MatMul" and len(shape) != 2:
        return None
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        return None
    common = dict(node=node.name, op=node.op, x=node.inputs[0].name,
                  weight=node.inputs[1].name, weight_index=1, axis=axis,
                  channel_axis=1 if conv else -1,
                  exact=node.op == "Conv" and exact_depthwise(shape, int(node.attrs.get("group", 1))))
    if plan_node.bias is not None and len(node.inputs) > plan_node.bias:
        if not _is_float_const(node.inputs[plan_node.bias]):
            return None
        return Target(**common, holder=node.name, bias_index=plan_node.bias,
                      output=node.outputs[0].name,
                      beta=float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0)
    found = (adds.get(plan_node.bias_add[0]), plan_node.bias_add[1]) \
        if plan_node.bias_add is not None else _bias_add(node, int(shape[-1]))
    add, index = found if found is not None else (None, 0)
    if add is None or not _is_float_const(add.inputs[index]):
        return None
    return Target(**common, holder=add.name, bias_index=index, output=add.outputs[0].name)


def _bias_add(node: gs.Node, width: int) -> tuple[gs.Node, int] | None:
    """The Add of a constant bias (``width`` values along the last axis) that alone reads a
    MatMul's output, even where the plan keeps it float (a 3-D MatMul's bias)."""
    if node.op != "MatMul" or len(node.outputs[0].outputs) != 1:
        return None
    add = node.outputs[0].outputs[0]
    if add.op != "Add":
        return None
    for index in (0, 1):
        other = add.inputs[index]
        shape = G.constant_shape(other)
        if other is not node.outputs[0] and shape is not None and shape and \
                shape[-1] == width and int(np.prod(shape)) == width:
            return add, index
    return None


def targets(graph: gs.Graph, plan: QuantPlan) -> list[Target]:
    """The recovery targets of ``graph`` (the prepared main graph) under ``plan``, in graph
    order."""
    nodes = {n.name: n for n in graph.nodes}
    adds = {n.name: n for n in graph.nodes if n.op == "Add"}
    out = []
    for plan_node in plan.nodes:
        node = nodes.get(plan_node.name)
        if node is not None and (t := _target(node, plan_node, adds)) is not None:
            out.append(t)
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    return sorted(out, key=lambda t: order[t.node])


def fake_quant_weight(qtype: QType, reduce_range: bool) -> WeightQuantizer:
    """The float values a weight takes after onnxq's int8 weight quantization (the same
    parameters ``InsertQDQPass`` computes)."""

    def run(w: np.ndarray, axis: int | None, exact: bool = False) -> np.ndarray:
        params = weight_params(w, qtype, axis=axis, reduce_range=reduce_range and not exact)
        return dequantize(quantize(w, params), params).astype(np.float32)

    return run
