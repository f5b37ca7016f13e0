"""Annotate: analyse a (preprocessed, fused) graph and decide what to quantize → ``QuantPlan``.
Not a pass: it changes nothing. The rules keep int8 chains unbroken, run to a fixed point:
1. anchors (Conv, ConvTranspose, Gemm, MatMul) are quantized; their activation inputs become
   int8 tensors, and so do their outputs where onnxruntime only fuses with an output Q;
2. data movement (Reshape, Transpose, MaxPool …) joins its input and output: if either side is
   int8, both are, with the same parameters (so the Q/DQ pair around it can be dropped);
3. Relu/Clip(0, x) after a quantized producer is absorbed into that producer's output range;
4. elective ops (Add, Mul, Concat, pools, Sigmoid …) are quantized only once all their inputs
   are int8 (a residual Add in a CNN is; in a transformer not), or when the placement says so.
Which planned nodes stay float is the placement's call (``onnxq.placement``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.plan_bounds import flat_bounds
from onnxq.plan_fusions import activation_trap, gemm_trap
from onnxq.plan_roots import sharing_roots
from onnxq.plan_weights import weights_plan
from onnxq.quant_ops import (
    FLOAT_ONLY,
    HANDLERS,
    OPENVINO_HANDLERS,
    OpHandler,
    Role,
    clip_bounds,
    openvino_residual,
    spectrum_reason,
    weight_axis,
    zero_padding,
)

__all__ = ["NodePlan", "ActivationPlan", "Fold", "QuantPlan", "annotate"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePlan:
    name: str
    op: str
    role: Role
    weight: tuple[int, int | None] | None = None  # (input index, per-channel axis or None)
    bias: int | None = None                         # input index of an int32 bias
    const_inputs: tuple[int, ...] = ()              # constant data inputs quantized as activations
    bias_add: tuple[str, int] | None = None         # (Add node, input) holding a MatMul's bias
    dynamic_input: str | None = None                # input quantized at run time (LSTM's X)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationPlan:
    name: str           # tensor that gets QuantizeLinear → DequantizeLinear
    root: str           # tensor whose parameters it uses (itself, or a data-movement source)
    all_consumers: bool  # every consumer reads the dequantized value (int8 producer)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fold:
    node: str    # the Relu/Clip that disappears
    source: str  # its input (the producer's output)
    target: str  # its output, which the producer writes from now on
    upper: float | None = None  # Clip's max, an upper bound on the range


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantPlan:
    nodes: tuple[NodePlan, ...]
    activations: tuple[ActivationPlan, ...]
    folds: tuple[Fold, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    per_channel: bool = True
    upper_bounds: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # for the report (e.g. the placement's summary)
    placement: dict | None = None  # the placement's decision, for the report
    ties: tuple[tuple[str, ...], ...] = ()  # roots sharing one range (``plan_concat``)
    #: roots read only by flat-tailed activations → the interval their range stops at
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def calibration_tensors(self) -> tuple[str, ...]:
        """Tensors whose ranges must be measured, in graph order (deterministic)."""
        return tuple(dict.fromkeys(a.root for a in self.activations))

    def node(self, name: str) -> NodePlan | None:
        return next((n for n in self.nodes if n.name == name), None)

    def named(self, role: Role) -> tuple[str, ...]:
        """The names of the nodes planned with ``role``."""
        return tuple(n.name for n in self.nodes if n.role is role)

    def to_dict(self) -> dict:
        return {
            "nodes": [{"name": n.name, "op": n.op, "role": n.role.value} for n in self.nodes],
            "activations": [{"name": a.name, "root": a.root} for a in self.activations],
            "folds": [{"node": f.node, "into": f.source} for f in self.folds],
            "skipped": [{"node": n, "reason": r} for n, r in self.skipped],
        }


def _is_float(t: gs.Tensor) -> bool:
    return t.dtype is not None and np.dtype(t.dtype) == np.float32


def _is_const(t: gs.Tensor) -> bool: return G.constant_shape(t) is not None  # noqa: E704


def _data_inputs(node: gs.Node, h: OpHandler) -> list[tuple[int, gs.Tensor]]:
    idx = range(len(node.inputs)) if h.data_inputs is None else h.data_inputs
    return [(i, node.inputs[i]) for i in idx if i < len(node.inputs) and node.inputs[i].name]


def _data_outputs(node: gs.Node, h: OpHandler) -> list[gs.Tensor]:
    outs = node.outputs if h.data_outputs is None else node.outputs[: h.data_outputs]
    return [t for t in outs if t.name]


class _Analysis:
    """Mutable working state of one ``annotate`` call (not shared, not global)."""
    forced: frozenset[str] = frozenset()  # electives made int8 whatever their inputs
    inputs_only: bool = False  # the OpenVINO EP's rules (see ``annotate``)

    def __init__(self, graph: gs.Graph, per_channel: bool, excluded_nodes: dict[str, str],
                 excluded_ops: set[str], fold_activations: bool,
                 weight_only_ops: tuple[str, ...] = ()) -> None:
        self.weight_only_ops = weight_only_ops
        self.graph = graph
        self.per_channel = per_channel and G.opset(graph) >= 13
        self.excluded_nodes = excluded_nodes
        self.excluded_ops = excluded_ops
        self.fold_activations = fold_activations
        self.outputs = G.graph_output_names(graph)
        self.int8: set[str] = set()
        self.quantized: dict[str, NodePlan] = {}
        self.folds: dict[str, Fold] = {}
        self.skipped: dict[str, str] = {}

    # -- per-role checks ------------------------------------------------------------------
    def anchor_plan(self, node: gs.Node, h: OpHandler) -> NodePlan | str:
        data = _data_inputs(node, h)
        if len(data) < 2 or not all(_is_float(t) for _, t in data):
            return "inputs are not float32 tensors"
        weight = None
        acts = [i for i, t in data if not _is_const(t)]
        if h.weight_input is not None and _is_const(node.inputs[h.weight_input]):
            w_shape = G.constant_shape(node.inputs[h.weight_input])
            assert w_shape is not None  # _is_const just said the weight has a constant shape
            axis = weight_axis(node, len(w_shape)) if self.per_channel else None
            weight = (h.weight_input, axis)
        if node.op in {"Conv", "ConvTranspose"} and weight is None:
            return "weights are computed at run time; only constant weights are quantized"
        if why := spectrum_reason(node):
            return why
        if not acts:
            return "both operands are constant; fold constants first"
        const_first: tuple[int, ...] = ()
        if weight is None and len(acts) < 2:
            if node.op != "MatMul":
                return ("the constant operand is Gemm's first input; onnxruntime's int8 Gemm "
                        "takes the weight as the second input, so it stays float")
            const_first = (0,)  # W·x: W quantized like an activation (u8 × u8 kernels exist)
        if node.op == "Gemm":
            if float(node.attrs.get("alpha", 1.0)) != 1.0 or float(node.attrs.get("beta", 1.0)) != 1.0:
                return "Gemm with alpha/beta != 1 has no int8 kernel; kept in float"
        bias = None
        if h.bias_input is not None and len(node.inputs) > h.bias_input and node.inputs[h.bias_input].name:
            b = G.constant_shape(node.inputs[h.bias_input])
            if b is None or len(b) != 1 or weight is None:
                return "bias is not a constant vector; kept in float"
            bias = h.bias_input
        return NodePlan(name=node.name, op=node.op, role=h.role, weight=weight, bias=bias,
                        bias_add=self._bias_add(node, weight), const_inputs=const_first)

    def _bias_add(self, node: gs.Node, weight: tuple[int, int | None] | None):
        """A 2-D MatMul's bias in a following Add: int32 lets onnxruntime fuse both into QGemm
        (a float bias makes it fall back to a float Gemm, ~10× slower). For rank > 2 the float
        bias is better: onnxruntime folds it into SkipLayerNormalization / BiasGelu (measured
        on a BERT-base-shaped encoder: 2.52× FP32 vs 2.39× with int32 biases)."""
        if node.op != "MatMul" or weight is None or weight[0] != 1:
            return None
        shape = node.inputs[0].shape
        if shape is None or len(shape) != 2:
            return None
        out = node.outputs[0]
        if len(out.outputs) != 1 or out.name in self.outputs or out.outputs[0].op != "Add":
            return None
        add = out.outputs[0]
        w = G.constant_shape(node.inputs[1])
        assert w is not None  # weight (input 1) is set only for a constant weight
        for i, t in enumerate(add.inputs):
            b = G.constant_shape(t) if t is not out else None
            if b is not None and len(b) == 1 and b[0] == w[-1] and _is_float(t):
                return add.name, i
        return None

    def mark(self, *tensors: gs.Tensor) -> bool:
        new = {t.name for t in tensors if _is_float(t) and not _is_const(t)} - self.int8
        self.int8 |= new
        return bool(new)

    def visit(self, node: gs.Node) -> bool:
        h = HANDLERS.get(node.op) or (OPENVINO_HANDLERS.get(node.op) if self.inputs_only
                                      and zero_padding(node) else None)
        if h is None:
            return False
        if node.name in self.excluded_nodes or node.op in self.excluded_ops:
            self.skipped[node.name] = self.excluded_nodes.get(node.name,
                                                              "excluded by configuration")
            return False
        if h.role is Role.ANCHOR:
            return self._visit_anchor(node, h)
        if h.role is Role.SHARED:
            return self._visit_shared(node, h)
        if h.role is Role.FOLD:
            return self._visit_fold(node)
        if h.role in (Role.DYNAMIC, Role.WEIGHT_ONLY):
            return self._visit_weights(node, h)
        return self._visit_elective(node, h)

    def _visit_weights(self, node: gs.Node, h: OpHandler) -> bool:
        """int8 weights without int8 activations: marks no tensor, so never changes others."""
        if node.name in self.quantized or node.name in self.skipped:
            return False
        found = weights_plan(node, h, self.weight_only_ops)
        if isinstance(found, str):
            self.skipped[node.name] = found
        elif found is not None:
            self.quantized[node.name] = NodePlan(**found)
        return False

    def _visit_anchor(self, node: gs.Node, h: OpHandler) -> bool:
        plan = self.quantized.get(node.name) or self.anchor_plan(node, h)
        if isinstance(plan, str):
            self.skipped[node.name] = plan
            return False
        self.quantized[node.name] = plan
        changed = self.mark(*(t for _, t in _data_inputs(node, h)))
        if self.inputs_only:
            return changed
        if h.output_required or gemm_trap(node, plan.bias_add, plan.weight, self.outputs):
            changed |= self.mark(*_data_outputs(node, h))
        changed |= self.mark(*activation_trap(node, plan.bias_add, self.outputs))
        return changed


    def _visit_shared(self, node: gs.Node, h: OpHandler) -> bool:
        x = node.inputs[0] if node.inputs else None
        outs = _data_outputs(node, h)
        if x is None or not _is_float(x) or _is_const(x) or not all(_is_float(t) for t in outs):
            return False
        if node.op == "Resize" and node.attrs.get("mode", "nearest") not in ("nearest", b"nearest"):
            self.skipped[node.name] = ("onnxruntime runs only nearest Resize on int8; linear "
                                       "Resize kept in float")
            return False
        if x.name in self.int8 or any(t.name in self.int8 for t in outs):
            self.quantized.setdefault(node.name, NodePlan(name=node.name, op=node.op,
                                                          role=h.role))
            return self.mark(x, *outs)
        return False

    def _visit_fold(self, node: gs.Node) -> bool:
        if not self.fold_activations or node.name in self.folds:
            return False
        a, b = node.inputs[0], node.outputs[0]
        upper = None
        if node.op == "Clip":
            bounds = clip_bounds(node)
            if bounds is None or bounds[0] is None or bounds[0] != 0.0:
                return False
            upper = bounds[1]
        p = G.producer(a)
        if (p is None or p.name not in self.quantized or self.quantized[p.name].role is Role.SHARED
                or len(a.outputs) != 1 or a.name in self.outputs or len(p.outputs) != 1):
            return False
        if a.name not in self.int8 and b.name not in self.int8:
            return False
        self.folds[node.name] = Fold(node=node.name, source=a.name, target=b.name, upper=upper)
        self.mark(a, b)
        return True

    def _int8_for_free(self, t: gs.Tensor, consumer: gs.Node) -> bool:
        """``t`` is the float output of a quantized MatMul/Gemm read only by ``consumer``:
        making it int8 turns MatMulIntegerToFloat into QLinearMatMul (QGemm), no extra op. Used
        when the consumer's output must be int8 anyway (a transformer's Q/K/V bias Add)."""
        p = G.producer(t)
        return (p is not None and p.op in ("MatMul", "Gemm") and p.name in self.quantized
                and len(t.outputs) == 1 and t.outputs[0] is consumer and t.name not in self.outputs)

    def _visit_elective(self, node: gs.Node, h: OpHandler) -> bool:
        if self.inputs_only:  # a residual Add: int8 inputs, float sum (OpenVINO fuses it)
            acts = [t for _, t in _data_inputs(node, h) if not _is_const(t) and _is_float(t)]
            return openvino_residual(node, acts) and self.mark(*acts)
        if any(p.bias_add and p.bias_add[0] == node.name for p in self.quantized.values()):
            return False
        if node.name in self.quantized:
            return self.mark(*_data_outputs(node, h))
        data = _data_inputs(node, h)
        if not data or not all(_is_float(t) for _, t in data + [(0, o) for o in
                                                               _data_outputs(node, h)]):
            return False
        consts = tuple(i for i, t in data if _is_const(t))
        acts = [t for i, t in data if i not in consts]
        if node.name in self.forced:  # the placement's call
            self.mark(*acts)
        free = [t for t in acts if t.name not in self.int8 and self._int8_for_free(t, node)]
        if not acts or not all(t.name in self.int8 or t in free for t in acts) or (
                free and not all(o.name in self.int8 for o in _data_outputs(node, h))):
            self.skipped[node.name] = "inputs are not int8 here; quantizing would add conversions"
            return False
        self.mark(*free)
        self.skipped.pop(node.name, None)
        self.quantized[node.name] = NodePlan(name=node.name, op=node.op, role=h.role,
                                             const_inputs=consts)
        self.mark(*_data_outputs(node, h))
        return True


def annotate(graph: gs.Graph, *, per_channel: bool = True, exclude_nodes=(),
             exclude_op_types=(), fold_activations: bool = True,
             keep_float: dict[str, str] | None = None,
             weight_only_ops: tuple[str, ...] = (), force_int8=frozenset(),
             inputs_only: bool = False) -> QuantPlan:
    """Decide what to quantize in ``graph`` and in every subgraph (If/Loop/Scan bodies), each
    by the same rules; ``graph`` is not changed. Operators of other domains stay float.
    ``keep_float`` maps more nodes to keep in float to the reason the report gives;
    ``weight_only_ops`` (e.g. Gather) get int8 weights behind a DequantizeLinear;
    ``force_int8`` names elective nodes to quantize even where their inputs are float.
    ``inputs_only`` (the OpenVINO EP): int8 tensors are compute inputs only — no output Q on a
    Conv/MatMul (OpenVINO fuses the activation and the next quantizer into the conv), both
    inputs of a residual Add, and every consumer of an int8 tensor reads its one
    DequantizeLinear (a float copy beside it leaves OpenVINO an unfused quantizer)."""
    excluded = {n.name: f"domain {n.domain!r}: not a standard ONNX operator" for g in
                G.iter_graphs(graph) for n in g.nodes if n.domain not in (None, "", "ai.onnx")} \
        | {n: "excluded by configuration" for n in exclude_nodes} | dict(keep_float or {})
    plans = [_annotate_one(g, per_channel, excluded, exclude_op_types, fold_activations,
                           tuple(weight_only_ops), frozenset(force_int8), inputs_only)
             for g in G.iter_graphs(graph)]
    plan = plans[0] if len(plans) == 1 else _merged(plans)
    return replace(plan, bounds=flat_bounds(graph, plan))


def _merged(plans: list[QuantPlan]) -> QuantPlan:
    seen: set[str] = set()
    activations = []
    for p in plans:
        for a in p.activations:
            if a.name not in seen:
                seen.add(a.name)
                activations.append(a)
    uppers: dict[str, float] = {}
    for p in plans:
        uppers.update(p.upper_bounds)
    return QuantPlan(nodes=tuple(n for p in plans for n in p.nodes),
                     activations=tuple(activations),
                     folds=tuple(f for p in plans for f in p.folds),
                     skipped=tuple(s for p in plans for s in p.skipped),
                     per_channel=plans[0].per_channel, upper_bounds=uppers)


def _annotate_one(graph: gs.Graph, per_channel: bool, excluded: dict[str, str],
                  exclude_op_types, fold_activations: bool,
                  weight_only_ops: tuple[str, ...], forced: frozenset[str],
                  inputs_only: bool = False) -> QuantPlan:
    an = _Analysis(graph, per_channel, excluded, set(exclude_op_types),
                   fold_activations, weight_only_ops)
    an.forced, an.inputs_only = forced, inputs_only
    nodes = list(graph.nodes)
    for _ in range(len(nodes) + 1):
        changed = False
        for node in nodes:
            changed |= an.visit(node)
        if not changed:
            break
    for node in nodes:
        if node.op in FLOAT_ONLY and node.name not in an.skipped:
            an.skipped[node.name] = FLOAT_ONLY[node.op]
    folded_sources = {f.source for f in an.folds.values()}
    roots = sharing_roots(graph, {n for n, p in an.quantized.items() if p.role is Role.SHARED},
                          an.int8)
    int8_producers = {t.name for n in nodes if n.name in an.quantized for t in n.outputs}
    int8_producers |= {f.target for f in an.folds.values()}
    order = {t: i for i, t in enumerate(graph.tensors())}
    acts = tuple(
        ActivationPlan(name=t, root=roots[t], all_consumers=inputs_only or t in int8_producers)
        for t in sorted(roots, key=lambda x: order.get(x, 0))
        if t not in folded_sources and not (inputs_only and roots[t] != t)
    )  # OpenVINO: a dequantized value flows through data movement, never quantized again
    uppers = {f.target: f.upper for f in an.folds.values() if f.upper is not None}
    plan_nodes = tuple(an.quantized[n.name] for n in nodes if n.name in an.quantized)
    skipped = tuple((n.name, an.skipped[n.name]) for n in nodes if n.name in an.skipped
                    and n.name not in an.quantized)
    return QuantPlan(nodes=plan_nodes, activations=acts,
                     folds=tuple(an.folds[n.name] for n in nodes if n.name in an.folds),
                     skipped=skipped, per_channel=an.per_channel, upper_bounds=uppers)
