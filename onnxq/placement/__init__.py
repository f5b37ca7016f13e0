"""Latency-aware placement: which planned nodes run int8 and which stay float (see
``place.py``), from a cost model of onnxruntime's CPU EP kernels (``costs.py``, ``model.py``)
measured on the host (``measure.py``) or shipped per target ISA (``tables/``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import onnx
import onnx_graphsurgeon as gs

from onnxq.placement.costs import CostTable, host_table, load_table, table_for_target
from onnxq.placement.place import PLACED, Placement, Region, place
from onnxq.placement.recurrent import MIN_INT8_HIDDEN, slow_lstms
from onnxq.placement.shapes import batch1_shapes

__all__ = ["decide", "apply", "cost_table", "Placement", "Region", "PLACED", "MARGINS", "MIN_GAINS"]

#: int8's preference per objective: a node goes float only when its predicted float cost is
#: below this share of its int8 cost (conversions included)
MARGINS: Mapping[str, float] = {"latency": 0.97, "balanced": 0.8}
#: per objective, the least whole-model speed-up (predicted, batch 1) worth int8's accuracy
#: cost; below it every node stays float. The cost model's per-region error is 30-60 %
#: (docs/placement.md); zoo models predicted at 1.02-1.03x measured 0.96-1.03x
MIN_GAINS: Mapping[str, float] = {"latency": 1.05, "balanced": 1.0}


def cost_table(spec: str, target: str) -> CostTable:
    """The table a ``placement.cost_table`` setting names for ``target``."""
    if spec == "target":
        return table_for_target(target)
    if spec == "host":
        return host_table()
    return load_table(spec)


def decide(model: onnx.ModelProto, graph: gs.Graph, plan, *, objective: str, table_spec: str,
           target: str, input_shapes: Mapping[str, tuple] | None = None) -> Placement | None:
    """The placement of ``plan`` on ``graph`` (imported from ``model``), or None for the size
    objective or when the shapes cannot be inferred. Each Loop or Scan body is placed on its
    own, per iteration (``Placement.bodies``)."""
    if objective not in MARGINS:
        return None
    shapes = batch1_shapes(model, input_shapes)
    if not shapes:
        return None
    table = cost_table(table_spec, target)
    main = place(graph, plan, shapes, table, margin=MARGINS[objective],
                 min_gain=MIN_GAINS[objective])
    bodies = tuple(found for scope, body in loop_bodies(graph)
                   if (found := place(body, plan, shapes, table, margin=MARGINS[objective],
                                      min_gain=MIN_GAINS[objective], scope=scope)) is not None)
    if main is None and not bodies:
        return None
    return dataclasses.replace(main or Placement.empty(table), bodies=bodies)


def loop_bodies(graph: gs.Graph):
    """(what the report calls it, body) for every Loop and Scan body, nested ones too. One
    iteration of a body is placed like a graph of its own: its inputs (the carried state, the
    scan slices) and the outer-scope values it reads arrive float every iteration."""
    for node in graph.nodes:
        body = node.attrs.get("body") if node.op in ("Loop", "Scan") else None
        if isinstance(body, gs.Graph):
            yield f"{node.op} {node.name!r}, per iteration", body
            yield from loop_bodies(body)


def apply(model: onnx.ModelProto, graph: gs.Graph, plan, config, input_shapes,
          replan: Callable[[dict[str, str], tuple[str, ...]], object]):
    """``plan`` with the float regions of ``config.placement`` kept float (``replan`` plans
    again with those nodes excluded) and the placement's summary among its notes. LSTMs too
    narrow for the int8 kernel to pay stay float too (``recurrent.py``)."""
    objective = config.placement.objective
    placed = decide(model, graph, plan, objective=objective,
                    table_spec=config.placement.cost_table, target=config.target,
                    input_shapes=input_shapes)
    min_hidden = table_for_target(config.target).lstm_min_int8_hidden(MIN_INT8_HIDDEN)
    narrow = slow_lstms(graph, plan, min_hidden) if objective in MARGINS else {}
    if placed is None and not narrow:
        return plan
    keep = (placed.all_keep_float() if placed is not None else {}) | narrow
    if keep:
        plan = replan(keep, placed.all_int8_electives() if placed is not None else ())
    notes = placed.notes() if placed is not None else ()
    if narrow:
        notes += (f"placement: {len(narrow)} LSTM(s) with hidden_size < {min_hidden} kept "
                  "float (DynamicQuantizeLSTM is slower there on this target)",)
    return dataclasses.replace(plan, notes=plan.notes + notes,
                               placement=placed.to_dict() if placed is not None
                               else plan.placement)
