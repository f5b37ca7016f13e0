"""tf2onnx handlers for TensorFlow and TFLite ops that tf2onnx 1.17 leaves unconverted, each
written as the same function in standard ONNX ops (used by ``onnxq.exporters.tensorflow``).

* ``Erfc``: Keras 3's exact GELU is ``0.5·x·erfc(-x/√2)``; written ``1 - Erf(x)``.
* ``TFL_GELU``: the TFLite converter fuses GELU into one op (attribute ``approximate``);
  written ``0.5·x·(1 + Erf(x/√2))``, or with ``Tanh`` for the approximate form.
* ``RFFT2D`` (TFLite's ``RFFT2D`` maps to it) read through ``Squeeze``/``Reshape`` by a ``Cast``
  to a real type: TensorFlow's cast of a complex tensor keeps its real part (BirdNET's mel
  front end, ``tf.cast(tf.signal.rfft(frames), tf.float32)``). tf2onnx's own ``RFFT2D`` accepts
  only ``ComplexAbs`` after it. For a 1-D transform (length ``[1, N]`` over an axis of size 1)
  the real part is written as a ``MatMul`` with the cosine basis ``cos(2πnk/N)``; any other
  use goes to tf2onnx's handler as before.
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


#: ops a complex spectrum may pass before its ``Cast`` to a real type
_COMPLEX_MOVES = frozenset({"Squeeze", "Reshape", "ExpandDims", "Identity"})


def _real_part_path(ctx: Any, node: Any) -> list[str] | None:
    """The tensors from ``node``'s output to a ``Cast`` to float (that Cast's input included)
    through single-reader data movement; None when the spectrum is used any other way."""
    from onnx import TensorProto

    path, tensor = [], node.output[0]
    for _ in range(8):
        path.append(tensor)
        readers = ctx.find_output_consumers(tensor)
        if len(readers) != 1:
            return None
        reader = readers[0]
        if reader.type == "Cast":
            return path if ctx.get_dtype(reader.output[0]) == TensorProto.FLOAT else None
        if reader.type not in _COMPLEX_MOVES:
            return None
        tensor = reader.output[0]
    return None


def rfft2d(ctx: Any, node: Any, name: str, args: Any) -> None:
    from onnx import TensorProto
    from tf2onnx import utils

    length = node.inputs[1].get_tensor_value(as_list=True) if node.inputs[1].is_const() \
        else None
    shape = ctx.get_shape(node.input[0])
    path = _real_part_path(ctx, node)
    if (path is None or length is None or len(length) != 2 or length[0] != 1 or not shape
            or len(shape) < 2 or shape[-2] != 1 or shape[-1] != length[1]):
        from tf2onnx.onnx_opset.signal import RFFT2DOp

        version = 13 if ctx.opset >= 13 else 10 if ctx.opset >= 10 else 1
        return getattr(RFFT2DOp, f"version_{version}")(ctx, node)
    n = int(length[1])
    basis = np.cos(2 * np.pi * np.outer(np.arange(n), np.arange(n // 2 + 1)) / n)
    x, outputs, meta, _ = _replace(ctx, node)
    weights = ctx.make_const(utils.make_name(f"{node.name}_cosine"),
                             basis.astype(np.float32)).output[0]
    ctx.make_node("MatMul", [x, weights], outputs=outputs, name=node.name,
                  shapes=meta["shapes"], dtypes=[TensorProto.FLOAT])
    for tensor in path:
        ctx.set_dtype(tensor, TensorProto.FLOAT)
    return None


#: ``custom_op_handlers`` for tf2onnx's converters
HANDLERS: dict[str, tuple[Any, list]] = {"Erfc": (erfc, []), "TFL_GELU": (tfl_gelu, []),
                                         "RFFT2D": (rfft2d, [])}
