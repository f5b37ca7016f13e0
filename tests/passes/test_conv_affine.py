"""A constant per-channel Add/Sub/Mul/Div after a Conv/ConvTranspose folds into its weight and
bias (``FusionPass`` rule ``conv_affine``), which lets a BatchNormalization after it fold too;
and the OpenVINO EP's
int8 ConvTranspose (an upsampling head: ConvTranspose → Add → BN → Relu → ConvTranspose →
Add → Sigmoid, as PP-OCR's DB detector exports it)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import ep_check
from onnxq import graph as G
from onnxq.passes import FusionPass
from tests.conftest import run_model


def _head(bias_shape=(3, 1, 1), second_reader: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3, "wc"),
        numpy_helper.from_array(rng.standard_normal((4, 3, 2, 2)).astype(np.float32) * 0.4, "w1"),
        numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "c1"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 3).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32) * 0.1, "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 3).astype(np.float32), "var"),
        numpy_helper.from_array(rng.standard_normal((3, 1, 2, 2)).astype(np.float32) * 0.5, "w2"),
        numpy_helper.from_array(np.array([-0.3], np.float32), "c2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["h"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["hr"], name="relu0"),
        helper.make_node("ConvTranspose", ["hr", "w1"], ["u1"], name="ct1", strides=[2, 2]),
        helper.make_node("Add", ["u1", "c1"], ["a1"], name="add1"),
        helper.make_node("BatchNormalization", ["a1", "gamma", "beta", "mean", "var"], ["b1"],
                         name="bn"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("ConvTranspose", ["r1", "w2"], ["u2"], name="ct2", strides=[2, 2]),
        helper.make_node("Add", ["u2", "c2"], ["a2"], name="add2"),
        helper.make_node("Sigmoid", ["a2"], ["y"], name="sigmoid"),
    ]
    batch = bias_shape[0] if len(bias_shape) == 4 else 1
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1, 32, 32])]
    if second_reader:
        outputs.append(helper.make_tensor_value_info("u1", TensorProto.FLOAT, [1, 3, 16, 16]))
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(n: int = 6, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(n)]


def test_per_channel_adds_fold_into_the_conv_bias_and_let_the_batchnorm_fold():
    model = _head()
    result = FusionPass().run(G.import_graph(model))
    out = G.export_graph(result.graph)
    ops = Counter(n.op_type for n in out.graph.node)
    assert ops["Add"] == 0 and ops["BatchNormalization"] == 0, ops
    assert "conv_affine: 2 fused" in result.notes
    feed = _feeds(1)[0]
    np.testing.assert_allclose(run_model(out, feed)[0], run_model(model, feed)[0], atol=1e-5)


@pytest.mark.parametrize("case", ["spatial", "batch", "second_reader"])
def test_adds_that_are_not_one_value_per_channel_stay(case):
    model = {"spatial": lambda: _head(bias_shape=(3, 16, 16)),
             "batch": lambda: _head(bias_shape=(2, 3, 1, 1)),  # widens the output
             "second_reader": lambda: _head(second_reader=True)}[case]()
    out = G.export_graph(FusionPass().run(G.import_graph(model)).graph)
    adds = [n for n in out.graph.node if n.op_type == "Add"]
    assert any(a.input[0] == "u1" or "u1" in a.input for a in adds), case


def _affine_chain(steps, shared: bool = False, last: str = "Relu") -> onnx.ModelProto:
    """x → Conv(w) → steps… → ``last`` → y (and a second Conv reading the same ``w`` when
    ``shared``)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")]
    nodes, prev = [helper.make_node("Conv", ["x", "w"], ["c0"], name="conv")], "c0"
    for k, (op, value, const_first) in enumerate(steps):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), f"k{k}"))
        ins = [f"k{k}", prev] if const_first else [prev, f"k{k}"]
        nodes.append(helper.make_node(op, ins, [f"s{k}"], name=f"step{k}"))
        prev = f"s{k}"
    nodes.append(helper.make_node(last, [prev], ["y"], name="last"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])]
    if shared:
        nodes.append(helper.make_node("Conv", ["x", "w"], ["z"], name="twin"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 6, 6]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    return model


_CHANNEL = np.array([0.5, -2.0, 1.5, 3.0], np.float32).reshape(4, 1, 1)


@pytest.mark.parametrize(("steps", "left"), [
    ([("Mul", _CHANNEL, False), ("Sub", _CHANNEL, False), ("Div", [4.0], False)], []),
    ([("Mul", _CHANNEL, True), ("Add", _CHANNEL.reshape(1, 4, 1, 1), True)], []),
    ([("Sub", _CHANNEL, True)], ["Sub"]),  # c - y
    ([("Div", _CHANNEL * 0, False)], ["Div"]),  # y / 0
    ([("Add", [3.0], False)], ["Add"]),  # a scalar shift read by a clamp: x + 3 of Relu6
    ([("Mul", [2.0], False), ("Add", np.ones((4, 6, 6)), False)], ["Add"]),  # spatial shift
])
def test_affine_steps_fold_into_the_conv_where_exact(steps, left):
    model = _affine_chain(steps)
    out = G.export_graph(FusionPass().run(G.import_graph(model)).graph)
    assert [n.op_type for n in out.graph.node if n.op_type not in ("Conv", "Relu")] == left
    feed = {"x": np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run_model(out, feed)[0], run_model(model, feed)[0], atol=1e-5)


@pytest.mark.parametrize("last", ["Sigmoid", "HardSigmoid", "Identity"])
def test_a_scalar_shift_folds_where_no_clamp_reads_it(last):
    """A learnable affine block (PP-LCNetV3: ``Conv → Mul(a) → Add(b)``) before an activation
    that is not a clamp folds whole; ``Sub`` by a scalar too."""
    steps = [("Mul", [1.7], False), ("Add", [-0.4], True), ("Sub", [0.25], False)]
    model = _affine_chain(steps, last=last)
    out = G.export_graph(FusionPass().run(G.import_graph(model)).graph)
    assert [n.op_type for n in out.graph.node if n.op_type not in ("Conv", last)] == []
    feed = {"x": np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run_model(out, feed)[0], run_model(model, feed)[0], atol=1e-5)


def test_a_shared_weight_is_scaled_for_its_one_conv_only():
    model = _affine_chain([("Mul", _CHANNEL, False)], shared=True)
    out = G.export_graph(FusionPass().run(G.import_graph(model)).graph)
    onnx.checker.check_model(out, full_check=True)
    feed = {"x": np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    for got, want in zip(run_model(out, feed), run_model(model, feed), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_openvino_ep_gets_int8_conv_transposes_with_the_relu_kept(monkeypatch):
    monkeypatch.setattr(ep_check, "_score", lambda *a: (0.999, "the OpenVINO EP", None))
    model, feeds = _head(), _feeds()
    result = onnxq.quantize(model, feeds, progress=False, target_ep="openvino")
    nodes = result.model.graph.node
    producers = {o: n for n in nodes for o in n.output}
    cts = [n for n in nodes if n.op_type == "ConvTranspose"]
    assert len(cts) == 2 and all(producers[i].op_type == "DequantizeLinear"
                                 for n in cts for i in n.input[:2]), "int8 input and weight"
    ref = np.concatenate([run_model(model, f)[0].ravel() for f in feeds])
    got = np.concatenate([run_model(result.model, f)[0].ravel() for f in feeds])
    assert ref @ got / np.linalg.norm(ref) / np.linalg.norm(got) > 0.999  # the Relu held
    # the CPU EP has no int8 ConvTranspose: there they stay float, and say why
    cpu = onnxq.quantize(model, feeds, progress=False)
    why = dict(cpu.report.skipped)
    assert "no int8 ConvTranspose kernel" in why["ct1"] and "ct2" in why


@pytest.mark.parametrize("group", [1, 2])
def test_a_grouped_conv_transpose_is_scaled_per_output_channel(group):
    rng = np.random.default_rng(6)
    w = rng.standard_normal((4, 6 // group, 2, 2)).astype(np.float32)  # 6 output channels
    scale = np.arange(1, 7, dtype=np.float32).reshape(1, 6, 1, 1) * np.float32(0.5)
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["u"], name="ct", strides=[2, 2],
                          group=group),
         helper.make_node("Mul", ["u", "s"], ["y"], name="scale")], "ct",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 10, 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    out = G.export_graph(FusionPass().run(G.import_graph(model)).graph)
    assert [n.op_type for n in out.graph.node] == ["ConvTranspose"]
    feed = {"x": rng.standard_normal((1, 4, 5, 5)).astype(np.float32)}
    np.testing.assert_allclose(run_model(out, feed)[0], run_model(model, feed)[0], atol=1e-5)


def _lab_hard_swish(opset: int = 13) -> onnx.ModelProto:
    """Conv → Mul(a) → Add(b) → exported HardSwish ``y · Clip(y + 3, 0, 6) / 6`` → Conv, as
    PaddleOCR's PP-LCNetV3 blocks export (scalar a, b: a learnable affine block)."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array(1.3, np.float32), "a"),
             numpy_helper.from_array(np.array(0.6, np.float32), "b"),
             numpy_helper.from_array(np.array(3.0, np.float32), "three"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(6.0, np.float32), "six"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w", "bias"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "c"], ["ca"]),
             helper.make_node("Add", ["ca", "b"], ["y"]),
             helper.make_node("Add", ["y", "three"], ["y3"]),
             helper.make_node("Clip", ["y3", "zero", "six"], ["r6"]),
             helper.make_node("Mul", ["y", "r6"], ["m"]),
             helper.make_node("Div", ["m", "six"], ["h"]),
             helper.make_node("Conv", ["h", "w2"], ["out"])]
    graph = helper.make_graph(nodes, "lab", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(
            "out", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("hard_activations", [True, False])
def test_a_learnable_affine_block_before_a_hard_swish_folds_into_the_conv(hard_activations):
    """Both steps of the block fold, and the HardSwish stays recognisable: rewritten to its
    HardSigmoid form for the CPU EP, left in its exported form (``x + 3`` kept) for the
    OpenVINO EP, which fuses it itself."""
    model = _lab_hard_swish()
    result = FusionPass(hard_activations=hard_activations, input_affine=hard_activations).run(
        G.import_graph(model))
    out = G.export_graph(result.graph)
    ops = Counter(n.op_type for n in out.graph.node)
    assert "conv_affine: 2 fused" in result.notes, result.notes
    if hard_activations:
        assert ops == Counter({"Conv": 2, "HardSigmoid": 1, "Mul": 1}), ops
    else:
        assert ops == Counter({"Conv": 2, "Add": 1, "Clip": 1, "Mul": 1, "Div": 1}), ops
    feed = {"x": np.random.default_rng(8).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run_model(out, feed)[0], run_model(model, feed)[0], atol=1e-4)
