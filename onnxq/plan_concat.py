"""The OpenVINO EP's Concat: one set of quantization parameters for every input, no quantizer
after it.

A Concat whose inputs arrive with different scales (or zero points) has to be requantized:
``DQ(s1) … DQ(sk) → Concat → Q(s) → DQ → Conv``. OpenVINO runs that requantization as a float
FakeQuantize, with a Convert and a zero-point Subtract per input and layout reorders around
them; on a YOLOv8n detector these took about a tenth of the run (OpenVINO 2025.4's per-layer
counters). When every input is dequantized with the same parameters, OpenVINO moves the one
dequantization after the Concat, concatenates int8 and feeds the int8 conv directly — what
NNCF's models do. So for ``target_ep = "openvino"`` the inputs' roots are *tied*: their ranges
are unified to one (the union, ``tied_ranges``) and the Concat's output gets no Q/DQ of its own
(its value is exactly the concatenation of the dequantized inputs). An input no int8 tensor
reaches becomes an int8 tensor of its own, in the group, quantized above any data movement
into the Concat — provided the Concat is all it leads into (it is quantized for every reader).

A root whose quantizer also applies a folded Relu/Clip (the Q clamps at 0, or at the Clip's
max) keeps that clamp only if its group's range keeps it, so a Concat is tied only when its
members are all plain tensors, or all folded with the same upper bound (a Concat of Relu
branches, as in Inception or SqueezeNet). A Concat fed through a Pad is never tied
(``_padded``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.plan import ActivationPlan, NodePlan, QuantPlan
from onnxq.qtypes import TensorRange
from onnxq.quant_ops import Role

__all__ = ["tie_concats", "tied_ranges"]

#: data movement OpenVINO moves a dequantization through (as ``qdq_insert``'s)
_MOVING = frozenset({"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
                     "Slice", "Split", "Identity"})


def _float_activation(t: gs.Tensor) -> bool:
    return (t.dtype is not None and np.dtype(t.dtype) == np.float32
            and G.constant_shape(t) is None)


def _padded(t: gs.Tensor) -> bool:
    """``t`` comes out of a Pad, directly or through data movement. OpenVINO 2025.4 moved a
    tied dequantization through such Pads and then failed to compile the model ("Argument
    shapes are inconsistent" in its PadTransformation: Basic Pitch's harmonic stack of
    shifted, padded slices)."""
    for _ in range(64):
        p = G.producer(t)
        if p is None or not p.inputs:
            return False
        if p.op == "Pad":
            return True
        if p.op not in _MOVING:
            return False
        t = p.inputs[0]
    return False


class _Ties:
    """Working state of one ``tie_concats`` call: the plan's int8 tensors, and the groups of
    roots joined so far (union-find)."""

    def __init__(self, plan: QuantPlan, outputs: set[str]) -> None:
        self.outputs = outputs  # the graph's outputs: a new member never is one
        self.acts = {a.name: a for a in plan.activations}
        self.moving = {n.name for n in plan.nodes if n.role is Role.SHARED}
        self.folds = {f.target: ("fold", f.upper) for f in plan.folds}
        self.alias: dict[str, str] = {}  # a tied Concat's output -> one root of its group
        self.parent: dict[str, str] = {}
        self.added: list[ActivationPlan] = []
        self.shared: list[NodePlan] = []  # data movement a new root's DQ flows through
        self.dropped: set[str] = set()

    def find(self, r: str) -> str:
        while self.parent.get(r, r) != r:
            r = self.parent[r]
        return r

    def root_of(self, t: gs.Tensor, walked: list[gs.Node], new: dict[str, gs.Tensor]) -> str:
        """The root whose parameters ``t`` takes: an int8 tensor's, or the first tensor up
        the data movement that produced ``t`` (a new root; the quantizer sits above the
        movement, which OpenVINO then runs int8: the Focus Slices of a YOLOX stem)."""
        for _ in range(64):
            if t.name in self.alias:
                return self.alias[t.name]
            if t.name in self.acts:
                return self.acts[t.name].root
            p = G.producer(t)
            if p is None or not p.inputs or not (p.name in self.moving or (
                    p.op in _MOVING and _float_activation(p.inputs[0]))):
                break
            walked.append(p)
            t = p.inputs[0]
        new[t.name] = t
        return t.name

    def _leads_only_into(self, tensors: list[gs.Tensor], inside: set[int]) -> bool:
        """No tensor of ``tensors`` is a graph output or read outside ``inside`` (node ids)."""
        return not any(t.name in self.outputs or any(id(c) not in inside for c in t.outputs)
                       for t in tensors)

    def tie(self, node: gs.Node) -> None:
        """Tie ``node``'s inputs if it is a quantized Concat whose members may share a range."""
        out = node.outputs[0]
        act = self.acts.get(out.name)
        if act is None or act.root != out.name or not node.inputs or not all(
                _float_activation(t) for t in node.inputs):
            return
        if any(_padded(t) for t in node.inputs):
            return
        walked: list[gs.Node] = []
        members, fresh = [], []  # fresh: the paths to members no int8 tensor reaches yet
        for t in node.inputs:
            path: list[gs.Node] = []
            new: dict[str, gs.Tensor] = {}
            members.append(self.root_of(t, path, new))
            walked += path
            fresh += [*new.values(), *(o for n in path for o in n.outputs)] if new else []
        if len({self.folds.get(m) for m in members}) != 1:
            return
        # a new member is quantized for every reader (OpenVINO's one quantized copy), so it
        # must lead only into this Concat: a float reader beside it (a transformer's residual
        # stream read by its LayerNorm) would get the int8 value too
        if not self._leads_only_into(fresh, {id(n) for n in walked} | {id(node)}):
            return
        for m in members:
            if m not in self.acts and m not in self.alias:
                self.acts[m] = ActivationPlan(name=m, root=m, all_consumers=True)
                self.added.append(self.acts[m])
        for p in walked:
            if p.name not in self.moving:
                self.moving.add(p.name)
                self.shared.append(NodePlan(name=p.name, op=p.op, role=Role.SHARED))
        for m in members[1:]:
            a, b = self.find(members[0]), self.find(m)
            if a != b:
                self.parent[max(a, b)] = min(a, b)
        self.dropped.add(out.name)
        self.alias[out.name] = members[0]


def tie_concats(graph: gs.Graph, plan: QuantPlan, keep_float: Mapping[str, str]) -> QuantPlan:
    """``plan`` (made with the OpenVINO EP's rules) with every quantized Concat output replaced
    by a tie of its inputs' roots (module doc). ``keep_float`` names Concats to leave alone."""
    ties = _Ties(plan, G.graph_output_names(graph))
    for node in graph.nodes:  # the main graph (the OpenVINO EP does not take control flow)
        if node.op == "Concat" and node.name not in keep_float and len(node.outputs) == 1:
            ties.tie(node)
    if not ties.dropped:
        return plan
    groups: dict[str, set[str]] = {}
    for r in sorted(set(ties.parent) | set(ties.parent.values())):
        groups.setdefault(ties.find(r), set()).add(r)
    kept = [a for a in plan.activations if a.name not in ties.dropped]
    return dataclasses.replace(
        plan, activations=tuple(kept + ties.added), nodes=plan.nodes + tuple(ties.shared),
        ties=tuple(tuple(sorted(m)) for _, m in sorted(groups.items()) if len(m) > 1))


def tied_ranges(ranges: Mapping[str, TensorRange], ties) -> dict[str, TensorRange]:
    """``ranges`` with each tie group's members set to the union of their ranges."""
    out = dict(ranges)
    for group in ties:
        present = [out[m] for m in group if m in out]
        if not present:
            continue
        union = TensorRange(min(float(r.lo) for r in present), max(float(r.hi) for r in present))
        for m in group:
            if m in out:
                out[m] = union
    return out
