"""MediaPipe's ``Convolution2DTransposeBias`` custom op (segmentation models) becomes
``Transpose → ConvTranspose → Transpose``, checked against TFLite's transposed convolution
written out in numpy (scatter each input pixel through the kernel, then crop the padding)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.exporters.tflite_custom import CUSTOM_OP, lower_with
from onnxq.runtime import make_session


def _reference(x, w, b, stride, pads):
    """TFLite TRANSPOSE_CONV semantics, NHWC; w is [out, kH, kW, in]."""
    n, h, wd, _ = x.shape
    o, kh, kw, _ = w.shape
    full = np.zeros((n, (h - 1) * stride[0] + kh, (wd - 1) * stride[1] + kw, o))
    for i in range(h):
        for j in range(wd):
            full[:, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw, :] += \
                np.einsum("nc,oabc->nabo", x[:, i, j, :], w)
    top, left, bottom, right = pads
    return full[:, top:full.shape[1] - bottom, left:full.shape[2] - right, :] + b


def _custom_model(x_shape, w, b, out_shape):
    graph = helper.make_graph(
        [helper.make_node(CUSTOM_OP, ["x", "w", "b"], ["segment"], name="up"),
         helper.make_node("Sigmoid", ["segment"], ["mask"], name="act")],
        "mediapipe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kernel,stride,padding,out_hw,pads", [
    (2, 2, 1, (16, 16), (0, 0, 0, 0)),   # selfie segmentation's: 2x2, stride 2, SAME
    (4, 2, 1, (16, 16), (1, 1, 1, 1)),   # SAME with a symmetric crop
    (3, 2, 2, (17, 17), (0, 0, 0, 0)),   # VALID
])
def test_the_custom_op_matches_tflites_transposed_convolution(kernel, stride, padding, out_hw,
                                                               pads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 8, 6)).astype(np.float32)
    w = rng.standard_normal((3, kernel, kernel, 6)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    model = _custom_model(x.shape, w, b, (1, *out_hw, 3))
    options = {"segment": (padding, stride, stride, x.shape, (1, *out_hw, 3))}
    assert lower_with(model, options) == 1
    assert CUSTOM_OP not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model, full_check=True)
    got = make_session(model).run(None, {"x": x})[0]
    want = 1 / (1 + np.exp(-_reference(x, w, b, (stride, stride), pads)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_options_that_do_not_give_the_declared_shape_leave_the_node():
    """An odd SAME crop (which side gets the extra pixel is ambiguous) or a shape that the
    options do not produce: the node stays, and the export is refused naming it."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 8, 8, 4)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    b = np.zeros(2, np.float32)
    for options in ({"segment": (1, 2, 2, x.shape, (1, 16, 16, 2))},   # crop of 1: odd
                    {"segment": (2, 2, 2, x.shape, (1, 16, 16, 2))},   # VALID gives 17
                    {}):                                                 # options not found
        model = _custom_model(x.shape, w, b, (1, 16, 16, 2))
        assert lower_with(model, options) == 0
        assert CUSTOM_OP in {n.op_type for n in model.graph.node}
