"""Sparse TFLite weights made dense before tf2onnx reads the file.

TFLite's converter can store weights sparse (``Optimize.EXPERIMENTAL_SPARSITY``; MediaPipe's
pose detector and sparse face detector ship that way): the buffer holds only the non-zero
values, the tensor carries ``sparsity`` metadata, and a ``DENSIFY`` op rebuilds the dense
weights at run time. tf2onnx reads every constant buffer as a dense array, so it fails ("cannot
reshape array of size 96 into shape (16,1,1,24)"), and it has no ``DENSIFY`` either.

Here the dense values come from TFLite itself: the interpreter runs the file once (without
delegates, every tensor kept; ``DENSIFY``'s output does not depend on the input), each
``DENSIFY`` output becomes a constant with those values, the op goes, and the sparse input
points at the same dense buffer. The copy is written beside nothing the user owns (a folder the
caller provides) and converted instead of the original.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from onnxq.errors import ModelError

__all__ = ["dense_copy"]

_DENSIFY = 124  # tflite BuiltinOperator.DENSIFY


def dense_copy(src: Path, folder: Path) -> Path | None:
    """A copy of ``src`` in ``folder`` with every sparse weight dense, or None when the file
    has none. Raises ``ModelError`` for sparse weights no ``DENSIFY`` op reads."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(src))
    sparse = [(k, t) for k, g in enumerate(model.subgraphs) for t in g.tensors
              if t.sparsity is not None]
    if not sparse:
        return None
    graph = model.subgraphs[0]
    code = [c.builtinCode or c.deprecatedBuiltinCode for c in model.operatorCodes]
    densify = [op for op in graph.operators if code[op.opcodeIndex] == _DENSIFY]
    fed = {id(graph.tensors[op.inputs[0]]) for op in densify}
    left = [t.name.decode(errors="replace") for _, t in sparse if id(t) not in fed]
    if left:
        raise ModelError(
            f"{len(left)} sparse weight tensor(s) of {str(src)!r} (e.g. {left[0]!r}) are read "
            "without a DENSIFY op, which tf2onnx cannot convert; convert the model again "
            "without `tf.lite.Optimize.EXPERIMENTAL_SPARSITY`")
    values = _dense_values(src, [op.outputs[0] for op in densify])
    for op in densify:
        buffer = type(model.buffers[0])()
        buffer.data = np.frombuffer(np.ascontiguousarray(values[op.outputs[0]]).tobytes(),
                                    np.uint8)
        model.buffers.append(buffer)
        index = len(model.buffers) - 1
        graph.tensors[op.outputs[0]].buffer = index
        weights = graph.tensors[op.inputs[0]]
        weights.buffer, weights.sparsity = index, None
    graph.operators = [op for op in graph.operators if code[op.opcodeIndex] != _DENSIFY]
    out = folder / f"{src.stem}.dense.tflite"
    flatbuffer_utils.write_model(model, str(out))
    return out


def _dense_values(src: Path, tensors: list[int]) -> dict[int, np.ndarray]:
    """The values TFLite's own ``DENSIFY`` gives ``tensors``, from one run on zeros."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        interpreter = tf.lite.Interpreter(
            model_path=str(src), experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType
            .BUILTIN_WITHOUT_DEFAULT_DELEGATES)  # a delegate would densify out of sight
    interpreter.allocate_tensors()
    for d in interpreter.get_input_details():
        interpreter.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    interpreter.invoke()
    return {t: np.array(interpreter.get_tensor(t)) for t in tensors}
