"""Bias and weight edits for accuracy recovery (bias correction, weight rounding).

``AddZeroBiasPass`` gives a Conv/ConvTranspose/Gemm without a bias a zero one (numerically a
no-op), so that a later correction has a bias to move and the plan quantizes it as int32.
``SetBiasPass`` writes given values into a node's bias (a new constant: a constant shared with
another node is never changed under it); ``SetWeightPass`` does the same for weights (the
on-grid values weight rounding chose). Setting the values
a tensor already holds is no change, so a second run reports ``modified=False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.pipeline import PassResult

__all__ = ["AddZeroBiasPass", "SetBiasPass", "SetWeightPass", "bias_width"]


def bias_width(node: gs.Node) -> int | None:
    """The number of output channels of a Conv/ConvTranspose/Gemm with a constant weight."""
    shape = G.constant_shape(node.inputs[1]) if len(node.inputs) > 1 else None
    if not shape or len(shape) < 2:
        return None
    if node.op == "Conv":
        return int(shape[0])
    if node.op == "ConvTranspose":
        return int(shape[1]) * int(node.attrs.get("group", 1))
    if node.op == "Gemm":
        return int(shape[0] if node.attrs.get("transB", 0) else shape[1])
    return None


def _float_weight(node: gs.Node) -> bool:
    w = node.inputs[1] if len(node.inputs) > 1 else None
    return (G.constant_shape(w) is not None and w is not None and w.dtype is not None
            and np.dtype(w.dtype) == np.float32)


def _has_bias(node: gs.Node) -> bool:
    return len(node.inputs) > 2 and bool(node.inputs[2].name)


@dataclass(frozen=True, slots=True, kw_only=True)
class AddZeroBiasPass:
    ops: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm")
    name: str = "add_zero_bias"

    def run(self, graph: gs.Graph) -> PassResult:
        modified = False
        for node in graph.nodes:
            if node.op not in self.ops or _has_bias(node) or not _float_weight(node):
                continue
            width = bias_width(node)
            if width is None:
                continue
            name = G.unique_name(graph, f"{node.name}_bias")
            bias = gs.Constant(name, np.zeros(width, np.float32))
            if len(node.inputs) == 2:
                node.inputs.append(bias)
            else:
                node.inputs[2] = bias
            if node.op == "Gemm" and float(node.attrs.get("beta", 1.0)) == 0.0:
                node.attrs["beta"] = 1.0  # a zero bias: beta no longer matters, 1 keeps it used
            modified = True
        return PassResult(graph=graph, modified=modified)


def _set(graph: gs.Graph, node: gs.Node, index: int, values: np.ndarray, label: str
         ) -> tuple[bool, str | None]:
    """Write ``values`` into ``node.inputs[index]`` (a new constant); (modified, why not)."""
    if index >= len(node.inputs) or not node.inputs[index].name:
        return False, f"has no {label} input to set"
    old = G.constant_value(node.inputs[index])
    if old is None:
        return False, f"its {label} is not a constant"
    if old.size != values.size:
        return False, f"its {label} has {old.size} values, the correction {values.size}"
    new = np.asarray(values, old.dtype).reshape(old.shape)
    if np.array_equal(new, old):
        return False, None
    name = G.unique_name(graph, f"{node.name}_{label}")
    node.inputs[index] = gs.Constant(name, new)
    return True, None


def _run_set(graph: gs.Graph, values: Mapping[tuple[str, int], np.ndarray], label: str
             ) -> PassResult:
    nodes = {n.name: n for n in graph.nodes}
    modified = False
    skipped = []
    for (holder, index), value in sorted(values.items()):
        node = nodes.get(holder)
        if node is None:
            continue
        changed, why = _set(graph, node, index, value, label)
        modified |= changed
        if why:
            skipped.append((holder, f"{label} not corrected: {why}"))
    return PassResult(graph=graph, modified=modified, skipped=tuple(skipped))


@dataclass(frozen=True, slots=True, kw_only=True)
class SetBiasPass:
    """``biases``: (node holding the bias, input index) → the bias values to store."""

    biases: Mapping[tuple[str, int], np.ndarray]
    name: str = "set_bias"

    def run(self, graph: gs.Graph) -> PassResult:
        return _run_set(graph, self.biases, "bias")



@dataclass(frozen=True, slots=True, kw_only=True)
class SetWeightPass:
    """``weights``: (node, weight input index) → the weight values to store."""

    weights: Mapping[tuple[str, int], np.ndarray]
    name: str = "set_weight"

    def run(self, graph: gs.Graph) -> PassResult:
        return _run_set(graph, self.weights, "weight")
