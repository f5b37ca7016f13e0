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
reaches becomes an int8 tensor of its own, in the group.

A root whose quantizer also applies a folded Relu/Clip (the Q clamps at 0, or at the Clip's
max) keeps that clamp only if its group's range keeps it, so a Concat is tied only when its
members are all plain tensors, or all folded with the same upper bound (a Concat of Relu
branches, as in Inception or SqueezeNet)."""

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


def tie_concats(graph: gs.Graph, plan: QuantPlan, keep_float: Mapping[str, str]) -> QuantPlan:
    """``plan`` (made with the OpenVINO EP's rules) with every quantized Concat output replaced
    by a tie of its inputs' roots (module doc). ``keep_float`` names Concats to leave alone."""
    acts = {a.name: a for a in plan.activations}
    moving = {n.name for n in plan.nodes if n.role is Role.SHARED}
    folds = {f.target: ("fold", f.upper) for f in plan.folds}
    alias: dict[str, str] = {}  # a tied Concat's output -> one root of its group
    parent: dict[str, str] = {}

    def find(r: str) -> str:
        while parent.get(r, r) != r:
            r = parent[r]
        return r

    def root_of(t: gs.Tensor, walked: list[gs.Node]) -> str:
        """The root whose parameters ``t`` takes: an int8 tensor's, or the first tensor up
        the data movement that produced ``t`` (a new root; the quantizer sits above the
        movement, which OpenVINO then runs int8: the Focus Slices of a YOLOX stem)."""
        for _ in range(64):
            if t.name in alias:
                return alias[t.name]
            if t.name in acts:
                return acts[t.name].root
            p = G.producer(t)
            if p is None or not p.inputs or not (p.name in moving or (
                    p.op in _MOVING and _float_activation(p.inputs[0]))):
                break
            walked.append(p)
            t = p.inputs[0]
        return t.name

    added: list[ActivationPlan] = []
    shared: list[NodePlan] = []  # data movement the new roots' dequantization flows through
    dropped: set[str] = set()
    for g in G.iter_graphs(graph):
        for node in g.nodes:
            if node.op != "Concat" or node.name in keep_float or len(node.outputs) != 1:
                continue
            out = node.outputs[0]
            act = acts.get(out.name)
            if act is None or act.root != out.name or not node.inputs or not all(
                    _float_activation(t) for t in node.inputs):
                continue
            walked: list[gs.Node] = []
            members = [root_of(t, walked) for t in node.inputs]
            if len({folds.get(m) for m in members}) != 1:
                continue
            for m in members:
                if m not in acts and m not in alias:
                    acts[m] = ActivationPlan(name=m, root=m, all_consumers=True)
                    added.append(acts[m])
            for p in walked:
                if p.name not in moving:
                    moving.add(p.name)
                    shared.append(NodePlan(name=p.name, op=p.op, role=Role.SHARED))
            for m in members[1:]:
                a, b = find(members[0]), find(m)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            dropped.add(out.name)
            alias[out.name] = members[0]
    if not dropped:
        return plan
    groups: dict[str, list[str]] = {}
    for r in sorted(set(parent) | set(parent.values())):
        groups.setdefault(find(r), []).append(r)
    kept = [a for a in plan.activations if a.name not in dropped]
    return dataclasses.replace(
        plan, activations=tuple(kept + added), nodes=plan.nodes + tuple(shared),
        ties=tuple(tuple(sorted(set(m))) for _, m in sorted(groups.items()) if len(set(m)) > 1))


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
