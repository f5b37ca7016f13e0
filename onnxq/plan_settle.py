"""A plan restricted to what calibration observed: nodes of If branches or loop bodies that no
calibration feed ran have no ranges, so they stay float (with the reason in the report)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.plan import QuantPlan

__all__ = ["without_unobserved", "UNOBSERVED"]


UNOBSERVED = ("its tensors have no usable range: never computed on the calibration data (an "
              "If branch no feed took, a loop body that never ran: add feeds that reach it), "
              "or changing scale across loop iterations (see the notes); kept in float")


def without_unobserved(graph: gs.Graph, plan: QuantPlan, ranges: Mapping[str, object],
                       replan: Callable[[dict[str, str]], QuantPlan]) -> QuantPlan:
    """``plan`` without the subgraph nodes whose tensors have no range (their If branch or
    loop body never ran on the calibration data): ``replan(keep_float)`` re-annotates with
    those nodes kept float, until every planned tensor has a range. A missing main-graph
    tensor is left alone (``materialize`` refuses ranges measured on another model)."""
    missing = {t for t in plan.calibration_tensors if t not in ranges}
    subs = list(G.iter_graphs(graph))[1:]
    inner = {t.name for g in subs for t in g.inputs} | {
        t.name for g in subs for n in g.nodes for t in n.outputs}
    if not missing or not missing <= inner:
        return plan
    keep: dict[str, str] = {}
    while missing:
        unseen = {a.name for a in plan.activations if a.root in missing} | missing
        planned = {n.name for n in plan.nodes}
        # a body that ran is observed whole: a missing tensor means its graph never ran
        dark = [g for g in subs if any(t.name in unseen for n in g.nodes
                                       for t in [*n.inputs, *n.outputs])]
        # planned nodes, and nodes that only mark their inputs (the OpenVINO EP's residual Add)
        new = {n.name for g in dark for n in g.nodes if n.name not in keep and (
            n.name in planned or any(t.name in unseen for t in n.inputs))}
        if not new:
            break
        keep.update(dict.fromkeys(sorted(new), UNOBSERVED))
        plan = replan(keep)
        missing = {t for t in plan.calibration_tensors if t not in ranges}
    return plan
