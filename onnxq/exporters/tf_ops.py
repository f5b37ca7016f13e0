"""tf2onnx handlers for TensorFlow and TFLite ops that tf2onnx 1.17 leaves unconverted, each
written as the same function in standard ONNX ops (used by ``onnxq.exporters.tensorflow``).

* ``Erfc``: Keras 3's exact GELU is ``0.5·x·erfc(-x/√2)``; written ``1 - Erf(x)``.
* ``TFL_GELU``: the TFLite converter fuses GELU into one op (attribute ``approximate``);
  written ``0.5·x·(1 + Erf(x/√2))``, or with ``Tanh`` for the approximate form.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["HANDLERS"]


def _const(ctx: Any, node: Any, value: float, tag: str, dtype: Any) -> str:
    from tf2onnx import utils

    return ctx.make_const(utils.make_name(f"{node.name}_{tag}"),
                          np.array(value, dtype=dtype)).output[0]


def _replace(ctx: Any, node: Any) -> tuple[str, list[str], dict, Any]:
    """Remove ``node``; return its input, outputs, the output's shape/dtype and numpy dtype."""
    from tf2onnx import utils

    x, outputs = node.input[0], list(node.output)
    meta = {"shapes": [ctx.get_shape(outputs[0])], "dtypes": [ctx.get_dtype(outputs[0])]}
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
    ctx.remove_node(node.name)
    return x, outputs, meta, dtype


def erfc(ctx: Any, node: Any, name: str, args: Any) -> None:
    x, outputs, meta, dtype = _replace(ctx, node)
    erf = ctx.make_node("Erf", [x], op_name_scope=node.name).output[0]
    ctx.make_node("Sub", [_const(ctx, node, 1.0, "one", dtype), erf], outputs=outputs,
                  name=node.name, **meta)


def tfl_gelu(ctx: Any, node: Any, name: str, args: Any) -> None:
    approximate = bool(node.get_attr_value("approximate", False))
    x, outputs, meta, dtype = _replace(ctx, node)

    def op(kind: str, *inputs: str) -> str:
        return ctx.make_node(kind, list(inputs), op_name_scope=node.name).output[0]

    if approximate:  # tanh(√(2/π)·(x + 0.044715·x³))
        cube = op("Mul", x, op("Mul", x, x))
        inner = op("Add", x, op("Mul", _const(ctx, node, 0.044715, "a", dtype), cube))
        t = op("Tanh", op("Mul", _const(ctx, node, float(np.sqrt(2 / np.pi)), "k", dtype),
                          inner))
    else:  # erf(x/√2)
        t = op("Erf", op("Mul", x, _const(ctx, node, float(1 / np.sqrt(2)), "s", dtype)))
    half_x = op("Mul", x, _const(ctx, node, 0.5, "half", dtype))
    ctx.make_node("Mul", [half_x, op("Add", t, _const(ctx, node, 1.0, "one", dtype))],
                  outputs=outputs, name=node.name, **meta)


#: ``custom_op_handlers`` for tf2onnx's converters
HANDLERS: dict[str, tuple[Any, list]] = {"Erfc": (erfc, []), "TFL_GELU": (tfl_gelu, [])}
