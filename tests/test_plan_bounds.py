"""Exact range bounds (``plan_bounds``): a tensor read only by activations that are flat
outside an interval (HardSwish below -3, HardSigmoid outside [-b/a, (1-b)/a], Relu, Clip) is
quantized over that interval only. The readers compute what they computed in float, and the
levels go where the values matter."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import api
from onnxq.plan import annotate
from onnxq.plan_bounds import bounded, flat_bounds
from onnxq.qtypes import TensorRange
from tests import builders as B
from tests.conftest import run_model

#: one channel far below -3 (as a BatchNorm-folded channel that never fires): it stretches the
#: measured range, and every reader's output there is flat
BIAS = np.array([0, 0, 0, 0, 0, 0, 0, -30], np.float32)


def _conv_then(readers: str, opset: int = 17) -> onnx.ModelProto:
    """x → Conv (a wide negative tail: ``BIAS``) → ``readers`` of its output ``h`` → a 1×1
    Conv → y. ``readers``: "hardswish", "hsig_mul" (x · HardSigmoid(x)), "gate" (HardSigmoid
    alone, alpha 0.2), "relu_and_hardswish", "hardswish_and_add" (a residual reads h too)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 4, 3, 3)) * 0.6).astype(np.float32),
                                     "w1"),
             numpy_helper.from_array(BIAS, "b1"),
             numpy_helper.from_array((rng.standard_normal((6, 8, 1, 1)) * 0.3).astype(np.float32),
                                     "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1])]
    if readers == "hardswish":
        nodes.append(helper.make_node("HardSwish", ["h"], ["g"], name="act"))
    elif readers == "hsig_mul":
        nodes += [helper.make_node("HardSigmoid", ["h"], ["s"], name="gate", alpha=1 / 6,
                                   beta=0.5),
                  helper.make_node("Mul", ["h", "s"], ["g"], name="act")]
    elif readers == "gate":
        nodes.append(helper.make_node("HardSigmoid", ["h"], ["g"], name="act"))
    elif readers == "relu_and_hardswish":
        nodes += [helper.make_node("HardSwish", ["h"], ["g1"], name="act"),
                  helper.make_node("Relu", ["h"], ["g2"], name="relu"),
                  helper.make_node("Add", ["g1", "g2"], ["g"], name="sum")]
    elif readers == "hardswish_and_add":
        nodes += [helper.make_node("HardSwish", ["h"], ["g1"], name="act"),
                  helper.make_node("Add", ["g1", "h"], ["g"], name="sum")]
    nodes.append(helper.make_node("Conv", ["g", "w2"], ["y"], name="conv2"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["n", 4, 12, 12])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["n", 6, 12, 12])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _bounds(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    cfg = api.resolve(api._resolve_config(None, {"target": "portable", "objective": "size"}))
    _, plan = api.prepare(model, cfg)
    assert plan is not None
    graph = gs.import_onnx(model)
    assert flat_bounds(graph, annotate(graph)) == {}  # untyped tensors: nothing planned
    return plan.bounds


@pytest.mark.parametrize(("readers", "expected"), [
    ("hardswish", (-3.0, np.inf)),
    ("hsig_mul", (-3.0, np.inf)),
    ("gate", (-2.5, 2.5)),
    ("relu_and_hardswish", (-3.0, np.inf)),
    ("hardswish_and_add", None),
])
def test_the_interval_is_where_every_reader_is_flat(readers, expected):
    got = _bounds(_conv_then(readers)).get("h")
    if expected is None:
        assert got is None
    else:
        assert got is not None
        np.testing.assert_allclose(got, expected)


def test_bounded_clamps_and_collapses_onto_the_nearer_edge():
    ranges = {"a": TensorRange(-12.0, 5.0), "b": TensorRange(-9.0, -4.0),
              "c": TensorRange(-1.0, 2.0), "d": TensorRange(-7.0, 9.0)}
    out = bounded(ranges, {"a": (-3.0, np.inf), "b": (-3.0, np.inf), "c": (-3.0, np.inf),
                           "d": (-2.5, 2.5)})
    assert (out["a"].lo, out["a"].hi) == (-3.0, 5.0)
    assert (out["b"].lo, out["b"].hi) == (-3.0, -3.0)  # every value gives HardSwish(-3) = 0
    assert out["c"] == ranges["c"]
    assert (out["d"].lo, out["d"].hi) == (-2.5, 2.5)


def _q_range(model: onnx.ModelProto, tensor: str) -> tuple[float, float]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] == tensor:
            s, z = float(inits[n.input[1]]), int(inits[n.input[2]])
            info = np.iinfo(inits[n.input[2]].dtype)
            return (info.min - z) * s, (info.max - z) * s
    raise AssertionError(f"{tensor} is not quantized")


@pytest.mark.parametrize("readers", ["hardswish", "hsig_mul", "gate"])
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_a_bounded_tensor_is_quantized_finer_and_the_output_is_closer(readers, fmt):
    model = _conv_then(readers, opset=17 if readers == "hardswish" else 13)
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((2, 4, 12, 12)).astype(np.float32) * 2} for _ in range(4)]
    feed = {"x": rng.standard_normal((4, 4, 12, 12)).astype(np.float32) * 2}
    measured = onnxq.calibrate(model, calib, progress=False, calibrator="minmax",
                               objective="size")
    assert measured["h"].lo < -6.0  # the tail the bound cuts
    ref = run_model(model, feed)[0]
    errors = {}
    for name, ranges in (("bounded", measured),
                         ("wide", {**measured, "h": TensorRange(measured["h"].lo - 1e-3,
                                                                measured["h"].hi)})):
        result = onnxq.quantize(model, calib, ranges=ranges, progress=False, target="portable",
                                objective="size", format=fmt)
        errors[name] = float(np.sqrt(np.mean((run_model(result.model, feed)[0] - ref) ** 2)))
        if name == "bounded":
            lo, hi = _q_range(result.model, "h") if fmt == "qdq" else (None, None)
            if lo is not None:
                assert lo >= -3.0 - 0.05  # the zero point's rounding
                assert hi < measured["h"].hi + 0.1
    # a range given explicitly is bounded too ("wide" differs only below -3): same model
    assert errors["bounded"] == errors["wide"]


def test_bounds_lower_the_error_against_the_measured_range():
    """The same model, quantized with the bound and with the bound disabled (the plan's
    bounds emptied): the bounded one is closer to FP32 on held-out data."""
    import dataclasses

    model = _conv_then("hardswish")
    rng = np.random.default_rng(5)
    calib = [{"x": rng.standard_normal((2, 4, 12, 12)).astype(np.float32) * 2} for _ in range(4)]
    feed = {"x": rng.standard_normal((4, 4, 12, 12)).astype(np.float32) * 2}
    ref = run_model(model, feed)[0]
    ranges = onnxq.calibrate(model, calib, progress=False, calibrator="minmax", objective="size")
    cfg = api.resolve(api._resolve_config(None, {"target": "portable", "objective": "size"}))
    fused, plan = api.prepare(model, cfg)
    assert plan is not None and "h" in plan.bounds
    errs = []
    for p in (plan, dataclasses.replace(plan, bounds={})):
        out = api.build_pipeline(cfg, p, ranges).run(fused.model, copy=True).model
        errs.append(float(np.sqrt(np.mean((run_model(out, feed)[0] - ref) ** 2))))
    assert errs[0] < 0.9 * errs[1], errs


def test_the_mobilenet_builder_gets_bounds_and_stays_deterministic():
    model = B.depthwise_hardswish()
    calib = B.feeds(model, batch=2, n=4, seed=1)
    a = onnxq.quantize(model, calib, progress=False, target="portable", objective="size")
    b = onnxq.quantize(model, calib, progress=False, target="portable", objective="size")
    assert a.plan.bounds  # the convs before HardSwish / x·HardSigmoid(x)
    assert a.model.SerializeToString(deterministic=True) == \
        b.model.SerializeToString(deterministic=True)
