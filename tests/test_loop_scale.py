"""A Loop whose carried values shrink from iteration to iteration cannot share one int8 scale
per tensor (found by the fuzz suite: cosine 0.76 against FP32); its body stays float, with the
reason in the notes, while a loop of stable scale is still quantized inside."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import loop_check
from tests.conftest import cosine, run_model


def _loop_model(gain: float, trips: int = 2, seed: int = 3) -> onnx.ModelProto:
    """x → Mul → Loop(trips){Conv → Conv → depthwise Conv} → GlobalAveragePool → Gemm; the
    body scales its input by about ``gain`` per iteration."""
    rng = np.random.default_rng(seed)

    def w(name, shape, std):
        return numpy_helper.from_array((rng.standard_normal(shape) * std).astype(np.float32),
                                       name)

    body = helper.make_graph(
        [helper.make_node("Conv", ["h", "w2"], ["a"], name="c1", pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["a", "w3"], ["b"], name="c2"),
         helper.make_node("Conv", ["b", "w4"], ["h_next"], name="c3", group=3,
                          pads=[1, 1, 1, 1]),
         helper.make_node("Identity", ["cond"], ["cond_out"], name="keep")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_next", TensorProto.FLOAT, None)])
    # per-iteration gain ~ sqrt(27)*s2 * sqrt(4)*s3 * 3*s4
    s = gain ** (1 / 3)
    inits = [w("w1", (1, 3, 1, 1), 1.0), w("w2", (4, 3, 3, 3), s / np.sqrt(27)),
             w("w3", (3, 4, 1, 1), s / 2), w("w4", (3, 1, 3, 3), s / 3),
             numpy_helper.from_array(np.array(trips, np.int64), "trips"),
             w("w6", (3, 5), 1.0), numpy_helper.from_array(np.zeros(5, np.float32), "w7")]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w1"], ["m"], name="mul"),
         helper.make_node("Loop", ["trips", "", "m"], ["h_out"], name="loop", body=body),
         helper.make_node("GlobalAveragePool", ["h_out"], ["g"], name="gap"),
         helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
         helper.make_node("Gemm", ["f", "w6", "w7"], ["y"], name="gemm")],
        "loop_scale", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _feeds(seed: int, n: int = 4) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-1, 1, (2, 3, 6, 6)).astype(np.float32)} for _ in range(n)]


def _agreement(model, result) -> float:
    return min(cosine(run_model(model, f)[0], run_model(result.model, f)[0])
               for f in _feeds(9))


def _body_ops(model: onnx.ModelProto) -> set[str]:
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    return {n.op_type for n in loop.attribute[0].g.node}


def test_a_decaying_loop_stays_float_and_agrees(monkeypatch):
    model = _loop_model(gain=0.05)
    result = onnxq.quantize(model, _feeds(0), progress=False, objective="size")
    note = next(n for n in result.report.notes if "change scale across iterations" in n)
    assert "loop" in note
    assert "QuantizeLinear" not in _body_ops(result.model)
    assert _agreement(model, result) >= 0.99
    monkeypatch.setattr(loop_check, "MIN_SHARE", 0.0)  # the old behaviour: one scale for all
    forced = onnxq.quantize(model, _feeds(0), progress=False, objective="size")
    assert "QuantizeLinear" in _body_ops(forced.model)
    assert _agreement(model, forced) < _agreement(model, result)


@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_a_loop_of_stable_scale_is_still_quantized_inside(fmt):
    model = _loop_model(gain=1.0)
    result = onnxq.quantize(model, _feeds(0), progress=False, objective="size", format=fmt)
    assert not any("change scale" in n for n in result.report.notes)
    assert _body_ops(result.model) & {"QuantizeLinear", "QLinearConv", "DequantizeLinear"}
    assert _agreement(model, result) >= 0.99
