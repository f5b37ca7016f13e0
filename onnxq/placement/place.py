"""Latency-aware placement: int8 or float for each planned node of a graph (the main graph, or
one Loop or Scan body, per iteration), from the cost model, the conversions at every border
included.

The choice is an exact minimisation (``mincut.Energy``): each planned node costs its predicted
float or int8 time; an edge between a float and an int8 node costs the QuantizeLinear or
DequantizeLinear and layout changes onnxruntime adds there; an activation after a float Conv
costs nothing (onnxruntime fuses it). Nodes outside the plan, graph inputs and outputs are
float. Int8 wins ties and gets a small preference (``margin``): it is also the smaller model.

Where int8 nodes meet, onnxruntime's layout decides what the labelling costs (``layout.py``:
transposes between NHWC and NCHW int8 nodes, u8 MaxPools on the NCHW kernel). That is not a
pairwise term, so the cut is refined: each labelling is priced by simulating the layout, the
edges and pools found slow are charged in the next cut, and the cheapest labelling seen wins
(the first one and all-int8 included, so the refinement never predicts worse than either: a
charge lands on the nodes of a labelling that has the border, and may push them all to float
where all-int8, with no border, is cheaper).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.placement.costs import FUSED_ACTIVATIONS, CostTable
from onnxq.placement.layout import Layout, simulate
from onnxq.placement.mincut import Energy
from onnxq.placement.model import elements, node_cost
from onnxq.quant_ops import Role

__all__ = ["Placement", "Region", "place", "PLACED"]

#: prefix of the reason a node placed in float gets (the report shows it)
PLACED = "placement: float is faster here"
_UNKNOWN = 1e9  # float cost of a planned node whose shapes are unknown: it stays as planned
_ROUNDS = 4  # cuts refined by the layout simulation
#: ops onnxruntime's QDQ propagation moves a QuantizeLinear back through (qdq_propagation.cc)
_PROPAGATES = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Slice"})


def _single_reader(t: gs.Tensor, outputs) -> bool:
    """``t`` has one reader and is not a graph output (QDQ propagation's condition)."""
    return len(t.outputs) == 1 and t.name not in outputs


@dataclass(frozen=True, slots=True)
class Region:
    nodes: tuple[str, ...]
    gain_us: float  # predicted µs saved by keeping the region float


@dataclass(frozen=True, slots=True)
class Placement:
    keep_float: dict[str, str]
    int8_electives: tuple[str, ...]  # int8 even where an input stays float (conversion paid)
    regions: tuple[Region, ...]
    fp32_us: float
    int8_us: float
    placed_us: float
    table: str
    candidates: int
    unknown: int = 0  # candidates without known shapes: kept as planned, not in the times
    #: the int8 placement's predicted speed-up when it was under ``min_gain`` (all float)
    small_gain: float | None = None
    scope: str = ""  # where, when not the main graph (a Loop or Scan body, per iteration)
    bodies: tuple[Placement, ...] = ()  # the main graph's Loop and Scan bodies, placed apart

    @classmethod
    def empty(cls, table: CostTable) -> Placement:
        """Nothing planned in the main graph (the bodies may have some)."""
        return cls(keep_float={}, int8_electives=(), regions=(), fp32_us=0.0, int8_us=0.0,
                   placed_us=0.0, table=table.source.rsplit("/", 1)[-1], candidates=0)

    def all_keep_float(self) -> dict[str, str]:
        return {k: v for p in (self, *self.bodies) for k, v in p.keep_float.items()}

    def all_int8_electives(self) -> tuple[str, ...]:
        return tuple(n for p in (self, *self.bodies) for n in p.int8_electives)

    def notes(self) -> tuple[str, ...]:
        return tuple(p.note() for p in (self, *self.bodies) if p.candidates)

    def to_dict(self) -> dict:
        found = self._own_dict()
        found["int8_electives"] = list(self.all_int8_electives())
        if self.bodies:
            found["bodies"] = [b._own_dict() for b in self.bodies]
        return found

    def _own_dict(self) -> dict:
        where = {"scope": self.scope} if self.scope else {}
        return {**where, "table": self.table, "candidates": self.candidates,
                "unknown": self.unknown,
                "kept_float": len(self.keep_float), "int8_electives": list(self.int8_electives),
                "predicted_us": {"fp32": round(self.fp32_us, 1), "all_int8": round(self.int8_us, 1),
                                 "placed": round(self.placed_us, 1)},
                "predicted_speedup": round(self.fp32_us / self.placed_us, 3)
                if self.placed_us > 0 else None,
                "float_regions": [{"nodes": list(r.nodes), "predicted_gain_us": round(r.gain_us, 1)}
                                  for r in self.regions]}

    def note(self) -> str:
        kept, where = len(self.keep_float), f", {self.scope}" if self.scope else ""
        if self.small_gain is not None:
            return (f"placement ({self.table}{where}): int8 is predicted only {self.small_gain:.3f}x "
                    f"FP32 at batch 1 ({self.fp32_us:.0f} µs FP32), inside the cost model's "
                    "error; the model stays float (objective=size quantizes it anyway)")
        if kept == self.candidates:
            return (f"placement ({self.table}{where}): no region is predicted faster in int8 on this "
                    f"target (all-int8 {self.int8_us:.0f} µs vs FP32 {self.fp32_us:.0f} µs at "
                    "batch 1, conversions included): the model stays float; objective=size "
                    "quantizes it anyway")
        speed = self.fp32_us / self.placed_us if self.placed_us > 0 else 1.0
        unknown = (f"; {self.unknown} node(s) have no known shapes (e.g. after a dynamic Pad): "
                   "they stay as planned and are not in these times") if self.unknown else ""
        return (f"placement ({self.table}{where}): {kept} of {self.candidates} planned node(s) kept "
                f"float in {len(self.regions)} region(s); predicted batch-1 time "
                f"{self.placed_us:.0f} µs vs {self.int8_us:.0f} µs all-int8 and "
                f"{self.fp32_us:.0f} µs FP32 ({speed:.2f}x){unknown}")


def _hard_swish_pair(tensor: gs.Tensor) -> bool:
    """``tensor`` is read by exactly ``HardSigmoid(tensor; 1/6, 1/2)`` and ``Mul(tensor, that)``:
    HardSwish below opset 14, which onnxruntime fuses into HardSwish (and into the Conv)."""
    readers = list(tensor.outputs)
    if len(readers) != 2:
        return False
    hs = next((n for n in readers if n.op == "HardSigmoid"), None)
    mul = next((n for n in readers if n.op == "Mul"), None)
    return (hs is not None and mul is not None and len(hs.outputs) == 1
            and abs(float(hs.attrs.get("alpha", 0.2)) - 1.0 / 6.0) < 1e-6
            and abs(float(hs.attrs.get("beta", 0.5)) - 0.5) < 1e-6
            and list(hs.outputs[0].outputs) == [mul] and hs.outputs[0] in mul.inputs)


def _fusable(producer: gs.Node | None, consumer: gs.Node, tensor: gs.Tensor) -> bool:
    if producer is None or producer.op != "Conv":
        return False
    if len(tensor.outputs) == 1:
        return consumer.op in FUSED_ACTIVATIONS or consumer.op == "Add"
    return _hard_swish_pair(tensor)


class _Builder:
    def __init__(self, graph: gs.Graph, names: list[str], shapes, table: CostTable,
                 margin: float, unknown: float = _UNKNOWN, layout: Layout | None = None) -> None:
        self.graph, self.shapes, self.table = graph, shapes, table
        self.layout = layout or Layout()
        self.index = {n: i for i, n in enumerate(names)}
        self.nodes = {n.name: n for n in graph.nodes}
        self.energy = Energy(len(names))
        self.costs = {n: node_cost(self.nodes[n], shapes, table) for n in names}
        self.fixed_float = 0.0
        for name, i in self.index.items():
            c = self.costs[name]
            if c is None:
                self.energy.add_unary(i, unknown, 0.0)
            else:
                self.energy.add_unary(i, c.float_us, c.int8_us * margin
                                      + self.layout.slow_scales.get(name, 0.0))

    def border(self, t: gs.Tensor, to_int8: bool, int8_side: gs.Node | None,
               float_side: gs.Node | None) -> float:
        n = elements(self.shapes, t.name) or 0
        if n == 0:
            return 0.0
        return self.table.border(n, to_int8=to_int8,
                                 int8_conv=int8_side is not None and int8_side.op == "Conv",
                                 float_conv=float_side is not None and float_side.op == "Conv")

    def link(self, t: gs.Tensor, u: gs.Node | None, v: gs.Node | None) -> None:
        """The pairwise term of tensor ``t`` from ``u`` to ``v`` (None: a graph input/output;
        nodes outside the plan are fixed float)."""
        iu = self.index.get(u.name) if u is not None else None
        iv = self.index.get(v.name) if v is not None else None
        if iu is None and iv is None:
            return
        bonus = 0.0
        if v is not None and _fusable(u, v, t):
            c = self.costs.get(v.name) if iv is not None else node_cost(v, self.shapes,
                                                                        self.table)
            bonus = c.float_us if c is not None else 0.0
        a = -bonus
        b = self.border(t, True, v, u)    # u float, v int8
        c_ = self.border(t, False, u, v)  # u int8, v float
        d = 0.0
        charged = self.layout.edges.get((t.name, v.name)) if v is not None else None
        if charged:  # a u8 Transpose here when both are int8 (layout.py)
            if iu is not None and iv is not None:
                d = min(charged, b + c_ - a)  # (the term stays submodular)
            elif iv is not None:  # u: quantized along with its int8 producer
                self.energy.add_unary(iv, 0.0, charged)
        if iu is not None and iv is not None:
            self.energy.add_pair(iu, iv, a, b, c_, d)
        elif iv is not None:              # fixed float producer
            self.energy.add_unary(iv, a, b)
        elif iu is not None:              # fixed float consumer
            self.energy.add_unary(iu, a, c_)

    def max_pool(self, pool: gs.Node, outputs: set[str]) -> None:
        """A u8 MaxPool fed by a float producer runs onnxruntime's plain NCHW kernel, about
        17x the float or NHWC one. That happens when the pool is int8 after a float node, and
        when a float pool feeds an int8 node: onnxruntime moves the QuantizeLinear above a
        MaxPool-12 (QDQ propagation). Both look through the ops that propagation crosses
        (Transpose, Reshape, Squeeze, Unsqueeze, Slice: a spectrogram CNN's layout changes)."""
        im = self.index.get(pool.name)
        n = elements(self.shapes, pool.inputs[0].name)
        if im is None or not n or not self.table.has("MaxPool.u8") or len(pool.outputs) != 1:
            return
        slow = n * (self.table.per_element("MaxPool.u8") - self.table.per_element("MaxPool.nhwc"))
        if pool.name in self.layout.slow_pools:  # NCHW after an int8 node too (layout.py)
            self.energy.add_unary(im, 0.0, slow)
        u = G.producer(pool.inputs[0])
        while u is not None and u.inputs and (u.op in ("Relu", "Clip") or u.op in _PROPAGATES
                                             and _single_reader(u.outputs[0], outputs)):
            u = G.producer(u.inputs[0])  # (a Relu or Clip folds into the QuantizeLinear)
        iu = self.index.get(u.name) if u is not None else None
        if iu is None:
            self.energy.add_unary(im, 0.0, slow)
        else:
            self.energy.add_pair(iu, im, 0.0, slow, 0.0, 0.0)
        if not 12 <= G.opset(self.graph) < 22:
            return
        v, y = pool, pool.outputs[0]
        while _single_reader(y, outputs):  # the QuantizeLinear onnxruntime moves back up
            v = y.outputs[0]
            if iu is not None or v.op not in _PROPAGATES or not v.outputs:
                break  # (behind an int8 producer it stops at the DequantizeLinear: only the
            y = v.outputs[0]  # pool's own reader matters)
        iv = self.index.get(v.name) if v is not pool else None
        if iv is not None and iv != im:  # (an int8 producer makes this labelling a dominated one)
            self.energy.add_pair(im, iv, 0.0, slow, 0.0, 0.0)

    def build(self) -> Energy:
        outputs = G.graph_output_names(self.graph)
        tensors = self.graph.tensors()
        for node in self.graph.nodes:
            if node.op == "MaxPool":
                self.max_pool(node, set(outputs))
        for t in tensors.values():
            if isinstance(t, gs.Constant) or (t.dtype is not None
                                              and np.dtype(t.dtype) != np.float32):
                continue
            u = G.producer(t)
            readers = list(t.outputs) + ([None] if t.name in outputs else [])
            for v in readers:
                self.link(t, u, v)
        return self.energy


def _candidates(graph: gs.Graph, plan) -> list[str]:
    main = {n.name for n in graph.nodes}  # (``graph`` may be a Loop or Scan body)
    roles = (Role.ANCHOR, Role.ELECTIVE, Role.SHARED)
    names = [n.name for n in plan.nodes if n.role in roles and n.name in main]
    return names + [f.node for f in plan.folds if f.node in main]


def place(graph: gs.Graph, plan, shapes: Mapping[str, tuple], table: CostTable, *,
          margin: float = 0.97, min_gain: float = 1.0, scope: str = "") -> Placement | None:
    """The placement of ``plan``'s nodes in ``graph`` (the main graph, or the body ``scope``
    names); None when there is nothing to decide. ``min_gain``: a placement predicted to run
    less than this much faster than FP32 (every candidate's shapes known) keeps every
    candidate float."""
    names = _candidates(graph, plan)
    if not names or not shapes:
        return None
    x, layout_us = _search(graph, names, shapes, table, margin)
    # unbiased, for the figures; a node without known shapes counts nothing either way
    b = _Builder(graph, names, shapes, table, 1.0, unknown=0.0)
    energy = b.build()
    ones, zeros = [1] * len(names), [0] * len(names)
    fixed = sum(c.float_us for n in graph.nodes if n.name not in b.index
                and (c := node_cost(n, shapes, table)) is not None)
    unknown = sum(c is None for c in b.costs.values())
    fp32_us = fixed + energy.value(zeros) + simulate(graph, dict.fromkeys(names, False), shapes,
                                                     table).us
    placed_us = fixed + energy.value(x) + layout_us
    small = None
    if not unknown and any(x) and 0 < placed_us and fp32_us < min_gain * placed_us:
        small, x = fp32_us / placed_us, zeros
        placed_us = fp32_us
    regions = _regions(b, names, x)
    keep = {}
    for r in regions:
        for n in r.nodes:
            keep[n] = (f"{PLACED} (the whole model is predicted {small:.3f}x FP32 in int8, "
                       "inside the cost model's error)" if small is not None else
                       f"{PLACED} (region of {len(r.nodes)} node(s), predicted "
                       f"{r.gain_us:.1f} µs saved at batch 1)")
    electives = {n.name for n in plan.nodes if n.role is Role.ELECTIVE}
    forced = tuple(n for n, v in zip(names, x, strict=True) if v == 1 and n in electives)
    int8_us = fixed + energy.value(ones) + simulate(graph, dict.fromkeys(names, True), shapes,
                                                    table).us
    return Placement(keep_float=keep, int8_electives=forced, regions=tuple(regions),
                     fp32_us=fp32_us, int8_us=int8_us, placed_us=placed_us,
                     table=table.source.rsplit("/", 1)[-1], candidates=len(names),
                     unknown=unknown, small_gain=small, scope=scope)


def _search(graph: gs.Graph, names: list[str], shapes, table: CostTable, margin: float
            ) -> tuple[list[int], float]:
    """The min-cut labelling refined by the layout simulation (module docstring), and the
    layout's µs for it."""
    base = _Builder(graph, names, shapes, table, margin).build()
    charged = Layout()
    ones = [1] * len(names)  # a candidate too: it has no border for a layout charge to land on
    every = simulate(graph, dict.fromkeys(names, True), shapes, table).us
    best: tuple[float, list[int], float] = (base.value(ones) + every, ones, every)
    for _ in range(_ROUNDS):
        energy = base if not charged.us else _Builder(graph, names, shapes, table, margin,
                                                      layout=charged).build()
        x = energy.minimize()
        found = simulate(graph, {n: bool(v) for n, v in zip(names, x, strict=True)}, shapes,
                         table)
        score = base.value(x) + found.us
        if score < best[0] - 1e-9:
            best = (score, x, found.us)
        new = {k: v for k, v in found.edges.items() if k not in charged.edges}
        pools = {k: v for k, v in found.slow_pools.items() if k not in charged.slow_pools}
        scales = {k: v for k, v in found.slow_scales.items() if k not in charged.slow_scales}
        if not new and not pools and not scales:
            break
        charged.edges.update(new)
        charged.slow_pools.update(pools)
        charged.slow_scales.update(scales)
    return best[1], best[2]


def _regions(b: _Builder, names: list[str], x: list[int]) -> list[Region]:
    """Connected float runs of the labelling, each with its predicted gain."""
    float_nodes = {names[i] for i, v in enumerate(x) if v == 0}
    seen: set[str] = set()
    regions = []
    for name in names:
        if name not in float_nodes or name in seen:
            continue
        stack, members = [name], []
        seen.add(name)
        while stack:
            cur = b.nodes[stack.pop()]
            members.append(cur.name)
            near = [G.producer(t) for t in cur.inputs] + [c for t in cur.outputs
                                                          for c in t.outputs]
            for n in near:
                if n is not None and n.name in float_nodes and n.name not in seen:
                    seen.add(n.name)
                    stack.append(n.name)
        flipped = list(x)
        for m in members:
            flipped[b.index[m]] = 1
        gain = b.energy.value(flipped) - b.energy.value(x)
        regions.append(Region(nodes=tuple(sorted(members, key=names.index)), gain_us=gain))
    return regions
