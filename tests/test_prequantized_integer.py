"""Models another tool already quantized with integer ops (onnxruntime's dynamic
quantization: DynamicQuantizeLinear + ConvInteger/MatMulInteger) come back as they are,
with a note; and a graph output that ``value_info`` lists again without a shape keeps its
declared shape."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.runtime import make_session


def _conv_integer_model() -> onnx.ModelProto:
    """x → DynamicQuantizeLinear → ConvInteger(int8 weights) → Cast → × (x_scale · w_scale),
    the form onnxruntime's quantize_dynamic writes for a Conv, then a Reshape to a shape
    given at run time. The output is also listed in value_info without a shape, as ddddocr's
    older model does; shape inference cannot recover it, so only the declaration has it."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.uint8)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dq"),
        helper.make_node("ConvInteger", ["xq", "w", "xz"], ["acc"], name="conv",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["acc"], ["accf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xs", "ws"], ["s"], name="scale"),
        helper.make_node("Mul", ["accf", "s"], ["r"], name="rescale"),
        helper.make_node("Reshape", ["r", "shape"], ["y"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes, "dynamic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                           helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0.01), "ws")],
        value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_model_with_integer_ops_comes_back_as_it_is():
    model = _conv_integer_model()
    before = model.SerializeToString()
    feeds = [{"x": np.random.default_rng(k).standard_normal((1, 3, 8, 8)).astype(np.float32),
              "shape": np.array([1, -1], np.int64)} for k in range(3)]
    result = onnxq.quantize(model, feeds, progress=False)
    assert model.SerializeToString() == before
    assert any("already quantized" in n for n in result.report.notes)
    assert ("conv", "ConvInteger") in result.report.quantized
    onnx.checker.check_model(result.model, full_check=True)
    a, b = make_session(model), make_session(result.model)
    for f in feeds:
        np.testing.assert_array_equal(a.run(None, f)[0], b.run(None, f)[0])
    dims = result.model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == [1, "n"]


def test_an_output_listed_again_in_value_info_keeps_its_declared_shape():
    """The same declaration quirk on a float model that onnxq quantizes."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["y"], name="flatten")]
    graph = helper.make_graph(
        nodes, "float", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16]),
                         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n"])],
        [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros(16, np.float32), "b")],
        value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32),
              "shape": np.array([1, -1], np.int64)} for _ in range(3)]
    result = onnxq.quantize(model, feeds, progress=False)
    assert result.report.quantized
    dims = result.model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == [1, "n"]
