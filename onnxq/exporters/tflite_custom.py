"""MediaPipe's TFLite custom op ``Convolution2DTransposeBias`` as ONNX operators.

MediaPipe's segmentation models (selfie segmentation, hair segmentation) end in this custom
op: a transposed convolution with its bias. tf2onnx cannot read its options (a raw
``TfLiteTransposeConvParams``: padding, stride width, stride height, three int32) and leaves a
``TFL_Convolution2DTransposeBias`` node that onnxruntime cannot run. The options are read here
from the flatbuffer itself, and the node becomes ``Transpose → ConvTranspose → Transpose``
(TFLite's weights are ``[out, kH, kW, in]``, ONNX's ``[in, out, kH, kW]``). A node is lowered
only when the output shape these options give is the one the file declares and the padding
is symmetric (no half-pixel ambiguity); any other stays, and the export is refused naming it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["lower_transpose_conv_bias", "lower_with", "CUSTOM_OP"]

CUSTOM_OP = "TFL_Convolution2DTransposeBias"
_SAME, _VALID = 1, 2  # TfLitePadding


def _options(path: Path) -> dict[str, tuple[int, int, int, tuple, tuple]]:
    """Output tensor name → (padding, stride_w, stride_h, input shape, output shape) of every
    ``Convolution2DTransposeBias`` in the file's first subgraph."""
    from tf2onnx.tflite import Model as tflite_model

    model = tflite_model.Model.GetRootAsModel(path.read_bytes(), 0)
    codes = [model.OperatorCodes(i).CustomCode() for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    found = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if codes[op.OpcodeIndex()] != b"Convolution2DTransposeBias" or op.OutputsLength() != 1:
            continue
        raw = op.CustomOptionsAsNumpy()
        if not isinstance(raw, np.ndarray) or raw.size != 12:
            continue
        padding, stride_w, stride_h = struct.unpack("<3i", raw.tobytes())
        out = graph.Tensors(op.Outputs(0))
        x = graph.Tensors(op.Inputs(0))
        found[out.Name().decode()] = (padding, stride_w, stride_h,
                                      tuple(int(d) for d in x.ShapeAsNumpy()),
                                      tuple(int(d) for d in out.ShapeAsNumpy()))
    return found


def _pads(size: int, out: int, kernel: int, stride: int, padding: int) -> tuple[int, int] | None:
    full = (size - 1) * stride + kernel
    total = full - out
    if padding == _VALID:
        return (0, 0) if total == 0 else None
    if padding != _SAME or out != size * stride or total < 0 or total % 2:
        return None
    return total // 2, total // 2


def lower_transpose_conv_bias(model: onnx.ModelProto, path: str | Path) -> int:
    """Rewrite the ``TFL_Convolution2DTransposeBias`` nodes of ``model`` (converted from the
    ``.tflite`` file at ``path``) that can be lowered exactly; returns how many were."""
    if not any(n.op_type == CUSTOM_OP for n in model.graph.node):
        return 0
    return lower_with(model, _options(Path(path)))


def lower_with(model: onnx.ModelProto, options: dict[str, tuple]) -> int:
    """``lower_transpose_conv_bias`` with the options already read (output name → padding,
    stride_w, stride_h, input shape, output shape)."""
    nodes = [n for n in model.graph.node if n.op_type == CUSTOM_OP]
    inits = {i.name: i for i in model.graph.initializer}
    done = 0
    for node in nodes:
        found = options.get(node.output[0])
        if found is None or len(node.input) != 3 or not all(i in inits for i in node.input[1:]):
            continue
        padding, stride_w, stride_h, in_shape, out_shape = found
        w = numpy_helper.to_array(inits[node.input[1]])  # [out, kH, kW, in]
        b = numpy_helper.to_array(inits[node.input[2]])
        if w.ndim != 4 or len(in_shape) != 4 or len(out_shape) != 4 or b.shape != (w.shape[0],):
            continue
        ph = _pads(in_shape[1], out_shape[1], w.shape[1], stride_h, padding)
        pw = _pads(in_shape[2], out_shape[2], w.shape[2], stride_w, padding)
        if ph is None or pw is None or in_shape[3] != w.shape[3] or out_shape[3] != w.shape[0]:
            continue
        _replace(model, node, w, b, (stride_h, stride_w), (ph[0], pw[0], ph[1], pw[1]))
        done += 1
    return done


def _replace(model: onnx.ModelProto, node: onnx.NodeProto, w: np.ndarray, b: np.ndarray,
             strides: tuple[int, int], pads: tuple[int, ...]) -> None:
    base = node.output[0]
    weight, bias = f"{base}__onnxq_weight", f"{base}__onnxq_bias"
    model.graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(w.transpose(3, 0, 1, 2)), weight),
        numpy_helper.from_array(b.astype(w.dtype), bias)])
    new = [helper.make_node("Transpose", [node.input[0]], [f"{base}__onnxq_nchw"],
                            name=f"{base}__onnxq_to_nchw", perm=[0, 3, 1, 2]),
           helper.make_node("ConvTranspose", [f"{base}__onnxq_nchw", weight, bias],
                            [f"{base}__onnxq_y"], name=f"{base}__onnxq_convtranspose",
                            kernel_shape=list(w.shape[1:3]), strides=list(strides),
                            pads=list(pads)),
           helper.make_node("Transpose", [f"{base}__onnxq_y"], [base],
                            name=f"{base}__onnxq_to_nhwc", perm=[0, 2, 3, 1])]
    at = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    for k, n in enumerate(new):
        model.graph.node.insert(at + k, n)


#: TFLite ops of a model that keeps state inside itself between runs (a streaming model)
STATEFUL_OPS = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"})


def builtin_ops(path: str | Path) -> set[str]:
    """The builtin op names a TFLite flatbuffer uses; empty when it cannot be read as one."""
    try:
        from tf2onnx.tflite import Model as tflite_model
        from tf2onnx.tflite.BuiltinOperator import BuiltinOperator

        names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
        model = tflite_model.Model.GetRootAsModel(Path(path).read_bytes(), 0)
        codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
        return {names.get(op, str(op)) for c in codes
                for op in [max(c.BuiltinCode(), c.DeprecatedBuiltinCode())]}
    except Exception:  # noqa: BLE001 - not a flatbuffer: the caller's message stands
        return set()
