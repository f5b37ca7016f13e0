"""Fold a bias ``Add`` and a constant ``Mul``/``Div`` after an int8 MatMul with a float output
into onnxruntime's ``MatMulIntegerToFloat`` (CPU EP).

onnxruntime runs ``DequantizeLinear → MatMul`` with a float output as its contrib
``MatMulIntegerToFloat`` (the QDQ form through its QDQ transformer, the QLinear form as
written). That kernel scales the int32 product by ``a_scale × b_scale`` and adds an optional
bias in the GEMM's output stage, for free, but neither path hands it what follows: the bias
``Add`` stays a kernel of its own, an ``Add(bias) → Gelu`` after it becomes ``BiasGelu`` instead
of ``Gelu``, and attention's ``scores × 1/√d`` is one more pass over the scores. Measured on an
int8 BERT-base (12×768, seq 128, onnxruntime 1.32, AVX-512 VNNI, profiler kernel time per
run): 36 bias ``Add`` kernels 0.65 ms and 12 ``BiasGelu`` 1.94 ms, against 12 ``Gelu`` 1.05 ms
once the biases are folded; the 12 score ``Mul`` kernels 0.27 ms.

This pass writes ``MatMul(DQ(a), DQ(b))`` or ``MatMulIntegerToFloat(…)`` followed by
* ``Mul`` by (or ``Div`` by) a positive float32 scalar constant: ``a_scale`` becomes
  ``a_scale × c`` (or ``a_scale / c``), and
* ``Add`` of a float32 constant of shape ``[N]`` (or ``[1, …, 1, N]`` no longer than the
  product's rank), N > 1 the product's last dimension: the bias becomes the seventh input,
as one ``MatMulIntegerToFloat``, when the product is read by that node only and is not a graph
output, and both dequantizations are 8-bit with a per-tensor ``a`` and a per-tensor or
per-column ``b`` (the kernel's contract). The values are those of the unfused nodes up to float
rounding of the scale product. It runs for the CPU EP only: the node is an onnxruntime contrib
operator.

A ``MatMul(DQ(a), DQ(W))`` with a constant weight, read only by a ``Relu`` or ``Clip`` whose
output is not requantized, is written as a ``MatMulIntegerToFloat`` too, the activation after
it: onnxruntime's QDQ selector takes the activation into the MatMul's group, rejects the group
for want of a QuantizeLinear, and runs the MatMul in float, dequantizing its weight on every
run (onnxruntime 1.32, any rank, per-tensor or per-channel weights; a LeakyRelu, Tanh or
Sigmoid there leaves it integer). Measured on an AVX2 CPU, a 512×512 Dense at one row ran at
0.02× FP32 that way, 1.15× as ``MatMulIntegerToFloat``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.pipeline import PassResult

__all__ = ["MatMulEpiloguePass", "UnquantizedBiasPass"]

MS_DOMAIN = "com.microsoft"
_INT8 = (np.dtype(np.int8), np.dtype(np.uint8))


def _is_default(node: gs.Node) -> bool:
    return node.domain in (None, "", "ai.onnx")


def _binary(graph: gs.Graph, ops: tuple[str, ...]) -> list[gs.Node]:
    """The graph's two-input, one-output ONNX-domain nodes of type ``ops`` (a snapshot)."""
    return [n for n in graph.nodes if n.op in ops and _is_default(n) and len(n.inputs) == 2
            and len(n.outputs) == 1]


def _bias_of(add: gs.Node, product: gs.Tensor) -> gs.Tensor | None:
    """The other input of ``add`` when it is a float32 bias row the kernel can take."""
    return _bias_row(add.inputs[1] if add.inputs[0] is product else add.inputs[0], product)


def _bias_row(other: gs.Tensor, product: gs.Tensor) -> gs.Tensor | None:
    """``other`` when it is a float32 constant row the kernel can add to ``product``."""
    shape = G.constant_shape(other)
    if shape is None or not shape or shape[-1] <= 1 or any(d != 1 for d in shape[:-1]):
        return None
    rank = len(product.shape) if product.shape is not None else None
    if len(shape) > 1 and (rank is None or len(shape) > rank):
        return None  # a leading 1 the product lacks would change the output's rank
    value = G.constant_value(other)
    if value is None or value.dtype != np.float32:
        return None
    return other


def _dq_triplet(tensor: gs.Tensor, per_column: bool) -> list[gs.Tensor] | None:
    """``[quantized, scale, zero_point]`` of an 8-bit DequantizeLinear feeding ``tensor``;
    per-tensor, or (``per_column``) per-column on the last axis of a matrix of rank ≥ 2."""
    dq = G.producer(tensor)
    if dq is None or not G.is_dq(dq) or "block_size" in dq.attrs:
        return None
    q = dq.inputs[0]
    zp = dq.inputs[2] if len(dq.inputs) > 2 and dq.inputs[2].name else gs.Variable.empty()
    dtype = q.dtype if q.dtype is not None else zp.dtype  # an untyped input has its zp's type
    if dtype is None or np.dtype(dtype) not in _INT8:
        return None
    scale = G.constant_value(dq.inputs[1])
    if scale is None or scale.dtype != np.float32:
        return None
    if scale.size != 1:
        shape = G.constant_shape(q) or q.shape
        rank = len(shape) if shape is not None else 0
        if not per_column or scale.ndim != 1 or rank < 2:
            return None
        if int(dq.attrs.get("axis", 1)) % rank != rank - 1:
            return None
    return [q, dq.inputs[1], zp]


def _operands(node: gs.Node) -> list[gs.Tensor] | None:
    """The six ``MatMulIntegerToFloat`` inputs computing ``node``'s product, else None."""
    if node.op == "MatMulIntegerToFloat" and node.domain == MS_DOMAIN:
        if len(node.inputs) > 6 and node.inputs[6].name:
            return None  # already has a bias
        return list(node.inputs[:6]) + [gs.Variable.empty()] * (6 - len(node.inputs))
    if node.op != "MatMul" or not _is_default(node) or len(node.inputs) != 2:
        return None
    a = _dq_triplet(node.inputs[0], per_column=False)
    b = _dq_triplet(node.inputs[1], per_column=True)
    if a is None or b is None:
        return None
    return [a[0], b[0], a[1], b[1], a[2], b[2]]


def _candidate(node_after: gs.Node, product: gs.Tensor, outputs: set[str]
               ) -> tuple[gs.Node, list[gs.Tensor]] | None:
    """The product's producer and its six kernel inputs, when only ``node_after`` reads it."""
    node = G.producer(product)
    if (node is None or product.name in outputs or len(G.consumers(product)) != 1
            or len(node.outputs) != 1):
        return None
    operands = _operands(node)
    return None if operands is None else (node, operands)


def _replace(graph: gs.Graph, old: gs.Node, after: gs.Node, inputs: list[gs.Tensor]) -> None:
    fused = gs.Node("MatMulIntegerToFloat", G.unique_name(graph, old.name), inputs=inputs,
                    outputs=list(after.outputs), domain=MS_DOMAIN)
    G.detach(old, after)
    graph.nodes.append(fused)


def _fold_bias(graph: gs.Graph, add: gs.Node, outputs: set[str]) -> bool:
    for product in add.inputs:
        bias = _bias_of(add, product)
        found = _candidate(add, product, outputs) if bias is not None else None
        if bias is None or found is None:
            continue
        node, operands = found
        b_shape = G.constant_shape(operands[1]) or operands[1].shape
        if not b_shape or not isinstance(b_shape[-1], int) or b_shape[-1] != bias.shape[-1]:
            continue
        if len(bias.shape) > 1:
            row = np.asarray(G.constant_value(bias)).reshape(-1)
            bias = gs.Constant(G.unique_name(graph, f"{bias.name}_row"), row)
        _replace(graph, node, add, operands + [bias])
        return True
    return False


def _fold_scale(graph: gs.Graph, op: gs.Node, outputs: set[str]) -> bool:
    """``product × c`` or ``product / c`` with a positive scalar ``c``: into ``a_scale``."""
    pairs = ([(op.inputs[0], op.inputs[1]), (op.inputs[1], op.inputs[0])] if op.op == "Mul"
             else [(op.inputs[0], op.inputs[1])])
    for product, other in pairs:
        c = G.constant_value(other)
        if (c is None or c.dtype != np.float32 or c.size != 1 or not np.isfinite(c).all()
                or float(c.reshape(())) <= 0):
            continue
        rank = len(product.shape) if product.shape is not None else None
        if c.ndim > 0 and (rank is None or c.ndim > rank):
            continue  # a [1, 1, 1, 1] multiplier would raise the product's rank
        found = _candidate(op, product, outputs)
        a_scale = G.constant_value(found[1][2]) if found is not None else None
        if found is None or a_scale is None or a_scale.dtype != np.float32:
            continue
        node, operands = found
        factor = c.reshape(()) if op.op == "Mul" else np.float32(1) / c.reshape(())
        operands[2] = gs.Constant(G.unique_name(graph, f"{operands[2].name}_{op.name}"),
                                  np.asarray(a_scale * factor, dtype=np.float32))
        _replace(graph, node, op, operands)
        return True
    return False


def _keep_integer(graph: gs.Graph, act: gs.Node, outputs: set[str]) -> bool:
    """``MatMul(DQ(a), DQ(W)) → Relu|Clip`` with no QuantizeLinear after: the MatMul as a
    ``MatMulIntegerToFloat`` (onnxruntime would run the rejected QDQ group in float)."""
    readers = G.consumers(act.outputs[0]) if act.outputs else []
    if not act.inputs or (len(readers) == 1 and G.is_q(readers[0])):
        return False  # QLinearMatMul with the activation folded into its output
    found = _candidate(act, act.inputs[0], outputs)
    if found is None or found[0].op != "MatMul" or G.constant_value(found[1][1]) is None:
        return False
    node, operands = found
    fused = gs.Node("MatMulIntegerToFloat", G.unique_name(graph, node.name), inputs=operands,
                    outputs=list(node.outputs), domain=MS_DOMAIN)
    G.detach(node)
    graph.nodes.append(fused)
    return True


@dataclass(frozen=True, slots=True, kw_only=True)
class MatMulEpiloguePass:
    name: str = "matmul-epilogue"

    def run(self, graph: gs.Graph) -> PassResult:
        outputs = G.graph_output_names(graph)
        scales = sum(_fold_scale(graph, n, outputs) for n in _binary(graph, ("Mul", "Div")))
        biases = sum(_fold_bias(graph, n, outputs) for n in _binary(graph, ("Add",)))
        acts = [n for n in graph.nodes if n.op in ("Relu", "Clip") and _is_default(n)]
        kept = sum(_keep_integer(graph, n, outputs) for n in acts)
        if scales or biases or kept:
            graph.cleanup().toposort()
        notes = ((f"MatMulIntegerToFloat takes in {biases} bias Add(s) and {scales} constant "
                  "scale(s) after it: onnxruntime applies them in the GEMM's output stage",)
                 if scales or biases else ()) + ((
                     f"{kept} int8 MatMul(s) before a Relu/Clip with a float output written as "
                     "MatMulIntegerToFloat: onnxruntime would run them in float",) if kept else ())
        return PassResult(graph=graph, modified=bool(scales or biases or kept), notes=notes)


def _float_bias(tensor: gs.Tensor) -> np.ndarray | None:
    """The float value of a constant bias, or of a constant dequantized by a per-tensor (or
    per-element, for a row) DequantizeLinear; None otherwise."""
    dq = G.producer(tensor)
    if dq is None:
        value = G.constant_value(tensor)
        return value if value is not None and value.dtype == np.float32 else None
    if not G.is_dq(dq) or "block_size" in dq.attrs:
        return None
    q, scale = G.constant_value(dq.inputs[0]), G.constant_value(dq.inputs[1])
    zp = G.constant_value(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2].name else None
    if q is None or scale is None or scale.dtype != np.float32 or (
            scale.size != 1 and scale.shape != q.shape):
        return None
    zero = np.zeros(1) if zp is None else zp.astype(np.float64).reshape(scale.shape)
    return ((q.astype(np.float64) - zero) * scale.astype(np.float64)).astype(np.float32)


def _unquantize(graph: gs.Graph, add: gs.Node, outputs: set[str]) -> bool:
    for i, t in enumerate(add.inputs):
        dq = G.producer(t)
        q = G.producer(dq.inputs[0]) if dq is not None and G.is_dq(dq) else None
        if q is None or not G.is_q(q) or not G.same_qparams(q, dq):
            continue
        chain = (q.inputs[0], q.outputs[0], t)
        if any(x.name in outputs or len(G.consumers(x)) != 1 for x in chain):
            continue
        product = q.inputs[0]
        node = G.producer(product)
        if node is None or len(node.outputs) != 1 or _operands(node) is None:
            continue
        other = add.inputs[1 - i]
        bias = _float_bias(other)
        if bias is None:
            continue
        row = gs.Constant(G.unique_name(graph, f"{add.name}_bias"), bias)
        weight = _operands(node)[1]  # type: ignore[index]
        b_shape = G.constant_shape(weight) or weight.shape
        if _bias_row(row, product) is None or not b_shape or b_shape[-1] != bias.shape[-1]:
            continue
        add.inputs[i], add.inputs[1 - i] = product, row
        G.detach(q, dq)
        return True
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class UnquantizedBiasPass:
    """Before lowering (CPU EP): an int8 MatMul product requantized only to be added to a
    constant bias (``MatMul → Q → DQ → Add(bias)``, the Add itself int8, as in attention's
    q/k/v projections) keeps a float product and a float bias instead. onnxruntime then runs
    ``QLinearMatMul`` + ``QLinearAdd`` as one ``MatMulIntegerToFloat`` with its bias (after
    ``MatMulEpiloguePass``) and a ``QuantizeLinear`` — one kernel and one rounding less.
    Measured on BERT-base-shaped (2 threads, AVX-512 VNNI): 1.3 % faster; output cosine to
    FP32 0.99970 → 0.99975. The bias is the value the int8 model used (its dequantized
    constant)."""
    name: str = "unquantized-bias"

    def run(self, graph: gs.Graph) -> PassResult:
        outputs = G.graph_output_names(graph)
        done = sum(_unquantize(graph, n, outputs) for n in _binary(graph, ("Add",)))
        if done:
            graph.cleanup().toposort()
        notes = ((f"{done} MatMul product(s) no longer requantized before their bias Add",)
                 if done else ())
        return PassResult(graph=graph, modified=bool(done), notes=notes)
