"""Cleanup: remove DequantizeLinear→QuantizeLinear pairs that change nothing, merge duplicate
scale/zero-point initializers, and drop dead nodes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.pipeline import PassResult

__all__ = ["CleanupPass", "same_params"]


def _const_key(t: gs.Tensor) -> tuple | None:
    v = G.constant_value(t)
    return None if v is None else (str(v.dtype), v.shape, v.tobytes())


def same_params(a: gs.Node, b: gs.Node) -> bool:
    """True when two Q/DQ nodes use identical scale, zero point and axis."""
    if a.attrs.get("axis", 1) != b.attrs.get("axis", 1) and (
            np.asarray(G.constant_value(a.inputs[1])).ndim > 0):
        return False
    for i in (1, 2):
        ka = _const_key(a.inputs[i]) if len(a.inputs) > i else None
        kb = _const_key(b.inputs[i]) if len(b.inputs) > i else None
        if ka is None or kb is None or ka != kb:
            return False
    return True


def _remove_identity_pairs(graph: gs.Graph) -> int:
    """``Q(DQ(x))`` with equal parameters is ``x``: consumers read ``x`` directly."""
    outputs = G.graph_output_names(graph)
    removed = 0
    for q in list(graph.nodes):
        if not G.is_q(q) or not q.inputs:
            continue
        dq = G.producer(q.inputs[0])
        if dq is None or not G.is_dq(dq) or not same_params(dq, q):
            continue
        x, y = dq.inputs[0], q.outputs[0]
        if y.name in outputs:
            continue
        for consumer in list(y.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is y:
                    consumer.inputs[i] = x
        q.inputs.clear()
        q.outputs.clear()
        removed += 1
    return removed


def _dedupe_params(graph: gs.Graph) -> int:
    """Share one initializer between Q/DQ nodes whose scale or zero point are equal."""
    seen: dict[tuple, gs.Tensor] = {}
    merged = 0
    for node in graph.nodes:
        if not (G.is_q(node) or G.is_dq(node)):
            continue
        for i in (1, 2):
            if len(node.inputs) <= i or not isinstance(node.inputs[i], gs.Constant):
                continue
            key = _const_key(node.inputs[i])
            first = seen.setdefault(key, node.inputs[i])
            if first is not node.inputs[i]:
                node.inputs[i] = first
                merged += 1
    return merged


@dataclass(frozen=True, slots=True, kw_only=True)
class CleanupPass:
    name: str = "cleanup"

    def run(self, graph: gs.Graph) -> PassResult:
        before = G.fingerprint(graph)
        removed = _remove_identity_pairs(graph)
        merged = _dedupe_params(graph)
        graph.cleanup().toposort()
        modified = G.fingerprint(graph) != before
        notes = tuple(s for s in (f"{removed} DQ→Q pair(s) removed" if removed else "",
                                  f"{merged} duplicate scale/zero-point input(s) merged"
                                  if merged else "") if s)
        return PassResult(graph=graph, modified=modified, notes=notes)
