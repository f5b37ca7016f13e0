"""Requantize folding: make a QDQ graph as cheap as its plan allows, without changing what
the int8 kernels compute.

* ``DQ → Q`` with equal parameters is the identity: consumers read the int8 tensor directly;
* ``Q1 → DQ1 → Q2`` (a back-to-back requantization, e.g. from QAT exports) becomes ``Q2`` of
  the float source: one rounding instead of two;
* ``Relu``/``Clip(0, c)`` right before a ``QuantizeLinear`` whose range already clamps the
  same way (zero point at the type's minimum, top of the range within ``c``) is dropped;
* ``Q → DQ`` pairs between two float-only ops (no int8 kernel on either side) are dropped:
  they only add error and time; a pair that clamps at zero (its zero point at the type's
  minimum), which may stand for a Relu/Clip the plan folded into it, becomes that ``Clip``;
* duplicate scale / zero-point initializers are merged.

Data-movement chains ``DQ → Reshape → Q`` with equal parameters are left for onnxruntime,
which runs them on int8. Everything done is reported in the pass notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.pipeline import PassResult, RewriteRule, apply_rules
from onnxq.quant_ops import HANDLERS, OPENVINO_HANDLERS, clip_bounds

__all__ = ["RequantFoldPass"]

#: Ops onnxruntime's CPU EP can run on int8 when wrapped in Q/DQ.
INT8_CAPABLE = frozenset(HANDLERS) - {"Relu", "Clip"} | {"Where", "Gather", "Expand", "Tile",
                                                          "DepthToSpace", "ArgMax", "Identity"}
#: ... and those the OpenVINO EP also runs on int8
OPENVINO_INT8_CAPABLE = INT8_CAPABLE | frozenset(OPENVINO_HANDLERS)


def _identity_pairs(graph: gs.Graph, outputs: set[str]) -> int:
    """DQ → Q with the same parameters → the int8 tensor itself. Only within one graph: a
    body re-quantizing an outer dequantized value keeps doing so (an int8 tensor read across
    the scope makes onnxruntime's DQ→Q cleanup abort; see ``InsertQDQPass``)."""
    removed = 0
    here = {id(n) for n in graph.nodes}
    for q in list(graph.nodes):
        if not G.is_q(q) or not q.inputs or q.outputs[0].name in outputs:
            continue
        dq = G.producer(q.inputs[0])
        if dq is not None and id(dq) in here and G.is_dq(dq) and G.same_qparams(dq, q):
            G.replace_uses(q.outputs[0], dq.inputs[0])
            G.detach(q)
            removed += 1
    return removed


def _double_requant(graph: gs.Graph, outputs: set[str]) -> int:
    merged = 0
    here = {id(n) for n in graph.nodes}
    for q2 in list(graph.nodes):
        if not G.is_q(q2) or not q2.inputs:
            continue
        dq1 = G.producer(q2.inputs[0])
        if dq1 is None or not G.is_dq(dq1) or len(q2.inputs[0].outputs) != 1 \
                or id(dq1) not in here:
            continue
        q1 = G.producer(dq1.inputs[0])
        if q1 is None or not G.is_q(q1) or len(dq1.inputs[0].outputs) != 1:
            continue
        if q2.inputs[0].name in outputs or dq1.inputs[0].name in outputs:
            continue
        q2.inputs[0] = q1.inputs[0]
        G.detach(q1, dq1)
        merged += 1
    return merged


def _clamping_activation(graph: gs.Graph, outputs: set[str]) -> int:
    folded = 0
    for q in list(graph.nodes):
        if not G.is_q(q) or len(q.inputs) < 3:
            continue
        act = G.producer(q.inputs[0])
        if act is None or act.op not in ("Relu", "Clip") or len(q.inputs[0].outputs) != 1:
            continue
        if q.inputs[0].name in outputs:
            continue
        scale, zp = G.constant_value(q.inputs[1]), G.constant_value(q.inputs[2])
        if scale is None or zp is None or scale.ndim or zp.ndim:
            continue
        info = np.iinfo(zp.dtype)
        if int(zp) != info.min:
            continue
        if act.op == "Clip":
            bounds = clip_bounds(act)
            top = (info.max - int(zp)) * float(scale)
            if bounds is None or bounds[0] != 0.0 or (bounds[1] is not None and
                                                      top > bounds[1] * (1 + 1e-6)):
                continue
        q.inputs[0] = act.inputs[0]
        G.detach(act)
        folded += 1
    return folded


def _clamp(q: gs.Node) -> tuple[bool, float | None]:
    """(whether ``q`` clips negatives to 0 — its zero point is its type's minimum, as for a
    Relu or Clip(0, c) the plan folded into it —, the top of its range ``(max - min)·scale``
    when its scale is one number, else None)."""
    if len(q.inputs) < 3 or not q.inputs[2].name:  # no zero point: 0 of u8 unless typed
        zp: np.ndarray | None = np.zeros((), np.uint8) \
            if int(q.attrs.get("output_dtype", 0)) in (0, onnx.TensorProto.UINT8) else None
    else:
        zp = G.constant_value(q.inputs[2], cache=False)
    if zp is None or zp.dtype.kind not in "iu" or not np.all(zp == np.iinfo(zp.dtype).min):
        return False, None
    scale = G.constant_value(q.inputs[1], cache=False)
    if scale is None or scale.size != 1:
        return True, None
    info = np.iinfo(zp.dtype)
    return True, float(info.max - info.min) * float(scale.reshape(-1)[0])


def _as_clip(graph: gs.Graph, q: gs.Node, top: float) -> gs.Variable:
    """``Clip(x, 0, top)`` of ``q``'s input: the pair's clamping without its rounding."""
    x = q.inputs[0]
    base = G.unique_name(graph, f"{x.name}_clamp", ("", "_min", "_max"))
    out = gs.Variable(base, dtype=x.dtype, shape=x.shape)
    low, high = np.float32(0.0), np.float32(top)
    if (graph.opset or 13) >= 11:
        clip = gs.Node("Clip", base, inputs=[x, gs.Constant(base + "_min", np.asarray(low)),
                                             gs.Constant(base + "_max", np.asarray(high))],
                       outputs=[out])
    else:
        clip = gs.Node("Clip", base, attrs={"min": float(low), "max": float(high)},
                       inputs=[x], outputs=[out])
    graph.nodes.append(clip)
    return out


def _float_islands(graph: gs.Graph, outputs: set[str], int8_ops: frozenset[str]) -> int:
    """Drop Q→DQ pairs whose producer and every consumer run in float anyway (on the EP:
    ``int8_ops`` run int8). A pair that clamps at zero (``_clamp``) may stand for a Relu or
    Clip the plan folded into it: it becomes that ``Clip`` (kept as is when per channel)."""
    dropped = 0
    for q in list(graph.nodes):
        if not G.is_q(q) or not q.inputs or G.constant_value(q.inputs[0]) is not None:
            continue
        clamps, top = _clamp(q)
        x, y = q.inputs[0], q.outputs[0]
        dqs = list(y.outputs)
        if (clamps and top is None) or y.name in outputs or not dqs \
                or not all(G.is_dq(d) for d in dqs):
            continue
        producer = G.producer(x)
        if producer is None or producer.op in int8_ops or G.is_dq(producer):
            continue
        readers = [c for d in dqs for c in d.outputs[0].outputs]
        if any(d.outputs[0].name in outputs for d in dqs) or any(
                c.op in int8_ops or G.is_q(c) for c in readers):
            continue
        value = _as_clip(graph, q, top) if clamps and top is not None else x
        for d in dqs:
            G.replace_uses(d.outputs[0], value)
            G.detach(d)
        G.detach(q)
        dropped += 1
    return dropped


def _int8_constant(t: gs.Tensor) -> bool:
    if not isinstance(t, gs.Constant):
        return False
    try:
        return np.dtype(t.dtype) == np.dtype(np.int8)
    except TypeError:  # a type numpy has no dtype for (bfloat16, float8, int4)
        return False


def _dedupe_params(graph: gs.Graph) -> int:
    """Equal scale and zero-point constants of Q/DQ nodes merged into one, except a weight's
    int8 zero point: on a CPU without VNNI, onnxruntime's exact u8 x u8 option
    (``session.x64quantprecision``) rewrites each int8 weight and its zero point to uint8 in
    place, and a zero point two weights share made it fail to load the model ("Attempt to
    replace the existing tensor", onnxruntime 1.32)."""
    seen: dict[tuple, gs.Tensor] = {}
    merged = 0
    for node in graph.nodes:
        if not (G.is_q(node) or G.is_dq(node)):
            continue
        weight = G.is_dq(node) and _int8_constant(node.inputs[0])
        for i in (1, 2):
            if len(node.inputs) <= i or not isinstance(node.inputs[i], gs.Constant) or (
                    weight and i == 2):
                continue
            key = G.const_key(node.inputs[i])
            assert key is not None  # node.inputs[i] is a gs.Constant, which always has a key
            first = seen.setdefault(key, node.inputs[i])
            if first is not node.inputs[i]:
                node.inputs[i] = first
                merged += 1
    return merged


@dataclass(frozen=True, slots=True, kw_only=True)
class RequantFoldPass:
    """Fold what quantization left behind, as a declared rule set applied in order (see
    ``RULES``), then float islands (``drop_float_islands``; ``openvino``: the ops that EP runs
    on int8 are not float); duplicate scale/zero-point constants are merged last."""

    drop_float_islands: bool = True
    openvino: bool = False
    name: str = "requant_fold"

    RULES: ClassVar[tuple[RewriteRule, ...]] = (
        RewriteRule(name="identity DQ→Q pairs removed", rewrite=_identity_pairs),
        RewriteRule(name="back-to-back requantizations merged", rewrite=_double_requant),
        RewriteRule(name="Relu/Clip folded into a QuantizeLinear", rewrite=_clamping_activation),
    )

    def run(self, graph: gs.Graph) -> PassResult:
        counts = apply_rules(self.RULES, graph, self)
        if self.drop_float_islands:
            counts["Q/DQ pairs between float ops dropped"] = _float_islands(
                graph, {t.name for t in graph.outputs},
                OPENVINO_INT8_CAPABLE if self.openvino else INT8_CAPABLE)
        changed = any(counts.values())
        if changed:
            graph.cleanup()
        merged = _dedupe_params(graph)
        if merged:
            counts["duplicate scale/zero-point inputs merged"] = merged
            graph.cleanup()
        if changed or merged:
            graph.toposort()
        q = sum(G.is_q(n) for n in graph.nodes)
        dq = sum(G.is_dq(n) for n in graph.nodes)
        notes = tuple(f"{k}: {v}" for k, v in counts.items() if v)
        return PassResult(graph=graph, modified=changed or bool(merged),
                          notes=notes + (f"QuantizeLinear: {q}, DequantizeLinear: {dq}",)
                          if (changed or merged) else ())
