"""``FramedConvPass``: a float Conv1d over one channel with few frames per row becomes one MatMul
over the framed signal, computing the same values; the other Convs are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.passes import PreprocessPass
from onnxq.passes import conv_frames as cf
from onnxq.pipeline import ForEachGraph, PassResult, Pipeline

OUT, KERNEL, STRIDE = 258, 256, 128


def _conv(rows, length: int, kernel: int = KERNEL, stride: int = STRIDE, channels: int = 1,
          out: int = OUT, pads=(0, 0), bias: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(
        rng.standard_normal((out, channels, kernel)).astype(np.float32), "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(out).astype(np.float32), "b"))
    conv = helper.make_node("Conv", ["x", "w", "b"] if bias else ["x", "w"], ["y"],
                            kernel_shape=[kernel], strides=[stride], pads=list(pads))
    graph = helper.make_graph(
        [conv], "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                         [rows, channels, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _framed(model: onnx.ModelProto):
    return Pipeline([PreprocessPass(min_opset=17), ForEachGraph(cf.FramedConvPass())]).run(model)


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feed)


@pytest.mark.parametrize("length,kernel,stride,bias", [
    (832, 256, 128, True),    # Silero's STFT: 5 frames of 2 blocks, samples left over
    (768, 256, 128, False),   # exactly 5 frames, no bias
    (400, 100, 50, True),     # 7 frames
    (1024, 512, 128, True),   # 4 blocks per frame
    (2048, 256, 256, True),   # frames that do not overlap
])
def test_the_framed_matmul_computes_the_conv(length, kernel, stride, bias):
    model = _conv("rows", length, kernel, stride, out=OUT, bias=bias)
    result = _framed(model)
    ops = [n.op_type for n in result.model.graph.node]
    assert "Conv" not in ops and ops.count("MatMul") == 1
    assert any("run as one MatMul" in n for r in result.records for n in r.notes)
    for rows in (1, 3, 250):  # a symbolic row count: any number of rows
        x = np.random.default_rng(rows).standard_normal((rows, 1, length)).astype(np.float32)
        want, = _run(model, {"x": x})
        got, = _run(result.model, {"x": x})
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("kwargs,why", [
    ({"rows": 1, "length": 832}, "one row: the Conv's GEMM has the same shape"),
    ({"rows": "n", "length": 128 * 10 + 256}, "11 frames per row: the Conv's GEMMs are wide"),
    ({"rows": "n", "length": 832, "stride": 100}, "the kernel is not a multiple of the stride"),
    ({"rows": "n", "length": 832, "channels": 2}, "two input channels"),
    ({"rows": "n", "length": 832, "pads": (8, 8)}, "padded"),
    ({"rows": "n", "length": 256, "kernel": 64, "stride": 32, "out": 64},
     "a small weight (64 × 64)"),
])
def test_other_convs_are_left_alone(kwargs, why):
    rows = kwargs.pop("rows")
    result = _framed(_conv(rows, **kwargs))
    assert [n.op_type for n in result.model.graph.node] == ["Conv"], why
    assert not result.records[-1].modified


def _stft_front_end(log: bool = False) -> onnx.ModelProto:
    """Silero VAD's front end: chunks [n, 576] → reflect pad → STFT as Conv1d(1 → 2·129,
    k 256, s 128) → magnitude (→ Log, with ``log``) → Conv(129 → 32, k 3) → Relu → mean over
    time."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(np.array([0, 128, 0, 128], np.int64), "pads"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array((rng.standard_normal((OUT, 1, KERNEL)) * 0.1
                                      ).astype(np.float32), "stft_w"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"),
             numpy_helper.from_array(np.array([129], np.int64), "s129"),
             numpy_helper.from_array(np.array([258], np.int64), "s258"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-3, np.float32), "eps"),
             numpy_helper.from_array((rng.standard_normal((32, 129, 3)) * 0.1
                                      ).astype(np.float32), "enc_w"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "enc_b")]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["padded"], mode="reflect"),
             helper.make_node("Unsqueeze", ["padded", "axis1"], ["signal"]),
             helper.make_node("Conv", ["signal", "stft_w"], ["spec"], kernel_shape=[KERNEL],
                              strides=[STRIDE]),
             helper.make_node("Slice", ["spec", "s0", "s129", "axis1"], ["re"]),
             helper.make_node("Slice", ["spec", "s129", "s258", "axis1"], ["im"]),
             helper.make_node("Pow", ["re", "two"], ["re2"]),
             helper.make_node("Pow", ["im", "two"], ["im2"]),
             helper.make_node("Add", ["re2", "im2"], ["power"]),
             helper.make_node("Sqrt", ["power"], ["mag"]),
             *([helper.make_node("Add", ["mag", "eps"], ["floored"]),
                helper.make_node("Log", ["floored"], ["logmag"])] if log else []),
             helper.make_node("Conv", ["logmag" if log else "mag", "enc_w", "enc_b"], ["enc"],
                              kernel_shape=[3],
                              pads=[1, 1]),
             helper.make_node("Relu", ["enc"], ["act"]),
             helper.make_node("ReduceMean", ["act"], ["y"], axes=[2], keepdims=0)]
    graph = helper.make_graph(
        nodes, "stft_front_end",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["chunks", 576])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["chunks", 32])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _producer(model: onnx.ModelProto, name: str):
    return next((n for n in model.graph.node if name in n.output), None)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_quantize_runs_the_stft_as_an_int8_matmul_with_a_float_output(monkeypatch):
    """End to end: the framing runs before planning, so the STFT is an int8 MatMul whose real
    and imaginary parts stay float (only the samples and the basis are rounded); without the
    rewrite the bank stays a float Conv (``filter_bank_reason``)."""
    model = _stft_front_end()
    rng = np.random.default_rng(2)
    calib = [{"x": rng.standard_normal((16, 576)).astype(np.float32)} for _ in range(8)]
    q = onnxq.quantize(model, calib, progress=False)
    assert any("run as one MatMul" in n for n in q.report.notes)
    inits = {i.name: i for i in q.model.graph.initializer}
    matmul, = [n for n in q.model.graph.node if n.op_type == "MatMul"]
    weight = _producer(q.model, matmul.input[1])
    assert weight.op_type == "DequantizeLinear"
    assert inits[weight.input[0]].data_type == TensorProto.INT8
    assert _producer(q.model, matmul.input[0]).op_type == "DequantizeLinear"
    readers = [n.op_type for n in q.model.graph.node if matmul.output[0] in n.input]
    assert readers == ["Transpose"]  # the spectrum is not requantized
    qlinear = onnxq.quantize(model, calib, progress=False, format="qlinear")
    assert "MatMulIntegerToFloat" in [n.op_type for n in qlinear.model.graph.node]
    monkeypatch.setattr(cf.FramedConvPass, "run",
                        lambda self, graph: PassResult(graph=graph, modified=False))
    before = onnxq.quantize(model, calib, progress=False)
    assert "stft_w" in {i.name for i in before.model.graph.initializer}  # float, as Conv
    assert any("FIR filter bank" in why for _, why in before.report.skipped)
    for rows in (1, 40):
        x = {"x": rng.standard_normal((rows, 576)).astype(np.float32)}
        want, got = _run(model, x)[0], _run(q.model, x)[0]
        assert _cosine(got, want) >= 0.999
        np.testing.assert_allclose(_run(qlinear.model, x)[0], got, rtol=1e-4,
                                   atol=1e-4 * float(np.abs(got).max()))


def test_a_log_compressed_stft_stays_float():
    """A log spectrum keeps the quiet bins' relative precision, which int8's grid does not
    have: the framed MatMul stays float, with the reason in the report."""
    model = _stft_front_end(log=True)
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((16, 576)).astype(np.float32)} for _ in range(8)]
    q = onnxq.quantize(model, calib, progress=False)
    assert any("run as one MatMul" in n for n in q.report.notes)
    matmul, = [n for n in q.model.graph.node if n.op_type == "MatMul"]
    weight = {i.name: i for i in q.model.graph.initializer}[matmul.input[1]]
    assert weight.data_type == TensorProto.FLOAT
    assert any("compressed spectrum" in why for _, why in q.report.skipped)
    assert any(n.op_type == "QLinearConv" or n.op_type == "DequantizeLinear"
               for n in q.model.graph.node)  # the encoder conv after it is still int8


def _conv_read(reads: list[tuple[list[int], list[int], list[int], list[int] | None]],
               extra_reader: bool = False, index=np.int64) -> onnx.ModelProto:
    """The STFT Conv on [rows, 1, 832] (5 frames) read by Slices ``(starts, ends, axes,
    steps)``; a ``(…, [1])`` entry on axis 1 is followed by a Slice of frames 1: (Silero's
    real/imaginary split, then its dropped first frame)."""
    model = _conv("rows", 832)
    graph = model.graph
    graph.output.pop()
    for k, (starts, ends, axes, steps) in enumerate(reads):
        names = [f"st{k}", f"en{k}", f"ax{k}"] + ([f"sp{k}"] if steps else [])
        for name, values in zip(names, (starts, ends, axes, steps), strict=False):
            graph.initializer.append(numpy_helper.from_array(np.array(values, index), name))
        out = f"r{k}"
        graph.node.append(helper.make_node("Slice", ["y", *names], [out]))
        if axes == [1]:
            graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), f"one{k}"))
            graph.initializer.append(numpy_helper.from_array(np.array([99], np.int64), f"big{k}"))
            graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), f"two{k}"))
            graph.node.append(helper.make_node("Slice", [out, f"one{k}", f"big{k}", f"two{k}"],
                                               [f"t{k}"]))
            out = f"t{k}"
        graph.node.append(helper.make_node("Relu", [out], [f"o{k}"]))
        graph.output.append(helper.make_tensor_value_info(f"o{k}", TensorProto.FLOAT, None))
    if extra_reader:
        graph.node.append(helper.make_node("Sigmoid", ["y"], ["all"]))
        graph.output.append(helper.make_tensor_value_info("all", TensorProto.FLOAT, None))
    return model


def _frames_computed(model: onnx.ModelProto, rows: int = 3) -> int:
    x = np.random.default_rng(5).standard_normal((rows, 1, 832)).astype(np.float32)
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(matmul.output[0],
                                                            TensorProto.FLOAT, None))
    return _run(probe, {"x": x})[-1].shape[1]


@pytest.mark.parametrize("reads,frames,index", [
    ([([0], [129], [1], None), ([129], [258], [1], None)], 4, np.int64),  # Silero: frames 1:
    ([([1], [-1], [2], None)], 3, np.int64),                              # frames 1 … 3
    ([([1], [3], [2], [1]), ([2], [4], [2], None)], 3, np.int32),         # int32 arguments
    ([([0], [2], [-1], [1]), ([3], [5], [2], None)], 5, np.int64),  # 0–1 and 3–4: all five
    ([([2, 0], [99, 100], [2, 1], None)], 3, np.int64),  # frames 2: and channels 0:100
])
def test_only_the_frames_the_readers_slice_out_are_computed(reads, frames, index):
    model = _conv_read(reads, index=index)
    result = _framed(model)
    assert _frames_computed(result.model) == frames
    trimmed = [n for r in result.records for n in r.notes if "only the frames" in n]
    assert bool(trimmed) == (frames < 5)
    for rows in (1, 4):
        x = np.random.default_rng(rows).standard_normal((rows, 1, 832)).astype(np.float32)
        for want, got in zip(_run(model, {"x": x}), _run(result.model, {"x": x}), strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5,
                                       atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("reads,extra,why", [
    ([([1], [5], [2], None)], True, "another reader takes every frame"),
    ([([0], [5], [2], [2])], False, "every other frame"),
])
def test_frames_are_all_computed_when_a_reader_needs_them(reads, extra, why):
    result = _framed(_conv_read(reads, extra_reader=extra))
    assert _frames_computed(result.model) == 5, why


def test_frames_are_all_computed_when_a_subgraph_may_read_them():
    """A branch reads the Conv's output by name from the outer scope (graphsurgeon lists that
    reader among the output's readers): every frame stays."""
    model = _conv_read([([1], [5], [2], None)])
    then, other = (helper.make_graph(
        [helper.make_node("Identity", ["y"], [f"b{k}"])], f"branch{k}", [],
        [helper.make_tensor_value_info(f"b{k}", TensorProto.FLOAT, None)]) for k in (0, 1))
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["picked"], then_branch=then,
                                             else_branch=other))
    model.graph.output.append(helper.make_tensor_value_info("picked", TensorProto.FLOAT, None))
    result = _framed(model)
    assert _frames_computed(result.model) == 5
    x = np.random.default_rng(7).standard_normal((2, 1, 832)).astype(np.float32)
    for want, got in zip(_run(model, {"x": x}), _run(result.model, {"x": x}), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
