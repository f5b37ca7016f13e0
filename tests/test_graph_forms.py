"""Graph forms real models use: fp16 weights behind Cast, SiLU (x·Sigmoid(x)) between int8
convs, MatMul with a constant first operand."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from tests.conftest import cosine, run_model

n = helper.make_node


def _model(nodes, inits, x_shape, y, y_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, x_shape)], [helper.make_tensor_value_info(
            y, TensorProto.FLOAT, y_shape)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(shape, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(k)]


def _check(model, feeds, fmt):
    result = onnxq.quantize(model, feeds, progress=False, format=fmt)
    onnx.checker.check_model(result.model, full_check=True)
    for feed in feeds[:2]:
        assert cosine(run_model(model, feed)[0], run_model(result.model, feed)[0]) >= 0.999
    return result, Counter(x.op_type for x in result.model.graph.node)


@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_fp16_weights_behind_cast_are_quantized(fmt):
    rng = np.random.default_rng(0)
    w = (0.3 * rng.standard_normal((8, 3, 3, 3))).astype(np.float16)
    fc = (0.3 * rng.standard_normal((8, 4))).astype(np.float16)
    model = _model([n("Cast", ["w16"], ["w"], to=1, name="cast_w"),
                    n("Conv", ["x", "w"], ["c"], pads=[1] * 4, name="conv"),
                    n("Relu", ["c"], ["r"], name="relu"),
                    n("GlobalAveragePool", ["r"], ["p"], name="gap"),
                    n("Flatten", ["p"], ["f"], name="flat"),
                    n("Cast", ["fc16"], ["fcw"], to=1, name="cast_fc"),
                    n("MatMul", ["f", "fcw"], ["y"], name="fc")],
                   [numpy_helper.from_array(w, "w16"), numpy_helper.from_array(fc, "fc16")],
                   ["n", 3, 16, 16], "y", ["n", 4])
    result, ops = _check(model, _feeds((2, 3, 16, 16)), fmt)
    assert {"conv", "fc"} <= {name for name, _ in result.report.quantized}
    # the fp16 weights' Casts are folded; a Cast left reads a float16 per-channel scale
    # (passes/compact.py stores those as float16), never a weight
    inits = {i.name: i for i in result.model.graph.initializer}
    casts = [nd for nd in result.model.graph.node if nd.op_type == "Cast"]
    assert len(casts) == ops["Cast"]
    assert all(nd.input[0] in inits and nd.input[0].endswith("_scale_f16")
               and inits[nd.input[0]].data_type == onnx.TensorProto.FLOAT16
               and len(inits[nd.input[0]].dims) == 1 for nd in casts)
    assert any("node(s) computing constants folded" in note for note in result.report.notes)
    from onnxq.sizes import component_bytes

    weights = "conv/matmul weights"  # int8 is smaller than fp16
    assert component_bytes(result.model)[weights] < component_bytes(model)[weights]


def test_silu_between_convs_stays_int8():
    rng = np.random.default_rng(1)
    nodes, inits, x, c = [], [], "x", 3
    for i in range(3):
        w = rng.standard_normal((16, c, 3, 3)) * np.sqrt(2 / (9 * c))
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        nodes += [n("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1] * 4, name=f"conv{i}"),
                  n("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sigmoid{i}"),
                  n("Mul", [f"c{i}", f"s{i}"], [f"a{i}"], name=f"silu{i}")]
        x, c = f"a{i}", 16
    model = _model(nodes, inits, ["n", 3, 16, 16], x, ["n", 16, 16, 16])
    _, ops = _check(model, _feeds((1, 3, 16, 16)), "qlinear")
    assert ops["QLinearConv"] == 3 and ops["QLinearSigmoid"] == 3 and ops["QLinearMul"] == 3
    assert ops["Sigmoid"] == ops["Mul"] == ops["Conv"] == 0


@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_matmul_with_constant_first_operand(fmt):
    """W·x: W is quantized like an activation (u8), so onnxruntime's u8×u8 kernels run it."""
    rng = np.random.default_rng(2)
    model = _model([n("MatMul", ["A", "x"], ["y"], name="left"),
                    n("Relu", ["y"], ["r"], name="relu"),
                    n("MatMul", ["r", "B"], ["z"], name="right")],
                   [numpy_helper.from_array((0.2 * rng.standard_normal((32, 64))).astype(
                       np.float32), "A"),
                    numpy_helper.from_array((0.2 * rng.standard_normal((16, 8))).astype(
                        np.float32), "B")], [64, 16], "z", [32, 8])
    result, ops = _check(model, _feeds((64, 16)), fmt)
    assert "left" in dict(result.report.quantized) and not result.report.skipped
    if fmt == "qlinear":
        assert ops["MatMul"] == 0



def test_lstm_weights_computed_from_constants_are_folded_and_quantized():
    """torch-style exports build LSTM weights at run time (Concat of per-gate constants,
    Unsqueeze): preprocessing folds them, so the LSTM still gets int8 weights."""
    from tests import builders_flow as F

    model = F.recurrent("LSTM")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    keep = [t for t in model.graph.initializer if t.name not in ("rnn.W", "rnn.R")]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    plumbing = []
    for name in ("rnn.W", "rnn.R"):
        w = inits[name][0]  # [4H, K]
        half = w.shape[0] // 2
        model.graph.initializer.extend([numpy_helper.from_array(w[:half], f"{name}.a"),
                                        numpy_helper.from_array(w[half:], f"{name}.b")])
        plumbing += [n("Concat", [f"{name}.a", f"{name}.b"], [f"{name}.cat"], axis=0,
                       name=f"{name}.concat"),
                     n("Unsqueeze", [f"{name}.cat", "axis0"], [name], name=f"{name}.unsq")]
    model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
    for i, node in enumerate(plumbing):
        model.graph.node.insert(i, node)
    onnx.checker.check_model(model, full_check=True)
    feeds = F.sequence_feeds(model, 4)
    result = onnxq.quantize(model, feeds, progress=False)
    ops = Counter(x.op_type for x in result.model.graph.node)
    assert ops["DynamicQuantizeLSTM"] == 1 and ops["Concat"] == ops["Unsqueeze"] == 0
    assert cosine(run_model(model, feeds[0])[0], run_model(result.model, feeds[0])[0]) >= 0.999


def test_spectrum_filter_bank_stays_float_but_learned_front_ends_do_not():
    """A Conv reading one channel with a long 1-D kernel whose output reaches a magnitude
    (here |·|² then √, an STFT/CQT front end) stays float with the reason; the same bank
    followed by a ReLU (a learned raw-waveform front end, as in CREPE), a short raw-waveform
    conv and a 9×9 depthwise conv (81 taps, group = channels) are quantized."""
    rng = np.random.default_rng(3)
    bank = (0.05 * rng.standard_normal((8, 1, 128))).astype(np.float32)
    short = (0.3 * rng.standard_normal((8, 1, 10))).astype(np.float32)
    dw = (0.1 * rng.standard_normal((8, 1, 9, 9))).astype(np.float32)
    graph = helper.make_graph(
        [n("Conv", ["x", "bank"], ["a"], name="spectrum_bank", pads=[64, 63]),
         n("Transpose", ["a"], ["at"], name="to_time", perm=[0, 2, 1]),
         n("Mul", ["at", "at"], ["power"], name="square"),
         n("Sqrt", ["power"], ["mag"], name="magnitude"),
         n("Transpose", ["mag"], ["m"], name="to_channels", perm=[0, 2, 1]),
         n("Conv", ["x", "bank"], ["l"], name="learned_bank", pads=[64, 63]),
         n("Relu", ["l"], ["lr"], name="relu"),
         n("Conv", ["x", "short"], ["b"], name="short_conv", pads=[5, 4]),
         n("Add", ["m", "b"], ["s0"], name="sum0"),
         n("Add", ["s0", "lr"], ["s"], name="sum"),
         n("Unsqueeze", ["s", "axis"], ["s4"], name="to_2d"),
         n("Conv", ["s4", "dw"], ["y"], name="depthwise", group=8, pads=[4] * 4)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 256, 1])],
        initializer=[numpy_helper.from_array(bank, "bank"),
                     numpy_helper.from_array(short, "short"),
                     numpy_helper.from_array(dw, "dw"),
                     numpy_helper.from_array(np.array([-1], np.int64), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    feeds = [{"x": rng.standard_normal((1, 1, 256)).astype(np.float32)} for _ in range(4)]
    result = onnxq.quantize(model, feeds, progress=False, objective="size")
    why = dict(result.report.skipped)["spectrum_bank"]
    assert "FIR filter bank" in why and "Mul(x, x)" in why
    assert {"learned_bank", "short_conv", "depthwise"} <= set(dict(result.report.quantized))


def test_a_log_spectrum_transform_stays_float_whatever_its_shape():
    """DNSMOS-style front end: 320-sample frames (Reshape, Transpose) through a DFT written as
    two 1×1 convs with 320 input channels (real, imaginary), |·|², √, a floor and a Log, then a
    CNN. The DFT convs stay float with the reason (a quantized DFT gave DNSMOS MOS errors of
    1.2–1.8 on a 1–5 scale and no rank correlation with FP32); the CNN after the Log is
    int8, and so is a conv whose squared output is never log-compressed."""
    frame, bins, frames = 320, 161, 24
    k = np.arange(frame)
    freq = np.arange(bins)[:, None] * k[None, :] * 2 * np.pi / frame
    window = np.hanning(frame)
    real = (np.cos(freq) * window).astype(np.float32)[:, :, None]
    imag = (-np.sin(freq) * window).astype(np.float32)[:, :, None]
    rng = np.random.default_rng(5)
    head = (0.2 * rng.standard_normal((8, 1, 3, 3))).astype(np.float32)
    energy = (0.3 * rng.standard_normal((4, 8, 1, 1))).astype(np.float32)
    graph = helper.make_graph(
        [n("Reshape", ["x", "framing"], ["f"], name="frames"),
         n("Transpose", ["f"], ["ft"], name="to_channels", perm=[0, 2, 1]),
         n("Conv", ["ft", "real"], ["re"], name="dft_real"),
         n("Conv", ["ft", "imag"], ["im"], name="dft_imag"),
         n("Mul", ["re", "re"], ["re2"], name="re_squared"),
         n("Mul", ["im", "im"], ["im2"], name="im_squared"),
         n("Add", ["re2", "im2"], ["power"], name="power"),
         n("Sqrt", ["power"], ["mag"], name="magnitude"),
         n("Max", ["mag", "eps"], ["floored"], name="floor"),
         n("Log", ["floored"], ["logmag"], name="log"),
         n("Unsqueeze", ["logmag", "axis1"], ["img"], name="to_image"),
         n("Conv", ["img", "head"], ["h"], name="cnn", pads=[1, 1, 1, 1]),
         n("Relu", ["h"], ["y"], name="relu"),
         n("Conv", ["y", "energy"], ["e"], name="energy_conv"),
         n("Mul", ["e", "e"], ["e2"], name="energy_squared")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, frame * frames])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, bins, frames]),
         helper.make_tensor_value_info("e2", TensorProto.FLOAT, [1, 4, bins, frames])],
        initializer=[numpy_helper.from_array(real, "real"), numpy_helper.from_array(imag, "imag"),
                     numpy_helper.from_array(head, "head"),
                     numpy_helper.from_array(energy, "energy"),
                     numpy_helper.from_array(np.array([1, frames, frame], np.int64), "framing"),
                     numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
                     numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)

    def clip(seed: int) -> dict:  # a tone with quiet stretches over faint noise
        r = np.random.default_rng(seed)
        t = np.arange(frame * frames) / 16000
        gate = (np.sin(2 * np.pi * r.uniform(2, 5) * t) > 0).astype(np.float64)
        x = 0.5 * gate * np.sin(2 * np.pi * r.uniform(200, 2000) * t)
        return {"x": (x + 1e-3 * r.standard_normal(t.size)).astype(np.float32)[None]}

    feeds = [clip(s) for s in range(6)]
    result = onnxq.quantize(model, feeds, progress=False, objective="size")
    skipped = dict(result.report.skipped)
    for name in ("dft_real", "dft_imag"):
        assert "compressed spectrum" in skipped[name] and "→ Log" in skipped[name], skipped
    assert {"cnn", "energy_conv"} <= set(dict(result.report.quantized))
    held = clip(11)
    ref, got = run_model(model, held)[0], run_model(result.model, held)[0]
    assert cosine(ref, got) >= 0.999


@pytest.mark.parametrize(("exponent", "compressed"), [(0.23, True), (0.5, False), (-0.5, False)])
def test_a_power_law_compressed_spectrum_counts_as_compressed(exponent, compressed):
    """BirdNET's mel energies are squared and raised to 0.23 (overall power 0.46 < 1: the
    small values' relative precision matters, as under a Log), so the transform stays float;
    √(x²) = |x| (overall 1) and an RMS norm's x²^-0.5 (a reciprocal) are not compressions."""
    rng = np.random.default_rng(2)
    w = (0.2 * rng.standard_normal((16, 32))).astype(np.float32)
    graph = helper.make_graph(
        [n("MatMul", ["x", "w"], ["s"], name="transform"),
         n("Mul", ["s", "s"], ["p"], name="square"),
         n("Pow", ["p", "e"], ["c"], name="power"),
         n("MatMul", ["c", "w2"], ["y"], name="head")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        initializer=[numpy_helper.from_array(w, "w"),
                     numpy_helper.from_array(
                         (0.2 * rng.standard_normal((32, 8))).astype(np.float32), "w2"),
                     numpy_helper.from_array(np.array(exponent, np.float32), "e")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = onnxq.quantize(model, _feeds([4, 16]), progress=False, objective="size")
    skipped = dict(result.report.skipped)
    assert ("compressed spectrum" in skipped.get("transform", "")) == compressed, skipped
    assert "head" in dict(result.report.quantized)


def _half_feeds(model, k=4, seed=0, batch=2):
    from tests import builders as B

    return [{name: v.astype(np.float16) if v.dtype == np.float32 else v
             for name, v in f.items()} for f in B.feeds(model, batch=batch, seed=seed, n=k)]


def _types(values) -> list[int]:
    return [v.type.tensor_type.elem_type for v in values]


@pytest.mark.parametrize("build", ["residual_block", "attention_block", "if_branches"])
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_a_float16_model_is_quantized_behind_its_float16_interface(build, fmt):
    """A half-precision export computes in float16. It was refused ("inputs are not float32
    tensors"). Now its inside is float32, int8 where planned, and its inputs and outputs stay
    float16, as its callers and its calibration data have them."""
    from tests import builders as B
    from tests import builders_flow as F

    fp32 = getattr(B, build, None) or getattr(F, build)
    model = B.to_float16(fp32())
    before = model.SerializeToString()
    feeds = _half_feeds(model)
    result = onnxq.quantize(model, feeds, progress=False, format=fmt)
    assert model.SerializeToString() == before  # the input is never modified
    onnx.checker.check_model(result.model, full_check=True)
    assert _types(result.model.graph.input) == _types(model.graph.input)
    assert _types(result.model.graph.output) == _types(model.graph.output)
    assert result.report.quantized
    assert any(note.startswith("float16 model:") for note in result.report.notes)
    for feed in feeds[:2]:
        got, want = run_model(result.model, feed), run_model(model, feed)
        assert [g.dtype for g in got] == [w.dtype for w in want]
        # (0.995 with 7-bit weights, ONNXQ_TARGET=avx2: as the float32 model's output)
        assert cosine(want[0].astype(np.float32), got[0].astype(np.float32)) >= 0.99


def test_the_float16_pass_is_idempotent_and_exact():
    from onnxq import graph as G
    from onnxq.passes import Float16Pass
    from onnxq.pipeline import Pipeline
    from tests import builders as B

    model = B.to_float16(B.residual_block())
    widened = Pipeline([Float16Pass()]).run(model).model
    onnx.checker.check_model(widened, full_check=True)
    assert Float16Pass().run(G.import_graph(widened)).modified is False
    assert Float16Pass().run(G.import_graph(B.residual_block())).modified is False
    casts = [x for x in widened.graph.node if x.op_type == "Cast"]
    assert len(casts) == 2  # one in, one out
    for feed in _half_feeds(model, k=2):  # float32 inside: as float16 to float16 precision
        want, got = run_model(model, feed)[0], run_model(widened, feed)[0]
        assert got.dtype == np.float16
        assert np.allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-2,
                           atol=1e-2 * float(np.abs(want).max()))


def test_a_mixed_precision_export_loses_its_casts_into_float16():
    """float32 inputs and outputs, float16 inside (an export with kept I/O types): the inside
    computes in float32, and the Cast into the float16 part, now float32 → float32, goes."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((0.3 * rng.standard_normal((8, 3, 3, 3))).astype(np.float16), "w")
    fc = numpy_helper.from_array((0.3 * rng.standard_normal((8, 4))).astype(np.float16), "fc")
    model = _model([n("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="to_half"),
                    n("Conv", ["x16", "w"], ["c"], pads=[1] * 4, name="conv"),
                    n("Relu", ["c"], ["r"], name="relu"),
                    n("GlobalAveragePool", ["r"], ["p"], name="gap"),
                    n("Flatten", ["p"], ["f"], name="flat"),
                    n("MatMul", ["f", "fc"], ["y16"], name="fc"),
                    n("Cast", ["y16"], ["y"], to=TensorProto.FLOAT, name="to_float")],
                   [w, fc], ["n", 3, 16, 16], "y", ["n", 4])
    result, ops = _check(model, _feeds((2, 3, 16, 16)), "qdq")
    assert {"conv", "fc"} <= {name for name, _ in result.report.quantized}
    assert "to_half" not in {x.name for x in result.model.graph.node}


@pytest.mark.parametrize("reads", ["magnitude", "rms_norm"])
def test_a_filter_bank_over_a_magnitude_before_a_log_stays_float(reads):
    """swift-f0's front end: a DFT (kept float), |X| = √(re² + im²), then a mel-style filter
    bank as a MatMul over the magnitude, then a floor and a Log. The filter bank reads the
    magnitude, so no magnitude lies between it and the Log: it was quantized, and with it the
    magnitude spectrum (cosine 0.39 on pitch, 0.28 on confidence against FP32). It stays float
    now; a MatMul reading an RMS-normalized signal (x / √mean(x²)) before a Log does not."""
    rng = np.random.default_rng(4)
    bank = np.abs(rng.standard_normal((64, 24))).astype(np.float32) / 8
    head = (0.3 * rng.standard_normal((24, 8))).astype(np.float32)
    if reads == "magnitude":
        front = [n("MatMul", ["x", "dft_re"], ["re"], name="dft_real"),
                 n("MatMul", ["x", "dft_im"], ["im"], name="dft_imag"),
                 n("Mul", ["re", "re"], ["re2"]), n("Mul", ["im", "im"], ["im2"]),
                 n("Add", ["re2", "im2"], ["power"]), n("Sqrt", ["power"], ["mag"]),
                 n("Transpose", ["mag"], ["spec"], perm=[0, 1])]
    else:
        front = [n("Mul", ["x", "x"], ["sq"]), n("ReduceMean", ["sq"], ["ms"], keepdims=1),
                 n("Sqrt", ["ms"], ["rms"]), n("Div", ["x", "rms"], ["normed"]),
                 n("MatMul", ["normed", "dft_re"], ["spec"], name="project")]
    graph = helper.make_graph(
        front + [n("MatMul", ["spec", "bank"], ["mel"], name="filter_bank"),
                 n("Max", ["mel", "eps"], ["floored"]), n("Log", ["floored"], ["logmel"]),
                 n("MatMul", ["logmel", "head"], ["y"], name="head")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 8])],
        initializer=[numpy_helper.from_array(a, name) for a, name in [
            ((0.2 * rng.standard_normal((64, 64))).astype(np.float32), "dft_re"),
            ((0.2 * rng.standard_normal((64, 64))).astype(np.float32), "dft_im"),
            (bank, "bank"), (head, "head"), (np.array(1e-6, np.float32), "eps")]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    feeds = [{"x": (rng.standard_normal((16, 64)) * rng.uniform(1e-3, 1, (16, 1))).astype(
        np.float32)} for _ in range(6)]
    result = onnxq.quantize(model, feeds, progress=False, objective="size")
    skipped, quantized = dict(result.report.skipped), dict(result.report.quantized)
    assert "head" in quantized
    if reads == "magnitude":
        assert "reads that magnitude" in skipped["filter_bank"], skipped
        assert "Sqrt → Log" in skipped["filter_bank"], skipped
        assert {"dft_real", "dft_imag"} <= set(skipped)
        held = feeds[0]
        assert cosine(run_model(model, held)[0], run_model(result.model, held)[0]) > 0.999
    else:
        assert "filter_bank" in quantized and "project" in quantized, skipped
