"""``MatMulEpiloguePass``: the bias ``Add`` after an int8 MatMul with a float output moves into
onnxruntime's ``MatMulIntegerToFloat`` (its seventh input), so the CPU EP runs one kernel
instead of two and ``Add(bias) → Gelu`` becomes ``Gelu`` rather than ``BiasGelu``."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxq
from onnxq import graph as G
from onnxq.passes import MatMulEpiloguePass
from tests import builders as B

K, N = 32, 48


def _qdq_matmul_add(bias_shape=(N,), w_scale_shape=(N,), extra_reader=False,
                    bias_const=True, gelu=False) -> onnx.ModelProto:
    """x → Q → DQ, W int8 → DQ (per column) → MatMul → Add(bias) [→ Gelu] → y."""
    rng = np.random.default_rng(0)
    w = rng.integers(-63, 64, (K, N)).astype(np.int8)
    w_scale = rng.uniform(0.001, 0.01, w_scale_shape).astype(np.float32)
    inits = [
        helper.make_tensor("x_scale", TensorProto.FLOAT, [], [0.02]),
        helper.make_tensor("x_zp", TensorProto.UINT8, [], [128]),
        helper.make_tensor("w_q", TensorProto.INT8, [K, N], w.ravel()),
        helper.make_tensor("w_scale", TensorProto.FLOAT, list(w_scale_shape), w_scale.ravel()),
        helper.make_tensor("w_zp", TensorProto.INT8, list(w_scale_shape),
                           np.zeros(w_scale_shape, np.int8).ravel())]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, K])]
    if bias_const:
        bias = rng.standard_normal(bias_shape).astype(np.float32)
        inits.append(helper.make_tensor("bias", TensorProto.FLOAT, list(bias_shape),
                                        bias.ravel()))
    else:
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, [N]))
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"],
                              name="wdq", axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "bias"], ["added"], name="bias_add")]
    last = "added"
    if gelu:  # the erf form onnxruntime fuses into Gelu (BiasGelu with the Add before it)
        inits += [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (
            ("sqrt2", 1.4142135), ("one", 1.0), ("half", 0.5))]
        nodes += [helper.make_node("Div", ["added", "sqrt2"], ["d"]),
                  helper.make_node("Erf", ["d"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["e1"]),
                  helper.make_node("Mul", ["added", "e1"], ["m"]),
                  helper.make_node("Mul", ["m", "half"], ["gelu"])]
        last = "gelu"
    outputs = [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("mm", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "mm_bias", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run_pass(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool, bool]:
    graph = G.import_graph(onnx.shape_inference.infer_shapes(model))
    first = MatMulEpiloguePass().run(graph)
    second = MatMulEpiloguePass().run(first.graph)
    return G.export_graph(second.graph, model), first.modified, second.modified


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feed)


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath)
                               .graph.node)


def _feed(batch: int = 2) -> dict:
    return {"x": np.random.default_rng(1).standard_normal((batch, 8, K)).astype(np.float32)}


@pytest.mark.parametrize("bias_shape", [(N,), (1, 1, N)])
@pytest.mark.parametrize("w_scale_shape", [(N,), ()])
def test_the_bias_moves_into_the_kernel_with_the_same_values(bias_shape, w_scale_shape):
    model = _qdq_matmul_add(bias_shape=bias_shape, w_scale_shape=w_scale_shape)
    out, modified, again = _run_pass(model)
    assert modified and not again  # idempotent
    nodes = [n for n in out.graph.node if n.op_type not in ("QuantizeLinear",)]
    assert [n.op_type for n in nodes] == ["MatMulIntegerToFloat"]
    fused = nodes[0]
    assert fused.domain == "com.microsoft" and len(fused.input) == 7
    bias = {t.name: t for t in out.graph.initializer}[fused.input[6]]
    assert list(bias.dims) == [N]  # a [1, 1, N] bias is written as the kernel's row
    for a, b in zip(_run(out, _feed()), _run(model, _feed()), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert [n.op_type for n in model.graph.node][-1] == "Add"  # the input is not changed


def test_add_then_gelu_runs_as_gelu_not_bias_gelu(tmp_path):
    model = _qdq_matmul_add(gelu=True)
    before = _optimized_ops(model, tmp_path)
    # the premise: onnxruntime keeps the Add apart from its MatMulIntegerToFloat
    assert before["MatMulIntegerToFloat"] == 1 and before["BiasGelu"] == 1
    out, modified, _ = _run_pass(model)
    assert modified
    after = _optimized_ops(out, tmp_path)
    assert after["BiasGelu"] == 0 and after["Gelu"] == 1 and after["Add"] == 0
    np.testing.assert_allclose(_run(out, _feed())[0], _run(model, _feed())[0], atol=1e-5)


@pytest.mark.parametrize("case", [
    {"extra_reader": True},  # the product itself is read elsewhere
    {"bias_const": False},  # not a constant
    {"bias_shape": (1,)},  # a broadcast scalar, not a row
    {"bias_shape": (1, 1, 1, N)},  # would raise the product's rank
    {"w_scale_shape": (K, 1)},  # neither per-tensor nor per-column
])
def test_what_the_kernel_cannot_take_is_left_alone(case):
    if "w_scale_shape" in case:  # a DequantizeLinear the kernel's b_scale cannot express
        model = _qdq_matmul_add()
        wdq = next(n for n in model.graph.node if n.name == "wdq")
        wdq.attribute[0].i = 0  # per-row scales: axis 0
        for t in model.graph.initializer:
            if t.name in ("w_scale", "w_zp"):
                vals = np.resize(onnx.numpy_helper.to_array(t), K)
                t.CopyFrom(onnx.numpy_helper.from_array(vals, t.name))
    else:
        model = _qdq_matmul_add(**case)
    _, modified, _ = _run_pass(model)
    assert not modified


def test_quantized_encoders_fold_their_biases_for_the_cpu_ep_only(tmp_path):
    model = B.attention_block(layers=2)
    feeds = B.feeds(model, n=4)
    for form in ("qdq", "qlinear"):
        result = onnxq.quantize(model, feeds, progress=False, objective="size", format=form)
        fused = [n for n in result.model.graph.node if n.op_type == "MatMulIntegerToFloat"
                 and len(n.input) == 7]
        assert fused, form
        assert any("MatMulIntegerToFloat takes in" in n for n in result.report.notes)
        ops = _optimized_ops(result.model, tmp_path)
        assert ops["BiasGelu"] == 0 and ops["QLinearAdd"] == 0, form  # q/k/v biases folded
        out = _run(result.model, feeds[0])[0]
        ref = _run(model, feeds[0])[0]
        cos = float(np.dot(out.ravel(), ref.ravel())
                    / np.linalg.norm(out) / np.linalg.norm(ref))
        assert cos > 0.999, form
    plain = onnxq.quantize(model, feeds, progress=False, objective="size",
                           target_ep="openvino")  # a contrib operator OpenVINO does not run
    assert not any(n.domain == "com.microsoft" for n in plain.model.graph.node)


def _scores(op: str = "Div", c: float = 8.0) -> onnx.ModelProto:
    """q, k → Q → DQ each → MatMul(q, kᵀ) → Div (or Mul) by a scalar → Softmax: attention's
    scores with two activations in int8."""
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.03]),
             helper.make_tensor("zp", TensorProto.INT8, [], [0]),
             helper.make_tensor("c", TensorProto.FLOAT, [], [c])]
    nodes = []
    for t in ("q", "k"):
        nodes += [helper.make_node("QuantizeLinear", [t, "s", "zp"], [f"{t}q"]),
                  helper.make_node("DequantizeLinear", [f"{t}q", "s", "zp"], [f"{t}d"])]
    nodes += [helper.make_node("MatMul", ["qd", "kd"], ["scores"], name="scores"),
              helper.make_node(op, ["scores", "c"], ["scaled"], name="scale"),
              helper.make_node("Softmax", ["scaled"], ["p"], axis=-1)]
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 4, 8, 16]),
              helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 4, 16, 8])]
    graph = helper.make_graph(nodes, "scores", inputs,
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op", ["Div", "Mul"])
def test_a_constant_scale_after_the_product_moves_into_a_scale(op):
    model = _scores(op)
    out, modified, again = _run_pass(model)
    assert modified and not again
    assert [n.op_type for n in out.graph.node if n.op_type != "QuantizeLinear"] == [
        "MatMulIntegerToFloat", "Softmax"]
    rng = np.random.default_rng(2)
    feed = {"q": rng.standard_normal((1, 4, 8, 16)).astype(np.float32),
            "k": rng.standard_normal((1, 4, 16, 8)).astype(np.float32)}
    np.testing.assert_allclose(_run(out, feed)[0], _run(model, feed)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [[8], [1, 1, 1, 1, 1]])  # a tensor; a rank-raising scalar
def test_a_negative_or_tensor_scale_is_left_alone(shape):
    assert not _run_pass(_scores("Mul", -0.125))[1]
    model = _scores()
    model.graph.initializer[2].CopyFrom(helper.make_tensor(
        "c", TensorProto.FLOAT, shape, np.full(int(np.prod(shape)), 8.0)))
    assert not _run_pass(model)[1]


def test_a_product_with_a_second_reader_keeps_its_epilogue():
    model = _scores()
    model.graph.node.append(helper.make_node("Relu", ["scores"], ["r"], name="other"))
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    assert not _run_pass(model)[1]


def _requantized_projection(extra_reader: bool = False) -> onnx.ModelProto:
    """x → Q/DQ, W → DQ → MatMul → Q(s1) → DQ → Add(DQ(int8 bias)) → Q(s2) → DQ → y: an int8
    projection whose bias Add is itself int8 (attention's q/k/v in a static model)."""
    rng = np.random.default_rng(3)
    # 7-bit weights: onnxruntime's AVX2 kernels (no VNNI) may sum 8-bit products pairwise in
    # int16 and saturate; with 7 bits the exact sum below is what every x86 CPU computes
    # (checked under qemu's AVX2-only EPYC-Milan too)
    w = rng.integers(-63, 64, (K, N)).astype(np.int8)
    b = rng.integers(-127, 128, N).astype(np.int8)
    inits = [helper.make_tensor(n, dt, dims, vals) for n, dt, dims, vals in (
        ("xs", TensorProto.FLOAT, [], [0.02]), ("xz", TensorProto.INT8, [], [0]),
        ("wq", TensorProto.INT8, [K, N], w.ravel()), ("ws", TensorProto.FLOAT, [], [0.004]),
        ("wz", TensorProto.INT8, [], [0]), ("s1", TensorProto.FLOAT, [], [0.05]),
        ("z1", TensorProto.INT8, [], [3]), ("bq", TensorProto.INT8, [N], b),
        ("bs", TensorProto.FLOAT, [], [0.01]), ("bz", TensorProto.INT8, [], [0]),
        ("s2", TensorProto.FLOAT, [], [0.06]), ("z2", TensorProto.INT8, [], [-2]))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["mm"], name="proj"),
             helper.make_node("QuantizeLinear", ["mm", "s1", "z1"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "s1", "z1"], ["md"]),
             helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"]),
             helper.make_node("Add", ["md", "bd"], ["added"], name="proj_bias"),
             helper.make_node("QuantizeLinear", ["added", "s2", "z2"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "s2", "z2"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("md", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "proj", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", 8, K])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_product_is_not_requantized_just_to_add_its_bias():
    from onnxq.passes.matmul_epilogue import UnquantizedBiasPass

    model = _requantized_projection()
    graph = G.import_graph(onnx.shape_inference.infer_shapes(model))
    first = UnquantizedBiasPass().run(graph)
    assert first.modified and not UnquantizedBiasPass().run(first.graph).modified
    out = G.export_graph(MatMulEpiloguePass().run(first.graph).graph, model)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 1 and "Add" not in ops
    assert ops.count("QuantizeLinear") == 2  # the input's and the sum's: s1 is gone
    feed = _feed(4)
    new, old = _run(out, feed)[0], _run(model, feed)[0]
    w = onnx.numpy_helper.to_array(model.graph.initializer[2]).astype(np.float32) * 0.004
    b = onnx.numpy_helper.to_array(model.graph.initializer[7]).astype(np.float32) * 0.01
    xq = np.clip(np.round(feed["x"] / 0.02), -128, 127) * 0.02
    exact = np.clip(np.round((xq @ w + b) / 0.06) - 2, -128, 127)
    exact = (exact + 2) * 0.06  # the sum with no intermediate rounding, on the s2 grid
    assert np.abs(new - exact).max() <= 0.06 + 1e-6  # within one LSB of s2 (float rounding)
    assert np.mean(np.abs(new - exact)) < np.mean(np.abs(old - exact))  # one rounding less


def test_a_requantized_product_with_another_reader_is_left_alone():
    from onnxq.passes.matmul_epilogue import UnquantizedBiasPass

    model = _requantized_projection(extra_reader=True)
    graph = G.import_graph(onnx.shape_inference.infer_shapes(model))
    assert not UnquantizedBiasPass().run(graph).modified


def _matmul_activation(act: str, rank: int, reader: str) -> onnx.ModelProto:
    """x → MatMul(W) → act → reader (float): a Dense → Relu head read by a float op."""
    rng = np.random.default_rng(2)
    shape = ["n", K] if rank == 2 else ["n", 5, K]
    w = helper.make_tensor("w", TensorProto.FLOAT, [K, N],
                           (rng.standard_normal((K, N)) / 6).astype(np.float32).ravel())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node(act, ["mm"], ["a"], name="act"),
             helper.make_node(reader, ["a"], ["y"], name="reader")]
    graph = helper.make_graph(nodes, "mm_act", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, shape)], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                         None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("act", ["Relu", "Clip"])
@pytest.mark.parametrize("rank", [2, 3])
def test_an_int8_matmul_before_a_float_relu_stays_integer(act, rank, tmp_path):
    """onnxruntime takes a Relu/Clip after ``DQ → MatMul`` into the QDQ group and, with no
    QuantizeLinear after it, rejects the group: the MatMul ran in float and dequantized its
    weight on every run. Written as MatMulIntegerToFloat, it stays integer, same values."""
    model = _matmul_activation(act, rank, "Sigmoid")
    x = np.random.default_rng(3).standard_normal((6, K) if rank == 2 else (6, 5, K))
    feeds = [{"x": x[i:i + 2].astype(np.float32)} for i in range(0, 6, 2)]
    result = onnxq.quantize(model, feeds, progress=False, objective="size")
    ops = _optimized_ops(result.model, tmp_path)
    assert ops["MatMulIntegerToFloat"] == 1 and ops["MatMul"] == 0, ops
    assert any("MatMulIntegerToFloat: onnxruntime would run them in float" in n
               for n in result.report.notes)
    # the same values as the unfused QDQ form (the pass undone: DQ → MatMul → act)
    graph = G.import_graph(result.model)
    unfused = G.export_graph(graph, result.model)
    for node in unfused.graph.node:
        if node.op_type == "MatMulIntegerToFloat":
            a, b, a_s, b_s, a_z, b_z = (list(node.input) + [""] * 6)[:6]  # zero points optional
            dq_a = helper.make_node("DequantizeLinear", [a, a_s, a_z], ["_a"])
            dq_b = helper.make_node("DequantizeLinear", [b, b_s, b_z], ["_b"], axis=1)
            node.CopyFrom(helper.make_node("MatMul", ["_a", "_b"], list(node.output)))
            unfused.graph.node.extend([dq_a, dq_b])
    unfused = G.export_graph(G.import_graph(unfused).toposort(), unfused)
    feed = {"x": x[:2].astype(np.float32)}
    np.testing.assert_allclose(_run(result.model, feed)[0], _run(unfused, feed)[0], atol=1e-5)


def test_a_relu_that_is_requantized_or_not_after_a_weight_is_left_to_onnxruntime():
    """``DQ → MatMul → Relu → Q`` is onnxruntime's QLinearMatMul; a MatMul of two activations
    has no weight to dequantize on every run: both left alone."""
    model = _qdq_matmul_add()
    for node in model.graph.node:
        if node.op_type == "Add":
            node.CopyFrom(helper.make_node("Relu", ["mm"], ["r"], name="relu"))
    model.graph.node.extend([helper.make_node("QuantizeLinear", ["r", "x_scale", "x_zp"],
                                              ["added"], name="q_out")])
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.UINT8
    _, modified, _ = _run_pass(model)
    assert not modified
