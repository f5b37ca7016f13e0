"""A per-column constant Mul/Div after a MatMul/Gemm with a constant weight (a transformer's
layer scale) folds into the weight and the bias between them (``FusionPass`` rule
``linear_scale``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq import graph as G
from onnxq.passes import FusionPass
from tests.conftest import run_model

_GAMMA = np.array([0.5, -2.0, 1e-3, 3.0, 0.25, 1.5], np.float32)


def _model(op: str, steps, x_shape=(2, 5, 4), gemm_attrs=None, c_input=False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    trans_b = (gemm_attrs or {}).get("transB", 0)
    w = rng.standard_normal((6, 4) if trans_b else (4, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
    ins = ["x", "w"]
    if op == "Gemm":
        if c_input:
            inputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [6]))
        else:
            inits.append(numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "c"))
        ins.append("c")
    nodes, prev = [helper.make_node(op, ins, ["p"], name="mm", **(gemm_attrs or {}))], "p"
    for k, (step, value, first) in enumerate(steps):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), f"k{k}"))
        nodes.append(helper.make_node(step, [f"k{k}", prev] if first else [prev, f"k{k}"],
                                      [f"s{k}"], name=f"step{k}"))
        prev = f"s{k}"
    nodes.append(helper.make_node("Relu", [prev], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, [*x_shape[:-1], 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize(("op", "steps", "kwargs", "left"), [
    ("MatMul", [("Add", np.arange(6), False), ("Mul", _GAMMA, False)], {}, ["Add"]),
    ("MatMul", [("Mul", _GAMMA.reshape(1, 1, 6), True)], {}, []),
    ("MatMul", [("Add", [0.3], True), ("Div", _GAMMA, False)], {}, ["Add"]),
    ("MatMul", [("Mul", [0.125], False)], {}, []),  # a scaled attention query
    ("Gemm", [("Mul", _GAMMA, False)], {"x_shape": (3, 4)}, []),
    ("Gemm", [("Mul", _GAMMA, False)], {"x_shape": (3, 4), "gemm_attrs": {"transB": 1}}, []),
    # stay: a per-row scale, a reversed Div, a Gemm bias computed at run time
    ("MatMul", [("Mul", np.ones((5, 1)), False)], {}, ["Mul"]),
    ("MatMul", [("Div", _GAMMA, True)], {}, ["Div"]),
    ("Gemm", [("Mul", _GAMMA, False)], {"x_shape": (3, 4), "c_input": True}, ["Mul"]),
])
def test_per_column_scales_fold_where_exact(op, steps, kwargs, left):
    model = _model(op, steps, **kwargs)
    before = model.SerializeToString()
    out = G.export_graph(FusionPass(matmul_add_to_gemm=False).run(G.import_graph(model)).graph)
    assert model.SerializeToString() == before  # the input is never modified
    assert [n.op_type for n in out.graph.node if n.op_type not in (op, "Relu")] == left
    rng = np.random.default_rng(1)
    feed = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim])
            .astype(np.float32) for i in model.graph.input}
    np.testing.assert_allclose(run_model(out, feed)[0], run_model(model, feed)[0], rtol=1e-5,
                               atol=1e-5)
