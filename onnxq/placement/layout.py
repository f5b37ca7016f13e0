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

The placement's pairwise terms price conversions between float and int8 nodes; int8-to-int8
edges are free there. ``simulate`` walks a labelled graph in this order and prices what that
misses: u8 Transposes on int8 edges whose two sides end up in different layouts, the
Transpose an int8 elementwise node's NHWC output needs for a float reader, and MaxPools that
run the slow kernel. Float nodes are taken as NCHW (onnxruntime gives a float Conv its NCHWc
layout through reorders, which the table's float figures include).
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


@dataclass(slots=True)
class Layout:
    """What one labelling costs beyond the pairwise terms, and where."""

    #: (tensor, reader) → µs of a u8 Transpose there; reader None: a float reader
    edges: dict[tuple[str, str | None], float] = field(default_factory=dict)
    slow_pools: dict[str, float] = field(default_factory=dict)  # MaxPool → extra µs

    @property
    def us(self) -> float:
        return sum(self.edges.values()) + sum(self.slow_pools.values())


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
    out = Layout()
    int8 = {n for n, v in labels.items() if v}
    nhwc: dict[str, bool] = {}
    transpose = table.per_element("Transpose.u8")
    pool_extra = (table.per_element("MaxPool.u8") - table.per_element("MaxPool.nhwc")
                  if table.has("MaxPool.u8") and table.has("MaxPool.nhwc") else 0.0)

    def from_int8(t: gs.Tensor) -> bool:
        p = G.producer(t)
        return p is not None and p.name in int8

    def charge(t: gs.Tensor, reader: str | None) -> None:
        if _is4d(shapes, t.name):
            n = math.prod(shapes[t.name])
            out.edges[(t.name, reader)] = out.edges.get((t.name, reader), 0.0) + n * transpose

    outputs = G.graph_output_names(graph)
    for node in graph.nodes:
        data = _data(node)
        if node.name not in labels and node.op in _SINGLE and data and from_int8(data[0]):
            int8.add(node.name)  # quantized along with its producer
        if node.name not in int8 or not node.outputs:
            continue
        state = False
        if node.op == "Conv":
            state = True
            if data and not nhwc.get(data[0].name, False) and from_int8(data[0]):
                charge(data[0], node.name)
        elif node.op in _SINGLE and data:
            state = nhwc.get(data[0].name, False)
            if node.op == "MaxPool" and not state and from_int8(data[0]) \
                    and _is4d(shapes, data[0].name):
                out.slow_pools[node.name] = math.prod(shapes[data[0].name]) * pool_extra
        elif node.op in _MULTI and len(data) > 1:
            cost = sum(-_rank(shapes, t.name) if nhwc.get(t.name, False)
                       else _rank(shapes, t.name) for t in data)
            state = cost < 0
            for t in data:
                if nhwc.get(t.name, False) != state:
                    charge(t, node.name)
        nhwc[node.outputs[0].name] = state
        if state and node.op != "Conv":  # the pairwise border prices a Conv's own Transpose
            y = node.outputs[0]
            if any(not labels.get(r.name, r.op in _SINGLE) for r in y.outputs) \
                    or y.name in outputs:
                charge(y, None)
    return out
