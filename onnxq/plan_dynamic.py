"""The plan of dynamic quantization (``mode = "dynamic"``): the static plan narrowed to what
runs int8 without calibration on onnxruntime's CPU EP."""

from __future__ import annotations

import dataclasses

from onnxq.errors import ModelError
from onnxq.plan import QuantPlan
from onnxq.quant_ops import Role

__all__ = ["dynamic_plan"]

_WHY = {
    "Conv": "dynamic mode: Conv stays float (onnxruntime's ConvInteger is slower than its "
            "float Conv; use mode static for CNNs)",
    "MatMul": "dynamic mode: MatMul of two activations (or a constant first input) stays float",
}


def dynamic_plan(plan: QuantPlan) -> QuantPlan:
    """MatMul/Gemm anchors with a constant ``B`` become DYNAMIC (quantized at run time), LSTMs
    stay DYNAMIC, weight-only ops stay; every other node is float, with the reason. Nothing
    needs calibration. A model with none of them is an error."""
    nodes, skipped = [], list(plan.skipped)
    for n in plan.nodes:
        if n.role in (Role.DYNAMIC, Role.WEIGHT_ONLY):
            nodes.append(n)
        elif n.op in ("MatMul", "Gemm") and n.role is Role.ANCHOR and n.weight is not None \
                and n.weight[0] == 1:
            nodes.append(dataclasses.replace(n, role=Role.DYNAMIC, bias=None, bias_add=None,
                                             const_inputs=()))
        elif n.role is Role.ANCHOR:
            skipped.append((n.name, _WHY.get(n.op, f"dynamic mode: {n.op} has no dynamic "
                                                    "int8 kernel; stays float")))
    if not nodes:
        raise ModelError("dynamic mode quantizes MatMul/Gemm with a constant weight, LSTM and "
                         "embedding tables; this model has none (Conv stays float in it): use "
                         "mode static with calibration data")
    return dataclasses.replace(plan, nodes=tuple(nodes), activations=(), folds=(),
                               skipped=tuple(skipped), upper_bounds={})
