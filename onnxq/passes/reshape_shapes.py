"""Reshape targets computed from ``Shape`` become constants, where the copied dims are provably
the same dims of the Reshape's own input.

Exporters write a head split such as ``x.view(x.size(0), x.size(1), 12, 64)`` as
``Shape(h) → Gather(0|1) → Unsqueeze → Concat(…, 12, 64) → Reshape(x, ·)``, once per Reshape
(all-MiniLM-L6-v2 from torch.onnx: 24 such Reshapes and 70 shape ops). onnxruntime runs those
small ops on every call, in float as in int8. ONNX's Reshape copies an input dim where its
target holds ``0`` (``allowzero = 0``), so such a target can be the constant ``[0, 0, 12, 64]``
when dim ``k`` of the tensor being reshaped is dim ``i`` of the tensor the ``Shape`` read, for
each piece ``Gather(Shape(h), i)`` at position ``k``.

The proof follows each dim back to where it was made (``_Tracer.origin``): through ops that
keep their input's dims (elementwise ops, Q/DQ, Softmax, LayerNormalization), Transpose (its
permutation), MatMul (rows from ``A``, columns from ``B``), Gather (the indices' dims), Slice and
Unsqueeze (the dims they keep), ConstantOfShape and Reshapes whose target copies or names the
dim. A dim made by broadcasting (elementwise ops, MatMul's batch dims) is followed only where
one input makes it or all inputs that can make it share one origin: two symbolic dims can still
broadcast. Two dims are the same when they come from the same dim of the same tensor, when
shape inference gives both the same number, or when they are graph-input dims declared with the
same ``dim_param``. Anything else ends the trace at that tensor, so an unproven Reshape keeps
its computed target: the rewrite never changes a value. The shape ops left unread are removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.pipeline import PassResult

__all__ = ["ReshapeShapePass"]

#: ops whose output has their first input's shape
_SAME = frozenset({
    "Identity", "Cast", "Relu", "LeakyRelu", "Elu", "Selu", "Gelu", "Erf", "Tanh", "Sigmoid",
    "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Neg", "Abs", "Exp", "Log", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Not", "Clip", "Softmax", "LogSoftmax",
    "LayerNormalization", "Dropout", "QuantizeLinear", "DequantizeLinear", "FastGelu",
    "BiasGelu", "QuickGelu", "SkipLayerNormalization", "BatchNormalization",
    "InstanceNormalization", "Mish", "ThresholdedRelu", "Celu", "PRelu"})
#: elementwise ops with multidirectional broadcasting
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Sum", "Max", "Min", "Mean",
                        "Where", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
                        "And", "Or", "Xor", "Mod", "BitShift"})
#: steps an origin trace may take (a deep encoder's residual chain is a few hundred), and how
#: deep traces may nest where broadcasting inputs are compared
_MAX_STEPS = 4096
_MAX_DEPTH = 64

Dim = tuple  # ("value", n) | ("param", name) | (tensor name, axis)


def _rank(t: gs.Tensor) -> int | None:
    return None if t.shape is None else len(t.shape)


def _literal(t: gs.Tensor, axis: int):
    """The inferred dim: an int, a symbol, or None."""
    return None if t.shape is None or axis >= len(t.shape) else t.shape[axis]


def _aligned(inputs, out_rank: int, axis: int) -> list[tuple[gs.Tensor, int]] | None:
    """The inputs (with their axis) whose dim broadcasts into output dim ``axis``: those that
    have it and where it is not the literal 1. None if an input's rank is unknown."""
    found = []
    for t in inputs:
        rank = _rank(t)
        if rank is None:
            return None
        k = axis - (out_rank - rank)
        if k >= 0 and _literal(t, k) != 1:
            found.append((t, k))
    return found


class _Tracer:
    """Dim origins, memoized. A dim made by broadcasting is followed only where a single input
    makes it, or where every input that could make it has the same origin: two symbolic dims
    can still broadcast (one of them 1 at run time), so neither alone is the output's. Graph
    inputs whose dims are declared with the same ``dim_param`` name have the same dim (ONNX's
    named dimensions: ``input_ids`` and ``attention_mask`` both ``[batch, sequence]``)."""

    def __init__(self, inputs: list[gs.Tensor]) -> None:
        self.inputs = {id(t) for t in inputs}  # the graph's own inputs
        self.pieces: dict[int, list | None] = {}
        self.memo: dict[tuple[int, int], Dim] = {}
        self.depth = 0

    def origin(self, t: gs.Tensor, axis: int) -> Dim:
        """The dim that ``t``'s dim ``axis`` copies, as ("value", n) when inference knows the
        number, else (tensor name, axis) of the first tensor the trace cannot go past."""
        key = (id(t), axis)
        if key in self.memo:
            return self.memo[key]
        start = key
        for _ in range(_MAX_STEPS):
            literal = _literal(t, axis)
            if isinstance(literal, (int, np.integer)) and not isinstance(literal, bool):
                found: Dim = ("value", int(literal))
                break
            up = self._step(t, axis)
            if up is None:
                named = id(t) in self.inputs and isinstance(literal, str) and literal
                found = ("param", literal) if named else (t.name, axis)
                break
            if isinstance(up[0], str):  # an origin resolved across broadcasting inputs
                found = up
                break
            t, axis = up
        else:
            found = (t.name, axis)
        self.memo[start] = found
        return found

    def _joined(self, candidates) -> tuple | None:
        """The one candidate, or the origin all candidates share; None otherwise."""
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        if self.depth >= _MAX_DEPTH:
            return None
        self.depth += 1
        try:
            origins = {self.origin(t, k) for t, k in candidates} - {("value", 1)}
        finally:
            self.depth -= 1  # a dim proven 1 broadcasts: the others make the output's
        return next(iter(origins)) if len(origins) == 1 else None

    def _step(self, t: gs.Tensor, axis: int) -> tuple | None:
        """Where dim ``axis`` of ``t`` comes from, one op up: (tensor, axis), a resolved
        origin, or None where the trace ends."""
        node = G.producer(t)
        rank = _rank(t)
        if node is None or rank is None or axis >= rank or t is not node.outputs[0]:
            return None
        op = node.op
        if op in _SAME:
            return (node.inputs[0], axis) if _rank(node.inputs[0]) == rank else None
        if op in _BROADCAST:
            # every input broadcasts into the output (Where's condition too)
            return self._joined(_aligned([x for x in node.inputs if x.name], rank, axis))
        if op == "MatMul":
            return self._matmul(node, rank, axis)
        if op == "Transpose":
            perm = node.attrs.get("perm") or list(range(rank))[::-1]
            return node.inputs[0], int(perm[axis])
        if op == "Gather":
            return _gather_source(node, axis)
        if op == "Slice":
            return _slice_source(node, axis)
        if op == "ConstantOfShape":  # its dims are the values of its input
            dims = _dims_of(node.inputs[0])
            piece = dims[axis] if dims is not None and axis < len(dims) else None
            return piece if isinstance(piece, tuple) else None
        if op == "Unsqueeze":
            return _unsqueeze_source(node, rank, axis)
        if op == "Reshape" and not int(node.attrs.get("allowzero", 0)):
            pieces = self.pieces_of(node)
            if pieces is not None and axis < len(pieces):
                piece = pieces[axis]
                if piece == 0:
                    return node.inputs[0], axis
                if isinstance(piece, tuple):
                    return piece
        return None

    def _matmul(self, node: gs.Node, out_rank: int, axis: int) -> tuple | None:
        a, b = node.inputs[0], node.inputs[1]
        ra, rb = _rank(a), _rank(b)
        if ra is None or rb is None or ra < 2 or rb < 2:
            return None
        if axis == out_rank - 1:
            return b, rb - 1
        if axis == out_rank - 2:
            return a, ra - 2
        batch = [(t, axis - (out_rank - r)) for t, r in ((a, ra), (b, rb))
                 if 0 <= axis - (out_rank - r) < r - 2
                 and _literal(t, axis - (out_rank - r)) != 1]
        return self._joined(batch)

    def pieces_of(self, node: gs.Node) -> list | None:
        return _pieces(node, self.pieces)


def _constant_ints(node: gs.Node, index: int, attr: str) -> list[int] | None:
    if len(node.inputs) > index and node.inputs[index].name:
        value = G.constant_value(node.inputs[index])
        return None if value is None else [int(v) for v in np.ravel(value)]
    value = node.attrs.get(attr)
    return None if value is None else [int(v) for v in value]


def _slice_source(node: gs.Node, axis: int) -> tuple[gs.Tensor, int] | None:
    """A dim that the Slice does not slice is its input's."""
    data = node.inputs[0]
    rank = _rank(data)
    starts = _constant_ints(node, 1, "starts")
    axes = _constant_ints(node, 3, "axes")
    if rank is None or starts is None:
        return None
    sliced = {a % rank for a in (axes if axes is not None else range(len(starts)))}
    return None if axis in sliced else (data, axis)


def _unsqueeze_source(node: gs.Node, out_rank: int, axis: int) -> tuple[gs.Tensor, int] | None:
    axes = _constant_ints(node, 1, "axes")
    if axes is None:
        return None
    added = sorted(a % out_rank for a in axes)
    if axis in added:
        return None  # a literal 1, which inference already knows
    return node.inputs[0], axis - sum(1 for a in added if a < axis)


def _gather_source(node: gs.Node, axis: int) -> tuple[gs.Tensor, int] | None:
    data, indices = node.inputs[0], node.inputs[1]
    rd, ri = _rank(data), _rank(indices)
    if rd is None or ri is None or rd == 0:
        return None
    gather_axis = int(node.attrs.get("axis", 0)) % rd
    if axis < gather_axis:
        return data, axis
    if axis < gather_axis + ri:
        return indices, axis - gather_axis
    return data, axis - ri + 1


def _shape_dims(node: gs.Node) -> list[tuple[gs.Tensor, int]] | None:
    """For a ``Shape`` node: (its input, axis) per element of its output."""
    x = node.inputs[0]
    rank = _rank(x)
    if rank is None:
        return None
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    axes = range(rank)[start:(int(end) if end is not None else None)]
    return [(x, a) for a in axes]


def _dims_of(t: gs.Tensor) -> list | None:
    """The elements of an int64 shape piece: ints for constants, (tensor, axis) for dims read
    by Shape (through Gather, Slice, Unsqueeze, Squeeze); None if it is anything else."""
    value = G.constant_value(t)
    if value is not None:
        return [int(v) for v in np.ravel(value)] if value.dtype == np.int64 else None
    node = G.producer(t)
    if node is None:
        return None
    if node.op == "Shape":
        return _shape_dims(node)
    if node.op in ("Unsqueeze", "Squeeze", "Identity"):
        inner = _dims_of(node.inputs[0])
        return inner if inner is not None and len(inner) == 1 else None
    if node.op == "Gather" and int(node.attrs.get("axis", 0)) == 0:
        source, index = _dims_of(node.inputs[0]), G.constant_value(node.inputs[1])
        if source is None or index is None or index.ndim > 1:
            return None
        picked = [int(i) for i in np.ravel(index)]
        if any(not -len(source) <= i < len(source) for i in picked):
            return None
        return [source[i] for i in picked]
    if node.op == "Slice":
        return _sliced(node)
    return None


def _sliced(node: gs.Node) -> list | None:
    """``Slice(Shape(x), begin, end)`` along its only axis, with step 1."""
    source = _dims_of(node.inputs[0])
    bounds = [G.constant_value(t) if t.name else None for t in node.inputs[1:]]
    if source is None or len(bounds) < 2:
        return None
    first, last = bounds[0], bounds[1]
    axes = bounds[2] if len(bounds) > 2 else None
    steps = bounds[3] if len(bounds) > 3 else None
    if first is None or last is None or first.size != 1 or last.size != 1:
        return None
    if (axes is not None and int(np.ravel(axes)[0]) not in (0, -1)) or (
            steps is not None and int(np.ravel(steps)[0]) != 1):
        return None
    return source[int(np.ravel(first)[0]):int(np.ravel(last)[0])]


def _pieces(node: gs.Node, cache: dict) -> list | None:
    """The elements of a Reshape's target: ints, or (tensor, axis) for a copied dim."""
    if id(node) in cache:
        return cache[id(node)]
    target = node.inputs[1] if len(node.inputs) > 1 else None
    found = None
    if target is not None:
        maker = G.producer(target)
        if maker is not None and maker.op == "Concat" and int(maker.attrs.get("axis", 0)) in (0,
                                                                                         -1):
            parts = [_dims_of(t) for t in maker.inputs]
            found = [e for p in parts if p is not None for e in p]
            found = None if any(p is None for p in parts) else found
        else:
            found = _dims_of(target)
    cache[id(node)] = found
    return found


def _constant_target(node: gs.Node, tracer: _Tracer) -> np.ndarray | None:
    """The Reshape's target as a constant, or None where a copied dim is not proven."""
    if int(node.attrs.get("allowzero", 0)) or G.constant_value(node.inputs[1]) is not None:
        return None
    pieces = tracer.pieces_of(node)
    data = node.inputs[0]
    rank = _rank(data)
    if pieces is None or rank is None or not any(isinstance(p, tuple) for p in pieces):
        return None
    out = []
    for k, piece in enumerate(pieces):
        if not isinstance(piece, tuple):
            out.append(piece)
            continue
        source, axis = piece
        if k >= rank or tracer.origin(data, k) != tracer.origin(source, axis):
            return None
        out.append(0)
    return np.array(out, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class ReshapeShapePass:
    """Constant Reshape targets (``0`` for a proven copied dim) instead of shape arithmetic."""

    name: str = "reshape_shapes"

    def run(self, graph: gs.Graph) -> PassResult:
        tracer = _Tracer(list(graph.inputs))
        targets = []
        for node in graph.nodes:
            if node.op == "Reshape" and len(node.inputs) > 1 and node.inputs[1].name:
                target = _constant_target(node, tracer)
                if target is not None:
                    targets.append((node, target))
        for node, target in targets:
            name = G.unique_name(graph, f"{node.name}_target")
            node.inputs[1] = gs.Constant(name, target)
        if targets:
            graph.cleanup().toposort()
        notes = (f"{len(targets)} Reshape target(s) made constant (copied dims proven): the "
                 "shape arithmetic before them no longer runs",) if targets else ()
        return PassResult(graph=graph, modified=bool(targets), notes=notes)
