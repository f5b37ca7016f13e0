"""QLinear (QOperator) lowering: QDQ-wrapped ops become onnxruntime's integer operators.

QDQ is the canonical form; this pass rewrites each ``DequantizeLinear → op → QuantizeLinear``
group of the *same plan* into one integer op, so both formats can be compared node by node:

* Conv → QLinearConv, MatMul → QLinearMatMul (or com.microsoft MatMulIntegerToFloat when its
  output stays float), Gemm → com.microsoft QGemm (float output allowed);
* Add, Mul, Concat, AveragePool, GlobalAveragePool, Sigmoid, LeakyRelu, Softmax →
  com.microsoft QLinearAdd, QLinearMul, QLinearConcat, QLinearAveragePool,
  QLinearGlobalAveragePool, QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax;
* data movement (MaxPool, Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Resize, Split,
  Slice) whose input and output share parameters runs directly on the int8 tensor.

A group that does not match exactly (a float input, an output with several consumers) stays
in QDQ form and is reported as skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq import quant_math as qm
from onnxq.pipeline import PassResult
from onnxq.qtypes import QParams, QType

__all__ = ["QLinearLoweringPass", "MS_DOMAIN"]

MS_DOMAIN = "com.microsoft"
_UNARY_MS = {"AveragePool": "QLinearAveragePool", "GlobalAveragePool":
             "QLinearGlobalAveragePool", "Sigmoid": "QLinearSigmoid",
             "LeakyRelu": "QLinearLeakyRelu", "Softmax": "QLinearSoftmax"}
_BINARY_MS = {"Add": "QLinearAdd", "Mul": "QLinearMul"}
_MOVEMENT = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Resize",
             "Split", "Slice"}


def _dq_of(t: gs.Tensor) -> gs.Node | None:
    p = G.producer(t)
    return p if p is not None and G.is_dq(p) and len(p.inputs) >= 2 else None


def _q_after(t: gs.Tensor, outputs: set[str]) -> gs.Node | None:
    if t.name in outputs or len(t.outputs) != 1 or not G.is_q(t.outputs[0]):
        return None
    return t.outputs[0]


def _zero_of(dq: gs.Node) -> np.generic:
    """0 in the integer type of ``dq``'s constant input (its default zero point)."""
    value = G.constant_value(dq.inputs[0])
    if value is None:
        raise ValueError(f"DequantizeLinear {dq.name!r} has no zero point and a non-constant "
                         "input, so its integer type is unknown; give it a zero point")
    return value.dtype.type(0)


def _triplet(graph: gs.Graph, dq: gs.Node) -> list[gs.Tensor]:
    """(quantized tensor, scale, zero point) feeding ``dq``."""
    zp = dq.inputs[2] if len(dq.inputs) > 2 else gs.Constant(
        G.unique_name(graph, f"{dq.name}_zp0"), _zero_of(dq))
    return [dq.inputs[0], dq.inputs[1], zp]


def _q_params(q: gs.Node) -> list[gs.Tensor]:
    return [q.inputs[1], q.inputs[2]]


def _replace(graph: gs.Graph, node: gs.Node, op: str, inputs: list, output: gs.Tensor,
             *, domain: str = "", attrs: dict | None = None) -> None:
    new = gs.Node(op, node.name, attrs=dict(node.attrs if attrs is None else attrs),
                  inputs=inputs, outputs=[output], domain=domain or None)
    G.detach(node)
    graph.nodes.append(new)


def _detach_q(q: gs.Node) -> gs.Tensor:
    out = q.outputs[0]
    G.detach(q)
    return out


def _int32_bias(graph: gs.Graph, node: gs.Node, bias: gs.Tensor, x_scale: gs.Tensor,
                w_scale: gs.Tensor) -> list[gs.Tensor] | None:
    """A float bias (QAT exports) as int32 with ``quant_math.bias_params`` (the same scale,
    floor included, as ``InsertQDQPass`` gives a bias)."""
    b, xs, ws = (G.constant_value(t) for t in (bias, x_scale, w_scale))
    if b is None or xs is None or ws is None or b.ndim != 1 or xs.size != 1:
        return None
    wparams = QParams(scale=np.asarray(ws, np.float32), zero_point=np.zeros(ws.shape, np.int8),
                      qtype=QType.S8, axis=0 if ws.ndim else None)
    params = qm.bias_params(np.float32(xs.reshape(())), wparams)
    q, _ = qm.quantize_bias(b, params)
    return [gs.Constant(G.unique_name(graph, f"{node.name}_bias_int32"),
                        np.broadcast_to(q, b.shape).astype(np.int32).copy())]


def _lower_compute(graph: gs.Graph, node: gs.Node, outputs: set[str]) -> str | None:
    dqs = [_dq_of(t) for t in node.inputs[:2]]
    if len(node.inputs) < 2 or any(d is None for d in dqs):
        return "an input is not dequantized int8"
    q = _q_after(node.outputs[0], outputs)
    x, w = (_triplet(graph, d) for d in dqs)
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    bias_dq = _dq_of(bias) if bias is not None else None
    b_q: list[gs.Tensor] | None
    if bias_dq is not None:
        b_q = [bias_dq.inputs[0]]
    elif bias is not None:  # a float bias (QAT exports): int32 with scale x_scale × w_scale
        b_q = _int32_bias(graph, node, bias, x[1], w[1])
        if b_q is None:
            return "the bias is neither int32 nor a constant"
    else:
        b_q = []
    if node.op == "Conv":
        if q is None:
            return "the output has no single QuantizeLinear"
        _replace(graph, node, "QLinearConv", x + w + _q_params(q) + b_q, _detach_q(q))
    elif node.op == "Gemm":
        y = _q_params(q) if q is not None else []
        c = b_q or ([gs.Variable.empty()] if y else [])
        out = _detach_q(q) if q is not None else node.outputs[0]
        attrs = {k: v for k, v in node.attrs.items() if k in ("alpha", "transA", "transB")}
        _replace(graph, node, "QGemm", x + w + c + y, out, domain=MS_DOMAIN, attrs=attrs)
    elif q is not None:  # MatMul with an int8 output
        _replace(graph, node, "QLinearMatMul", x + w + _q_params(q), _detach_q(q), attrs={})
    else:  # MatMul with a float output
        _replace(graph, node, "MatMulIntegerToFloat", [x[0], w[0], x[1], w[1], x[2], w[2]],
                 node.outputs[0], domain=MS_DOMAIN, attrs={})
    return None


def _lower_elementwise(graph: gs.Graph, node: gs.Node, outputs: set[str]) -> str | None:
    q = _q_after(node.outputs[0], outputs)
    dqs = [_dq_of(t) for t in node.inputs if t.name]
    if q is None or not dqs or any(d is None for d in dqs):
        return "not wrapped in DequantizeLinear/QuantizeLinear"
    ins = [_triplet(graph, d) for d in dqs]
    if node.op in _BINARY_MS:
        inputs = ins[0] + ins[1] + _q_params(q)
        _replace(graph, node, _BINARY_MS[node.op], inputs, _detach_q(q), domain=MS_DOMAIN)
    elif node.op == "Concat":
        inputs = _q_params(q) + [t for trip in ins for t in trip]
        _replace(graph, node, "QLinearConcat", inputs, _detach_q(q), domain=MS_DOMAIN)
    else:
        attrs = dict(node.attrs)
        if node.op == "GlobalAveragePool" or node.op == "AveragePool":
            attrs["channels_last"] = 0
        if node.op == "Softmax":
            attrs["opset"] = G.opset(graph)
        inputs = ins[0] + _q_params(q)
        _replace(graph, node, _UNARY_MS[node.op], inputs, _detach_q(q), domain=MS_DOMAIN,
                 attrs=attrs)
    return None


def _lower_movement(node: gs.Node, outputs: set[str]) -> str | None:
    dq = _dq_of(node.inputs[0]) if node.inputs else None
    qs = [_q_after(t, outputs) for t in node.outputs if t.name]
    if dq is None or not qs or any(q is None or not G.same_qparams(dq, q) for q in qs):
        return "input and output parameters differ"
    node.inputs[0] = dq.inputs[0]
    for i, q in enumerate(qs):
        node.outputs[i] = _detach_q(q)
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class QLinearLoweringPass:
    name: str = "qlinear"

    @staticmethod
    def _looks_quantized(node: gs.Node, outputs: set[str]) -> bool:
        """A QDQ group that could not be lowered (worth reporting), not a float op."""
        has_dq = any(_dq_of(t) for t in node.inputs if t.name)
        has_q = any(_q_after(t, outputs) for t in node.outputs if t.name)
        return has_dq and (has_q or node.op in {"Conv", "MatMul", "Gemm"})

    def run(self, graph: gs.Graph) -> PassResult:
        outputs = G.graph_output_names(graph)
        skipped: list[tuple[str, str]] = []
        lowered = 0
        for node in list(graph.nodes):
            if not node.outputs or node.domain == MS_DOMAIN:
                continue
            if node.op in {"Conv", "MatMul", "Gemm"}:
                why = _lower_compute(graph, node, outputs)
            elif node.op in _BINARY_MS or node.op in _UNARY_MS or node.op == "Concat":
                why = _lower_elementwise(graph, node, outputs)
            elif node.op in _MOVEMENT:
                why = _lower_movement(node, outputs)
            else:
                continue
            if why is None:
                lowered += 1
            elif self._looks_quantized(node, outputs):
                skipped.append((node.name, f"kept in QDQ form: {why}"))
        if lowered:
            graph.cleanup().toposort()
        return PassResult(graph=graph, modified=bool(lowered), skipped=tuple(skipped),
                          notes=(f"{lowered} node(s) lowered to QLinear operators",)
                          if lowered else ())
