"""``ReshapeShapePass``: a Reshape target computed from ``Shape`` becomes a constant with ``0``
for each copied dim that is proven to be the same dim of the Reshape's input; anything not
proven keeps its computed target, and the outputs never change."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxq
from onnxq import graph as G
from onnxq.config import QuantConfig
from onnxq.passes import PreprocessPass, ReshapeShapePass
from onnxq.passes.front import front_passes
from onnxq.pipeline import ForEachGraph, Pipeline

D, HEADS = 16, 4


def _dim(name: str, source: str, index: int) -> list:
    """``Unsqueeze(Gather(Shape(source), index))``: the exporter's way to copy a dim."""
    return [helper.make_node("Shape", [source], [f"{name}_shape"]),
            helper.make_node("Gather", [f"{name}_shape", f"i{index}"], [f"{name}_g"], axis=0),
            helper.make_node("Unsqueeze", [f"{name}_g", "axes0"], [name])]


def _attention(swap: bool = False, allowzero: int = 0, sliced: bool = False
               ) -> onnx.ModelProto:
    """One self-attention block as torch.onnx exports it: the head split and merge Reshapes
    take their batch and sequence dims from ``Shape(h)`` (``h`` = LayerNorm(x)). ``swap``:
    the merge target names sequence then batch (a valid, different reshape). ``sliced``: the
    split target starts with ``Slice(Shape(h), 0, 2)`` (tf2onnx's and newer exporters' form)."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [D, D],
                                rng.standard_normal(D * D).astype(np.float32) * 0.3)
             for n in ("wq", "wk", "wv", "wo")]
    inits += [helper.make_tensor("gamma", TensorProto.FLOAT, [D], np.ones(D, np.float32)),
              helper.make_tensor("beta", TensorProto.FLOAT, [D], np.zeros(D, np.float32)),
              helper.make_tensor("i0", TensorProto.INT64, [], [0]),
              helper.make_tensor("i1", TensorProto.INT64, [], [1]),
              helper.make_tensor("axes0", TensorProto.INT64, [1], [0]),
              helper.make_tensor("heads", TensorProto.INT64, [1], [HEADS]),
              helper.make_tensor("width", TensorProto.INT64, [1], [D // HEADS]),
              helper.make_tensor("minus1", TensorProto.INT64, [1], [-1]),
              helper.make_tensor("two", TensorProto.INT64, [1], [2])]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1),
             *_dim("b", "h", 0), *_dim("s", "h", 1)]
    if sliced:
        nodes += [helper.make_node("Shape", ["h"], ["h_shape"]),
                  helper.make_node("Slice", ["h_shape", "axes0", "two"], ["bs"]),
                  helper.make_node("Concat", ["bs", "heads", "width"], ["split"], axis=0)]
    else:
        nodes.append(helper.make_node("Concat", ["b", "s", "heads", "width"], ["split"], axis=0))
    for p in "qkv":
        nodes += [helper.make_node("MatMul", ["h", f"w{p}"], [f"{p}0"]),
                  helper.make_node("Reshape", [f"{p}0", "split"], [f"{p}1"],
                                   allowzero=allowzero),
                  helper.make_node("Transpose", [f"{p}1"], [f"{p}2"],
                                   perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3])]
    merge = ["s", "b", "minus1"] if swap else ["b", "s", "minus1"]
    nodes += [helper.make_node("MatMul", ["q2", "k2"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "v2"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Concat", merge, ["merge"], axis=0),
              helper.make_node("Reshape", ["ctx_t", "merge"], ["ctx_m"], allowzero=allowzero),
              helper.make_node("MatMul", ["ctx_m", "wo"], ["o"]),
              helper.make_node("Identity", ["o"], ["y"]) if swap else
              helper.make_node("Add", ["o", "x"], ["y"])]
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                       ["seq", "batch", D] if swap else ["batch", "seq", D])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _rewritten(model: onnx.ModelProto):
    return Pipeline([PreprocessPass(min_opset=17), ForEachGraph(ReshapeShapePass())]).run(model)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def _targets(model: onnx.ModelProto) -> dict[str, list[int] | None]:
    g = G.import_graph(model)
    return {n.name or n.outputs[0].name: (None if G.constant_value(n.inputs[1]) is None else
                                          [int(v) for v in G.constant_value(n.inputs[1])])
            for n in g.nodes if n.op == "Reshape"}


FEEDS = [np.random.default_rng(k).standard_normal(shape).astype(np.float32)
         for k, shape in enumerate([(1, 5, D), (3, 7, D), (2, 1, D)])]


@pytest.mark.parametrize("sliced", [False, True])
def test_exported_head_split_and_merge_become_constant_targets(sliced):
    model = _attention(sliced=sliced)
    result = _rewritten(model)
    out = result.model
    assert sorted(t for t in _targets(out).values() if t is not None) == \
        [[0, 0, -1], [0, 0, HEADS, D // HEADS], [0, 0, HEADS, D // HEADS],
         [0, 0, HEADS, D // HEADS]]
    ops = [n.op_type for n in out.graph.node]
    assert "Shape" not in ops and "Gather" not in ops and "Concat" not in ops
    assert any("4 Reshape target(s) made constant" in n for r in result.records
               for n in r.notes)
    for x in FEEDS:  # other batch and sequence sizes than any declared: the same values
        np.testing.assert_array_equal(_run(out, x), _run(model, x))


def test_a_target_that_swaps_dims_is_not_made_constant():
    """``[seq, batch, -1]`` copies dims from other positions: 0 there would copy the wrong
    ones, so only the proven head split is rewritten."""
    model = _attention(swap=True)
    out = _rewritten(model).model
    targets = _targets(out)
    assert sum(t is None for t in targets.values()) == 1  # the merge keeps its computed target
    for x in FEEDS:
        np.testing.assert_array_equal(_run(out, x), _run(model, x))


def test_allowzero_reshapes_are_left_alone():
    out = _rewritten(_attention(allowzero=1)).model
    assert all(t is None for t in _targets(out).values())


def _flatten_by(data: str, source: str, before: list, inputs: dict) -> onnx.ModelProto:
    """``Reshape(data, [Shape(source)[0], -1])`` after the nodes ``before``."""
    nodes = [*before, *_dim("d0", source, 0),
             helper.make_node("Concat", ["d0", "minus1"], ["t"], axis=0),
             helper.make_node("Reshape", [data, "t"], ["z"])]
    graph = helper.make_graph(
        nodes, "flatten",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["p", "q"])],
        [helper.make_tensor("i0", TensorProto.INT64, [], [0]),
         helper.make_tensor("axes0", TensorProto.INT64, [1], [0]),
         helper.make_tensor("minus1", TensorProto.INT64, [1], [-1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_dim_from_another_input_is_not_assumed_equal():
    """``Reshape(x, [Shape(y)[0], -1])`` where ``x`` and ``y`` have unrelated batch symbols:
    nothing proves the dims equal, so the target stays computed."""
    model = _flatten_by("x", "y", [], {"x": ["n", 6], "y": ["m", 2]})
    result = _rewritten(model)
    assert list(_targets(result.model).values()) == [None]
    assert not result.records[-1].modified


def test_quantize_runs_no_shape_ops_and_keeps_the_values():
    """End to end: the int8 model of the exported block has no shape arithmetic left, and the
    pass changes no value of the quantized model (the same model quantized with the
    targets already constant, by hand, gives the same outputs)."""
    model = _attention()
    calib = [{"x": np.random.default_rng(10 + k).standard_normal((1, 8, D)).astype(np.float32)}
             for k in range(8)]
    q = onnxq.quantize(model, calib, progress=False, objective="size")
    assert not {"Shape", "Gather", "Unsqueeze"} & {n.op_type for n in q.model.graph.node}
    assert any("Reshape target(s) made constant" in n for n in q.report.notes)
    by_hand = onnxq.quantize(_rewritten(model).model, calib, progress=False, objective="size")
    for x in FEEDS:
        np.testing.assert_array_equal(_run(q.model, x), _run(by_hand.model, x))


@pytest.mark.parametrize("mode,fuse,expected", [("static", False, True), ("dynamic", False, True),
                                                ("dynamic", True, False)])
def test_not_run_where_onnxruntimes_attention_fusion_reads_the_shape_ops(mode, fuse, expected):
    names = [p.name for p in front_passes(QuantConfig(mode=mode, fuse_attention=fuse))]
    assert ("reshape_shapes" in names) is expected


def test_a_dim_two_inputs_broadcast_is_not_taken_from_either():
    """``Reshape(Add(a [n, 8], b [m, 8]), [Shape(a)[0], -1])``: with n = 1 and m = 3 the sum has
    3 rows while the target asks for 1, so a ``0`` there would give another shape. Neither
    input alone makes the sum's dim, so the target stays computed."""
    model = _flatten_by("c", "a", [helper.make_node("Add", ["a", "b"], ["c"])],
                        {"a": ["n", 8], "b": ["m", 8]})
    out = _rewritten(model).model
    assert list(_targets(out).values()) == [None]
    feed = {"a": np.ones((1, 8), np.float32), "b": np.ones((3, 8), np.float32)}
    s0 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    s1 = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    assert s1.run(None, feed)[0].shape == s0.run(None, feed)[0].shape == (1, 24)
