"""Where onnxruntime's float fusions would pre-empt its QDQ ones: the int8 products whose
output the plan must quantize, or onnxruntime keeps them float and dequantizes their weight
on every run. Graph analysis only; the plan (``plan.py``) marks what these return."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxq import graph as G

__all__ = ["TRAP_ACTIVATIONS", "gemm_trap", "activation_trap"]

#: activations onnxruntime's QDQ selectors take into a MatMul / Gemm group (to drop them into
#: the output's QuantizeLinear): with no QuantizeLinear after them the group is rejected
TRAP_ACTIVATIONS = frozenset({"Relu", "Clip"})


def gemm_trap(node: gs.Node, bias_add: tuple[str, int] | None, weight: object,
              outputs: set[str]) -> bool:
    """A 2-D MatMul read only by an Add of another activation: onnxruntime fuses the two
    into a float Gemm before its QDQ fusions, which then dequantizes the weight on every
    run (measured 11x slower than FP32 on an RNN cell). An int8 output keeps the MatMul
    apart (QLinearMatMul)."""
    if node.op != "MatMul" or bias_add is not None or weight is None:
        return False
    shape = node.inputs[0].shape
    out = node.outputs[0]
    if shape is None or len(shape) != 2 or len(out.outputs) != 1 or out.name in outputs:
        return False
    add = out.outputs[0]
    return add.op == "Add" and all(G.constant_shape(t) is None for t in add.inputs)


def activation_trap(node: gs.Node, bias_add: tuple[str, int] | None,
                    outputs: set[str]) -> list[gs.Tensor]:
    """The float output of an int8 Gemm (or of a 2-D MatMul's bias Add, which onnxruntime
    turns into a Gemm) read only by a Relu or Clip (``TRAP_ACTIVATIONS``):
    onnxruntime's QDQ selector takes the activation into the group and, with no QuantizeLinear
    after it, rejects the group, so the product runs in float and dequantizes its weight on
    every run (openWakeWord's Dense → Relu head: 0.04x the float node; measured with
    onnxruntime 1.32: Tanh, Sigmoid, LeakyRelu, HardSigmoid, Elu, Selu, Softplus and Softsign
    after it leave QGemm alone). Quantizing that output makes the product integer; the Relu
    then folds into the quantization. A plain MatMul before a Relu has the same trap, but
    quantizing its output would round the tensor ``tune`` floats the next layer to protect (an
    outlier channel; ``test_tune.py``): that MatMul is written as ``MatMulIntegerToFloat``
    instead, in the runtime form (``passes.matmul_epilogue``), which keeps it integer with a
    float output."""
    out = node.outputs[0] if node.op == "Gemm" else None
    if bias_add is not None:
        add = next((c for c in node.outputs[0].outputs if c.name == bias_add[0]), None)
        out = add.outputs[0] if add is not None else None
    if out is None or out.name in outputs or len(out.outputs) != 1:
        return []
    return [out] if out.outputs[0].op in TRAP_ACTIVATIONS else []
