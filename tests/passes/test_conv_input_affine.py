"""A constant scale or shift in front of a Conv folds into it (``FusionPass`` rule
``conv_input_affine``): scalar scales always, shifts into unpadded convs only, and a shift
between a scalar scale and a padded conv lets the scale move behind it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq import graph as G
from onnxq.passes import FusionPass
from tests.conftest import cosine, run_model

_C = 6  # input channels


def _chain(steps, *, kernel: int = 3, pads: int = 1, group: int = 1, readers: int = 1,
           out_channels: int = 4) -> onnx.ModelProto:
    """x → steps… → Conv (→ Relu), and a second reader of the steps' output when
    ``readers`` is 2."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((out_channels, _C // group, kernel, kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(rng.standard_normal(out_channels).astype(np.float32), "b")]
    nodes, prev = [], "x"
    for k, (op, value, const_first) in enumerate(steps):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), f"k{k}"))
        ins = [f"k{k}", prev] if const_first else [prev, f"k{k}"]
        nodes.append(helper.make_node(op, ins, [f"s{k}"], name=f"step{k}"))
        prev = f"s{k}"
    nodes += [helper.make_node("Conv", [prev, "w", "b"], ["c"], name="conv", group=group,
                               pads=[pads] * 4),
              helper.make_node("Relu", ["c"], ["y"], name="relu")]
    size = 8 + 2 * pads - kernel + 1
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, size,
                                                                       size])]
    if readers == 2:
        nodes.append(helper.make_node("Sigmoid", [prev], ["z"], name="other"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, _C, 8, 8]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, _C, 8, 8])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    return model


_PER_CHANNEL = np.linspace(-1.5, 2.0, _C, dtype=np.float32).reshape(_C, 1, 1)


def _folded(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    out = G.export_graph(FusionPass().run(G.import_graph(model)).graph)
    onnx.checker.check_model(out, full_check=True)
    feed = {"x": np.random.default_rng(12).standard_normal((1, _C, 8, 8)).astype(np.float32)}
    for got, want in zip(run_model(out, feed), run_model(model, feed), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    return out, [n.op_type for n in out.graph.node if n.op_type not in ("Conv", "Relu")]


@pytest.mark.parametrize(("steps", "kw", "left"), [
    # scalar scales fold, padded or not
    ([("Mul", [0.7], False)], {}, []),
    ([("Div", [255.0], False)], {}, []),
    ([("Mul", [1.3], True), ("Div", [2.0], False)], {"pads": 0, "kernel": 1}, []),
    # shifts, per channel or scalar, fold into an unpadded conv (grouped too)
    ([("Add", _PER_CHANNEL, False)], {"pads": 0, "kernel": 1}, []),
    ([("Sub", [0.5], False)], {"pads": 0}, []),
    ([("Add", _PER_CHANNEL.reshape(1, _C, 1, 1), True)], {"pads": 0, "group": 2}, []),
    ([("Add", _PER_CHANNEL, False)], {"pads": 0, "kernel": 1, "group": _C,
                                      "out_channels": _C}, []),
    # a learnable affine block before an unpadded conv: both fold
    ([("Mul", [1.7], False), ("Add", [-0.4], False)], {"pads": 0, "kernel": 1}, []),
    # ... before a padded depthwise conv: the scale moves behind the shift and folds
    ([("Mul", [1.7], False), ("Add", [-0.4], False)], {"group": _C, "out_channels": _C},
     ["Add"]),
    ([("Div", [4.0], False), ("Sub", _PER_CHANNEL, False)], {}, ["Sub"]),
    # what stays
    ([("Add", _PER_CHANNEL, False)], {}, ["Add"]),  # a shift into padding
    ([("Mul", _PER_CHANNEL, False)], {}, ["Mul"]),  # a per-channel scale (module docstring)
    ([("Sub", [1.0], True)], {"pads": 0}, ["Sub"]),  # 1 - x
    ([("Div", [0.0], False)], {}, ["Div"]),  # x / 0
    ([("Mul", [0.0], False), ("Add", [1.0], False)], {}, ["Mul", "Add"]),  # no 1 / 0
    ([("Mul", np.ones((1, 1, 8, 8)), False)], {}, ["Mul"]),  # a spatial scale
])
def test_a_step_in_front_of_a_conv_folds_where_exact(steps, kw, left):
    _, ops = _folded(_chain(steps, **kw))
    assert ops == left


def test_a_step_with_another_reader_stays():
    _, ops = _folded(_chain([("Mul", [0.7], False)], readers=2))
    assert ops == ["Mul", "Sigmoid"]


def test_a_shared_weight_is_left_to_its_other_reader():
    model = _chain([("Mul", [0.5], False)])
    twin = helper.make_node("Conv", ["x", "w", "b"], ["t"], name="twin", pads=[1] * 4)
    model.graph.node.append(twin)
    model.graph.output.append(helper.make_tensor_value_info("t", TensorProto.FLOAT,
                                                            [1, 4, 8, 8]))
    out, ops = _folded(model)
    assert ops == []
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    assert len({n.input[1] for n in convs}) == 2


def _hard_swish_pair(lab: bool) -> onnx.ModelProto:
    """conv → HardSwish (→ Mul(a) → Add(b) when ``lab``) → pointwise conv."""
    rng = np.random.default_rng(13)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.4,
                                     "w1"),
             numpy_helper.from_array(np.array(1.4, np.float32), "a"),
             numpy_helper.from_array(np.array(-0.3, np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((16, 8, 1, 1)).astype(np.float32) * 0.3,
                                     "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4),
             helper.make_node("HardSwish", ["c1"], ["h"])]
    if lab:
        nodes += [helper.make_node("Mul", ["h", "a"], ["ha"]),
                  helper.make_node("Add", ["ha", "b"], ["hb"])]
    nodes.append(helper.make_node("Conv", ["hb" if lab else "h", "w2"], ["y"]))
    graph = helper.make_graph(nodes, "lab", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 32, 32])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 16, 32, 32])], inits if lab else [
                i for i in inits if i.name not in ("a", "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_a_learnable_affine_block_after_a_hard_swish_costs_nothing_in_int8():
    """PP-LCNetV3: conv → HardSwish → Mul(a) → Add(b) → pointwise conv. Quantized, it has
    the same nodes as the model without the block (the block folded into the second conv),
    and its output agrees with FP32."""
    rng = np.random.default_rng(14)
    feeds = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    model = _hard_swish_pair(lab=True)
    got = onnxq.quantize(model, feeds, progress=False, objective="size").model
    plain = onnxq.quantize(_hard_swish_pair(lab=False), feeds, progress=False,
                           objective="size").model
    assert Counter(n.op_type for n in got.graph.node) == \
        Counter(n.op_type for n in plain.graph.node)
    assert cosine(run_model(got, feeds[0])[0], run_model(model, feeds[0])[0]) > 0.999


def test_a_shift_that_gives_the_conv_input_its_rank_stays():
    """x [C, H, W] + b [1, C, 1, 1] → Conv: the Add makes the 4-D input; folding it would
    leave the conv reading a 3-D tensor."""
    rng = np.random.default_rng(15)
    inits = [numpy_helper.from_array(rng.standard_normal((4, _C, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(_PER_CHANNEL.reshape(1, _C, 1, 1), "b")]
    nodes = [helper.make_node("Add", ["x", "b"], ["s"], name="shift"),
             helper.make_node("Conv", ["s", "w"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "rank", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [_C, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    out = G.export_graph(FusionPass().run(G.import_graph(model)).graph)
    assert [n.op_type for n in out.graph.node] == ["Add", "Conv"]


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("inner", ["Erf", "Tanh"])
def test_the_half_of_an_exported_gelu_stays_for_onnxruntime_to_fuse(inner, shift):
    """x · (1 + erf(x / √2)) · 0.5 → Conv: the 0.5 is part of the pattern onnxruntime fuses into
    one Gelu kernel (FastGelu for the tanh form); folding it into the conv is exact but makes
    the float model slower. With a shift between the GELU and a padded conv, the 0.5 does not
    move behind the shift either."""
    rng = np.random.default_rng(16)
    inits = [numpy_helper.from_array(rng.standard_normal((4, _C, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(1.4142135, np.float32), "root2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("Div", ["x", "root2"], ["d"]),
             helper.make_node(inner, ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]),
             helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["g"]),
             *([helper.make_node("Add", ["g0", "one"], ["g"])] if shift else []),
             helper.make_node("Conv", ["g", "w"], ["y"], pads=[1] * 4)]
    if shift:
        nodes[4].output[0] = "g0"
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, _C, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    out = G.export_graph(FusionPass().run(G.import_graph(model)).graph)
    assert Counter(n.op_type for n in out.graph.node)["Mul"] == 2
