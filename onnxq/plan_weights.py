"""Planning for ops whose weights are int8 without an int8 activation path: recurrent ops with
a dynamic-quantization kernel (``Role.DYNAMIC``) and weight-only storage (``Role.WEIGHT_ONLY``,
e.g. embedding tables). Used by ``plan.annotate``; decides, never rewrites."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.quant_ops import OpHandler, Role

__all__ = ["weights_plan", "MIN_TABLE_ELEMENTS"]

#: Gather tables smaller than this stay float (shape tables, tiny lookups: nothing to save)
MIN_TABLE_ELEMENTS = 1024


def _float_const(t: gs.Tensor | None) -> bool:
    value_shape = G.constant_shape(t) if t is not None else None
    return (value_shape is not None and t is not None and t.dtype is not None
            and np.dtype(t.dtype) == np.float32)


def _recurrent(node: gs.Node, opt_in: tuple[str, ...]) -> str | None:
    if node.op != "LSTM" and node.op not in opt_in:
        return (f"onnxruntime has no int8 {node.op} kernel and int8 weights behind "
                "DequantizeLinear make it slower (dequantized on every run); kept in float "
                f"(add {node.op!r} to weight.weight_only_ops for a smaller model)")
    if len(node.inputs) < 3 or not (_float_const(node.inputs[1]) and _float_const(node.inputs[2])):
        return "weights W and R are not float32 constants; kept in float"
    if int(node.attrs.get("layout", 0)) != 0:
        return "layout=1 (batch first) has no dynamic int8 kernel; kept in float"
    x = node.inputs[0]
    if x.dtype is None or np.dtype(x.dtype) != np.float32:
        return "input is not float32; kept in float"
    return None


def _table(node: gs.Node, opt_in: tuple[str, ...]) -> str | None | bool:
    """None: plan it; False: not an embedding lookup (not reported); str: why not."""
    table = node.inputs[0] if node.inputs else None
    if "Gather" not in opt_in or not _float_const(table) or len(node.inputs) < 2:
        return False
    shape = G.constant_shape(table)
    assert shape is not None  # _float_const checked it
    if len(shape) < 2 or int(np.prod(shape)) < MIN_TABLE_ELEMENTS:
        return False
    return None


def weights_plan(node: gs.Node, h: OpHandler, opt_in: tuple[str, ...]):
    """A ``NodePlan`` keyword dict for ``node`` (a DYNAMIC or WEIGHT_ONLY op), a reason
    string to report it as kept float, or None when it is not a candidate at all."""
    if node.op == "Gather":
        why = _table(node, opt_in)
        if why is False:
            return None
    else:
        why = _recurrent(node, opt_in)
    if isinstance(why, str):
        return why
    role = Role.DYNAMIC if node.op == "LSTM" else Role.WEIGHT_ONLY
    found = {"name": node.name, "op": node.op, "role": role}
    if role is Role.DYNAMIC:
        found["dynamic_input"] = node.inputs[0].name
    return found
