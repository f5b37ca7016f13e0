"""Which int8 tensors onnxruntime's CPU EP keeps in NHWC, for one labelling of the placement.

onnxruntime runs an int8 Conv in NHWC (``QLinearConv`` wrapped in Transposes) and then pushes
those Transposes through the nodes after it, cancelling them pairwise. Through a node with one
data input (a folded Relu, a u8 MaxPool that becomes ``NhwcMaxPool``, a Pad) a Transpose always
moves on. Through a node with several (``QLinearAdd``, ``QLinearMul``, ``QLinearConcat``) it
moves only when that lowers the number of transposed dimensions: each input that arrives
transposed counts minus its rank, each one that does not counts plus its rank (dimensions of
size 1 not counted), constants nothing, and it moves only on a negative sum. So a residual Add
with one input from an int8 Conv and the other quantized from a float region stays NCHW (a tie):
its int8 Conv input gets a Transpose back, the int8 Conv after it a Transpose forward, and a
u8 MaxPool after it onnxruntime's plain NCHW kernel (~30x the NHWC one).

The placement's pairwise terms price every float ↔ int8 border (its QuantizeLinear or
DequantizeLinear and the layout change there). What they cannot see is a tie's reach: an int8
tensor that is NCHW not because a float node is next to it but because a multi-input node
upstream stayed NCHW. ``simulate`` walks a labelled graph in order, marks each int8 tensor
NHWC, NCHW at a border, or NCHW from a tie, and prices what ties cause between int8 nodes: the
u8 Transposes into and out of the tied node and into the int8 Convs downstream of it, and
the u8 MaxPools downstream of it, left on the slow kernel, and the u8 MaxPools a border reaches
through int8 nodes (a float Conv, an int8 LeakyRelu, the pool). An NCHW tensor at a float border
is not charged again; nor is the float side's NCHWc layout (reorders around float ops that do not
support it), so the two sides are treated alike. Measured on the zoo, charging the border
Transposes without the float reorders moved nodes to float that were faster int8.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.placement.costs import CostTable

__all__ = ["Layout", "simulate"]

#: int8 nodes with one data input that a Transpose is always pushed through
_SINGLE = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "MaxPool",
                     "AveragePool", "GlobalAveragePool", "Pad", "Resize"})
#: int8 nodes with several data inputs (QLinearAdd / QLinearMul / QLinearConcat)
_MULTI = frozenset({"Add", "Mul", "Concat"})
_UNKNOWN_RANK = 5  # onnxruntime's estimate for a tensor of unknown shape
_NHWC, _BORDER, _TIE = 0, 1, 2


@dataclass(slots=True)
class Layout:
    """What one labelling costs beyond the pairwise terms, and where."""

    #: (tensor, int8 reader) → µs of a u8 Transpose there (both nodes int8)
    edges: dict[tuple[str, str], float] = field(default_factory=dict)
    slow_pools: dict[str, float] = field(default_factory=dict)  # MaxPool → extra µs
    #: an int8 Mul / Add with a per-channel constant that runs on NHWC data → extra µs
    slow_scales: dict[str, float] = field(default_factory=dict)

    @property
    def us(self) -> float:
        return (sum(self.edges.values()) + sum(self.slow_pools.values())
                + sum(self.slow_scales.values()))


def _data(node: gs.Node) -> list[gs.Tensor]:
    return [t for t in node.inputs if t.name and not isinstance(t, gs.Constant)
            and G.constant_value(t) is None]


def _rank(shapes: Mapping[str, tuple], name: str) -> int:
    shape = shapes.get(name)
    return _UNKNOWN_RANK if shape is None else sum(1 for d in shape if d != 1)


def _is4d(shapes: Mapping[str, tuple], name: str) -> bool:
    shape = shapes.get(name)
    return shape is not None and len(shape) == 4


def simulate(graph: gs.Graph, labels: Mapping[str, bool], shapes: Mapping[str, tuple],
             table: CostTable) -> Layout:
    """The layout cost of a labelling: ``labels`` maps each placement candidate to True (int8)
    or False (float). Other nodes are float, except the one-input activations the plan
    quantizes with their producer (the HardSigmoid of a HardSwish pair): int8 after an int8
    node."""
    walk = _Walk(graph, labels, shapes, table)
    for node in graph.nodes:
        data = _data(node)
        if node.name not in labels and node.op in _SINGLE and data and walk.from_int8(data[0]):
            walk.int8.add(node.name)  # quantized along with its producer
        if node.outputs and node.name in walk.int8:
            walk.int8_node(node, data)
    return walk.out


class _Walk:
    """Layout state per int8 tensor: ``_NHWC``, ``_BORDER`` (NCHW next to a float node, priced
    by the pairwise border) or ``_TIE`` (NCHW because a multi-input node upstream stayed
    NCHW)."""

    def __init__(self, graph: gs.Graph, labels: Mapping[str, bool], shapes, table) -> None:
        self.labels, self.shapes, self.out = labels, shapes, Layout()
        self.int8 = {n for n, v in labels.items() if v}
        self.state: dict[str, int] = {}
        self.outputs = G.graph_output_names(graph)
        self.table = table
        self.u8 = table.per_element("Transpose.u8")
        self.pool_extra = (table.per_element("MaxPool.u8") - table.per_element("MaxPool.nhwc")
                           if table.has("MaxPool.u8") and table.has("MaxPool.nhwc") else 0.0)

    def _int8_above(self, t: gs.Tensor) -> bool:
        """``t``'s producer, past the Relu/Clip folded into a QuantizeLinear, is int8: a pool
        reading it NCHW sits behind a border further up (an int8 LeakyRelu after a float Conv),
        which the pool's own pairwise term (``place``) does not see."""
        u = G.producer(t)
        while u is not None and u.op in ("Relu", "Clip") and u.inputs:
            u = G.producer(u.inputs[0])
        return u is not None and u.name in self.int8

    def from_int8(self, t: gs.Tensor) -> bool:
        p = G.producer(t)
        return p is not None and p.name in self.int8

    def of(self, t: gs.Tensor) -> int:
        return self.state.get(t.name, _BORDER) if self.from_int8(t) else _BORDER

    def charge(self, t: gs.Tensor, reader: gs.Node) -> None:
        if _is4d(self.shapes, t.name):
            key = (t.name, reader.name)
            self.out.edges[key] = (self.out.edges.get(key, 0.0)
                                   + math.prod(self.shapes[t.name]) * self.u8)

    def _scale_on_nhwc(self, node: gs.Node, x: gs.Tensor) -> None:
        """A per-channel scale or shift (a BatchNorm after a ReLU) of an NHWC tensor:
        onnxruntime loops over the channel runs, slow with few channels (0.5 ns per element at
        32 channels, 3-7 at 8 or 4, against 0.25 NCHW; ``bcast_nhwc``)."""
        shape = self.shapes.get(x.name)
        if shape is None or len(shape) != 4 or shape[1] <= 1:
            return
        other = [G.constant_shape(t) for t in node.inputs if t is not x]
        if len(other) != 1 or other[0] is None or math.prod(other[0]) != shape[1]:
            return  # a scalar (HardSwish's + 3) runs as one span; not a per-channel constant
        op = "QLinearMul" if node.op == "Mul" else "QLinearAdd"
        nchw = self.table.per_element("QLinearMul.bcast" if op == "QLinearMul" else op)
        extra = math.prod(shape) * (self.table.bcast_nhwc(op, shape[1]) - nchw)
        if extra > 0:
            self.out.slow_scales[node.name] = extra

    def int8_node(self, node: gs.Node, data: list[gs.Tensor]) -> None:
        state = _BORDER
        if node.op == "Conv":
            state = _NHWC
            if data and self.of(data[0]) == _TIE:
                self.charge(data[0], node)
        elif node.op in _SINGLE and data or node.op in _MULTI and len(data) == 1:
            state = self.of(data[0])  # (a Transpose is always pushed through one data input)
            if node.op in ("Mul", "Add") and state == _NHWC:
                self._scale_on_nhwc(node, data[0])
            if node.op == "MaxPool" and _is4d(self.shapes, data[0].name) and (
                    state == _TIE or state == _BORDER and self._int8_above(data[0])):
                self.out.slow_pools[node.name] = (math.prod(self.shapes[data[0].name])
                                                  * self.pool_extra)
        elif node.op in _MULTI and len(data) > 1:
            states = [self.of(t) for t in data]
            cost = sum(-_rank(self.shapes, t.name) if s_ == _NHWC else _rank(self.shapes, t.name)
                       for t, s_ in zip(data, states, strict=True))
            state = _NHWC if cost < 0 else _TIE
            for t, s_ in zip(data, states, strict=True):  # transposed to the node's layout
                if s_ == _NHWC and state == _TIE or s_ == _TIE and state == _NHWC:
                    self.charge(t, node)
        self.state[node.outputs[0].name] = state
