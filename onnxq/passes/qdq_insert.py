"""InsertQDQ: materialize a ``QuantPlan`` as QuantizeLinear/DequantizeLinear nodes.

Activations get one Q→DQ pair per tensor (shared by all its int8 consumers); constant weights
become int8 initializers behind a DequantizeLinear (per channel where the plan says so);
biases become int32 with scale = input scale × weight scale; absorbed Relu/Clip nodes go away.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq import quant_math as qm
from onnxq.errors import CalibrationError
from onnxq.kernels.isa import weight_reduce_range
from onnxq.pipeline import PassResult
from onnxq.plan import ActivationPlan, NodePlan, QuantPlan
from onnxq.qtypes import QParams, QType, TensorRange
from onnxq.quant_ops import pads_channels, zero_padding

__all__ = ["InsertQDQPass"]


def _already_quantized(t: gs.Tensor, here: set[int]) -> bool:
    """``t`` comes from a DequantizeLinear, or is quantized by a QuantizeLinear of this graph
    (``here``: ids of its nodes; a subgraph reading an outer tensor quantizes it itself)."""
    p = G.producer(t)
    return (p is not None and G.is_dq(p)) or any(G.is_q(c) and id(c) in here
                                                 for c in t.outputs)


@dataclass(slots=True)
class _Run:
    """Working state of one ``run`` call."""

    graph: gs.Graph
    plan: QuantPlan
    act_params: dict[str, QParams] = field(default_factory=dict)
    weight_cache: dict[tuple[str, int | None, bool], tuple[gs.Variable, QParams]] = field(
        default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    modified: bool = False


#: s8 symmetric costs a signed range ``2·max(|lo|, hi) / (hi - lo)`` times u8's step; up to
#: this factor it is taken for its zero point 0 (OpenVINO's int8 convs then skip the
#: zero-point compensation), beyond it (a slightly negative tail, e.g. after HardSwish: a
#: whole bit lost, measured cosine 0.95 instead of 0.9999 on a text recognizer) u8 asymmetric
SIGNED_STEP_RATIO = 1.25


def _sign_aware(rng: TensorRange) -> qm.QParams:
    """u8 with zero point 0 for a non-negative range; s8 symmetric for a signed one whose two
    sides are close enough (``SIGNED_STEP_RATIO``); u8 asymmetric otherwise."""
    lo, hi = min(float(rng.lo), 0.0), max(float(rng.hi), 0.0)
    if lo < 0.0 and 2.0 * max(-lo, hi) <= SIGNED_STEP_RATIO * (hi - lo):
        return qm.activation_params(rng, QType.S8, symmetric=True)
    return qm.activation_params(rng, QType.U8)


#: data movement the OpenVINO EP moves a dequantization through
_MOVING = frozenset({"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
                     "Slice", "Identity"})


def _channel_padded(graph: gs.Graph, plan: QuantPlan) -> set[str]:
    """Roots of int8 tensors that reach (through data movement) a Pad of the channel axis.
    OpenVINO moves their dequantization through the Pad and widens a non-zero zero point to
    the padded channel count, which its compiler then rejects where the same tensor feeds a
    conv (onnxruntime-openvino 1.24.1 on MediaPipe face mesh and BlazeFace: a [1, 32, 1, 1]
    zero point on 16 channels); zero point 0 has no such subtraction."""
    tensors = graph.tensors()
    out = set()
    for act in plan.activations:
        frontier, seen = [tensors.get(act.name)], 0
        while frontier and seen < 64:
            t = frontier.pop()
            seen += 1
            for user in t.outputs if t is not None else ():
                if user.op == "Pad" and zero_padding(user) and pads_channels(user):
                    out.add(act.root)
                elif user.op in _MOVING:
                    frontier.extend(user.outputs[:1])
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class InsertQDQPass:
    plan: QuantPlan
    ranges: Mapping[str, TensorRange]
    activation_type: QType = QType.U8
    activation_symmetric: bool = False
    #: the OpenVINO EP's types: with ``activation_symmetric``, zero point 0 where it costs
    #: little precision (``_sign_aware``); always zero point 0 at channel pads
    #: (``_channel_padded``)
    openvino: bool = False
    weight_type: QType = QType.S8
    reduce_range: bool = False
    name: str = "insert_qdq"

    def run(self, graph: gs.Graph) -> PassResult:
        state = _Run(graph=graph, plan=self.plan)
        self._params(state)
        tensors = graph.tensors()
        nodes = {n.name: n for n in graph.nodes}
        for node_plan in self.plan.nodes:
            node = nodes.get(node_plan.name)
            if node is not None:
                self._weights_and_bias(state, node, node_plan, tensors)
        self._fold(state, nodes, tensors)
        tensors = graph.tensors()
        quantized_nodes = {n.name for n in self.plan.nodes}
        here = {id(n) for n in graph.nodes}
        for act in self.plan.activations:
            t = tensors.get(act.name)
            if t is not None and not _already_quantized(t, here):
                self._insert(state, t, act, quantized_nodes, here)
        if state.modified:
            graph.cleanup().toposort()
        return PassResult(graph=graph, modified=state.modified, skipped=tuple(state.skipped))

    # -- parameters -----------------------------------------------------------------------
    def _params(self, state: _Run) -> None:
        padded = _channel_padded(state.graph, self.plan) if self.openvino else set()
        for root in self.plan.calibration_tensors:
            rng = self.ranges.get(root)
            if rng is None:
                raise CalibrationError(f"no calibrated range for tensor {root!r}; the ranges "
                                       "do not match this model (recalibrate)")
            upper = self.plan.upper_bounds.get(root)
            if upper is not None and rng.hi > upper:
                rng = TensorRange(rng.lo, upper)
            if root in padded:  # s8 symmetric, or u8 from 0 for a non-negative range
                state.act_params[root] = qm.activation_params(
                    rng, QType.S8 if rng.lo < 0 else QType.U8, symmetric=rng.lo < 0)
                continue
            if self.openvino and self.activation_symmetric:
                state.act_params[root] = _sign_aware(rng)
                continue
            state.act_params[root] = qm.activation_params(
                rng, self.activation_type, symmetric=self.activation_symmetric)

    # -- weights and biases -----------------------------------------------------------------
    def _weights_and_bias(self, state: _Run, node: gs.Node, plan: NodePlan, tensors) -> None:
        wparams = None
        if plan.weight is not None:
            idx, axis = plan.weight
            w = G.constant_value(node.inputs[idx], cache=False)
            if w is None:  # already quantized by an earlier run
                return
            if w.size and not (np.all(np.isfinite(w)) and float(np.abs(w).max()) <= 1e30):
                state.skipped.append((node.name, "weights are not finite or exceed 1e30 in "
                                      "magnitude; kept in float (int8 would zero them)"))
                return
            reduce = weight_reduce_range(node.op, w.shape, int(node.attrs.get("group", 1)),
                                         self.reduce_range)
            key = (node.inputs[idx].name, axis, reduce)
            if key not in state.weight_cache:
                params = qm.weight_params(w, self.weight_type, axis=axis, reduce_range=reduce)
                out = G.make_dq_constant(state.graph, qm.quantize(w, params), params,
                                         node.inputs[idx].name, w.shape)
                state.weight_cache[key] = (out, params)
            out, wparams = state.weight_cache[key]
            node.inputs[idx] = out
            state.modified = True
        if plan.bias is not None and wparams is not None:
            self._bias(state, node, node, plan.bias, wparams)
        if plan.bias_add is not None and wparams is not None:
            add = next((n for n in state.graph.nodes if n.name == plan.bias_add[0]), None)
            if add is not None:
                self._bias(state, node, add, plan.bias_add[1], wparams)
        for idx in plan.const_inputs:
            value = G.constant_value(node.inputs[idx])
            if value is None:
                continue
            params = qm.activation_params(TensorRange(float(value.min()), float(value.max())),
                                          self.activation_type)
            node.inputs[idx] = G.make_dq_constant(
                state.graph, qm.quantize(value, params), params,
                f"{node.name}_in{idx}", value.shape)
            state.modified = True

    def _bias(self, state: _Run, node: gs.Node, holder: gs.Node, idx: int,
              wparams: QParams) -> None:
        """Make ``holder.inputs[idx]`` (the bias of ``node``) an int32 DequantizeLinear."""
        b = G.constant_value(holder.inputs[idx])
        x_root = self._root_of(node.inputs[0].name)
        if b is None or x_root is None:
            return
        params = qm.bias_params(state.act_params[x_root].scale, wparams)
        if params.scale.ndim and params.scale.shape[0] != b.shape[0]:
            params = QParams(scale=np.broadcast_to(params.scale, b.shape).copy(),
                             zero_point=np.zeros(b.shape, np.int32), qtype=QType.S32, axis=0)
        values, saturated = qm.quantize_bias(b, params)
        if saturated:
            state.skipped.append((node.name, f"{saturated} bias value(s) saturated int32"))
        holder.inputs[idx] = G.make_dq_constant(state.graph, values, params,
                                                f"{node.name}_bias", b.shape)
        state.modified = True

    def _root_of(self, name: str) -> str | None:
        for act in self.plan.activations:
            if act.name == name:
                return act.root
        return None

    # -- absorbed activations ----------------------------------------------------------------
    def _fold(self, state: _Run, nodes: dict[str, gs.Node], tensors) -> None:
        for fold in self.plan.folds:
            relu = nodes.get(fold.node)
            source = tensors.get(fold.source)
            if relu is None or source is None or not relu.outputs:
                continue
            producer = G.producer(source)
            if producer is None:
                continue
            producer.outputs[producer.outputs.index(source)] = relu.outputs[0]
            G.detach(relu)
            state.modified = True

    # -- activations -------------------------------------------------------------------------
    def _insert(self, state: _Run, t: gs.Variable, act: ActivationPlan,
                quantized_nodes: set[str], here: set[int]) -> None:
        """Q→DQ of ``t`` for its readers in this graph. Every graph that reads ``t`` gets its
        own pair, so the DequantizeLinear sits beside its consumer (onnxruntime fuses only
        within one graph); "all consumers" holds only in the graph that produces ``t``."""
        params = state.act_params[act.root]
        p = G.producer(t)
        all_here = act.all_consumers and (p is None or id(p) in here)
        readers = [c for c in t.outputs if id(c) in here
                   and (all_here or c.name in quantized_nodes)]
        is_output = t.name in G.graph_output_names(state.graph)
        nested = self._nested_readers(state.graph, t) if all_here else []
        if not readers and not nested and not (is_output and all_here):
            return
        q, _, dq_out = G.make_qdq(state.graph, t, params, t.name)
        G.replace_uses(t, dq_out, readers)
        for sub, sub_readers in nested:
            # an int8 producer: subgraphs read its dequantized value and quantize it themselves
            # (same parameters, so exact). Never an int8 tensor read across the scope: then a
            # QuantizeLinear output is an implicit input of the If/Loop, and onnxruntime's
            # DQ->Q cleanup indexes past the node's inputs and aborts (found by the fuzz suite)
            G.share_names(state.graph, sub)
            _, _, inner = G.make_qdq(sub, dq_out, params, t.name)
            G.replace_uses(t, inner, sub_readers)
        if is_output and all_here:
            name = t.name
            t.name = G.unique_name(state.graph, f"{name}_float")
            dq_out.name = name
            state.graph.outputs = [dq_out if o is t else o for o in state.graph.outputs]
        state.modified = True

    @staticmethod
    def _nested_readers(graph: gs.Graph, t: gs.Tensor) -> list[tuple[gs.Graph, list[gs.Node]]]:
        """Readers of ``t`` inside subgraphs of ``graph`` (at any depth), per subgraph."""
        found = []
        for sub in list(G.iter_graphs(graph))[1:]:
            ids = {id(n) for n in sub.nodes}
            readers = [c for c in t.outputs if id(c) in ids]
            if readers:
                found.append((sub, readers))
        return found
