"""Bit-exact agreement of onnxq.kernels.reference with onnxruntime's CPU execution provider."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.kernels import isa
from onnxq.kernels import reference as ref

_CPU = isa.detect()
# The references model onnxruntime's x86 MLAS kernels. Without VNNI (or AMX), the u8 x s8
# kernels saturate pairs of products in int16 (modelled by ``no_vnni``); s8 x s8 products are
# exact on such CPUs too (checked on an AVX2-only CPU: Zen 3 under qemu-x86_64 -cpu EPYC-Milan).
pytestmark = pytest.mark.skipif(not _CPU.x86, reason="models onnxruntime's x86 kernels")
NO_VNNI = not (_CPU.vnni or _CPU.amx_int8)
# Full-range s8 weights, or 7-bit ones where onnxruntime would saturate (so these tests do not
# depend on the emulation, which has its own hardware check below).
W_LO, W_HI = (-64, 64) if NO_VNNI else (-128, 128)
OPSET = 21
_NP2ONNX = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
            np.dtype(np.int32): TensorProto.INT32, np.dtype(np.float32): TensorProto.FLOAT}


def _run(op: str, inputs: list[tuple[str, np.ndarray | None, bool]], out_dtype: np.dtype,
         domain: str = "", **attrs) -> np.ndarray:
    """Run a one-node model; ``inputs`` are (name, value, as_initializer), None = omitted."""
    feeds, inits, graph_inputs, names = {}, [], [], []
    for name, value, const in inputs:
        if value is None:
            names.append("")
            continue
        names.append(name)
        value = np.asarray(value)
        if const:
            inits.append(numpy_helper.from_array(value, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(
                name, _NP2ONNX[value.dtype], list(value.shape)))
            feeds[name] = value
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node(op, names, ["y"], domain=domain, **attrs)
    out = helper.make_tensor_value_info("y", _NP2ONNX[np.dtype(out_dtype)], None)
    graph = helper.make_graph([node], "g", graph_inputs, [out], initializer=inits)
    opsets = [helper.make_opsetid("", OPSET)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _f32(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def _y_scale(real: np.ndarray, rng: np.random.Generator) -> np.float32:
    """An output scale covering most of ``real``'s range (some values saturate)."""
    span = float(np.ptp(real)) or 1.0
    return np.float32(span / rng.uniform(180.0, 300.0))


# ----------------------------------------------------------------------------- QLinearConv

# (N, C, H, W, M, kernel, stride, pad, dilation, group)
_CONV_SHAPES = [
    (1, 3, 7, 7, 4, 1, 1, 0, 1, 1),    # 1x1, gemm path
    (2, 8, 6, 5, 16, 1, 1, 0, 1, 1),   # 1x1, symmetric conv path (C % 4, M >= 16)
    (1, 8, 7, 7, 16, 3, 1, 1, 1, 1),   # 3x3 pad 1, symmetric conv path
    (1, 3, 9, 8, 5, 3, 2, 1, 1, 1),    # 3x3 stride 2
    (1, 4, 9, 9, 6, 3, 1, 2, 2, 1),    # dilation 2
    (1, 5, 11, 10, 4, 5, 2, 2, 1, 1),  # 5x5 stride 2
    (1, 6, 8, 8, 4, 3, 1, 1, 1, 2),    # group 2
    (1, 8, 8, 7, 8, 3, 2, 1, 2, 2),    # group 2, stride 2, dilation 2
    (1, 3, 8, 8, 3, 3, 1, 1, 1, 3),    # depthwise (gemm depthwise kernel)
    (1, 16, 7, 7, 16, 3, 1, 1, 1, 16),  # depthwise, symmetric depthwise kernel
    (2, 16, 9, 9, 16, 5, 2, 2, 1, 16),  # depthwise 5x5 stride 2
    (1, 32, 6, 6, 32, 3, 1, 1, 2, 32),  # depthwise dilation 2
]


def _conv_case(shape, per_channel: bool, x_zp_kind: str, w_kind: str, with_bias: bool,
               seed: int):
    n, c, h, w_, m, k, s, p, d, g = shape
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, c, h, w_), dtype=np.uint8)
    x_zp = np.uint8({"zero": 0, "mid": 128, "rand": rng.integers(1, 255)}[x_zp_kind])
    if w_kind == "s8":
        w = rng.integers(max(W_LO, -127), W_HI, (m, c // g, k, k), dtype=np.int8)
        w_zp = np.zeros(m, np.int8) if per_channel else np.int8(0)
    elif w_kind == "s8zp":  # nonzero per-tensor zero point (not the symmetric path)
        w = rng.integers(W_LO, W_HI, (m, c // g, k, k), dtype=np.int8)
        w_zp = np.int8(rng.integers(-20, 20) or 3)
    else:  # u8 weights around 128
        w = rng.integers(0, 256, (m, c // g, k, k), dtype=np.uint8)
        w_zp = np.full(m, 128, np.uint8) if per_channel else np.uint8(128)
    x_scale = np.float32(rng.uniform(0.005, 0.05))
    w_scale = _f32(rng.uniform(0.001, 0.02, m) if per_channel else rng.uniform(0.001, 0.02))
    bias = rng.integers(-5000, 5000, m).astype(np.int32) if with_bias else None
    kw = dict(strides=[s, s], pads=[p, p, p, p], dilations=[d, d], group=g)
    acc = ref.conv_accumulators(x, x_zp, w, w_zp, **kw)
    real = acc.astype(np.float64) * float(x_scale) * np.mean(w_scale)
    y_scale, y_zp = _y_scale(real, rng), np.uint8(rng.integers(0, 256))
    return (x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias), kw


def _ort_conv(args, kw, w_const: bool = True) -> np.ndarray:
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias = args
    inputs = [("x", x, False), ("xs", x_scale, True), ("xz", x_zp, True), ("w", w, w_const),
              ("ws", w_scale, True), ("wz", w_zp, True), ("ys", y_scale, True),
              ("yz", y_zp, True), ("b", bias, True)]
    return _run("QLinearConv", inputs, np.uint8, **kw)


_CONV_GRID = [
    (len(_CONV_SHAPES) * j + i, shape, per_channel, xzp, wk, bias)
    for i, shape in enumerate(_CONV_SHAPES)
    for j, (per_channel, xzp, wk, bias) in enumerate([
        (True, ("zero", "mid", "rand")[i % 3], "s8", i % 2 == 0),
        (False, ("rand", "zero", "mid")[i % 3], "s8", i % 2 == 1),
        (i % 2 == 0, "rand", ("s8zp", "u8")[i % 2], True),
    ])
]


@pytest.mark.parametrize("seed,shape,per_channel,x_zp_kind,w_kind,with_bias", _CONV_GRID)
def test_qlinear_conv_bit_exact(seed, shape, per_channel, x_zp_kind, w_kind, with_bias):
    args, kw = _conv_case(shape, per_channel, x_zp_kind, w_kind, with_bias, seed)
    expected = _ort_conv(args, kw)
    got = ref.qlinear_conv(*args, **kw, no_vnni=NO_VNNI)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("shape", [_CONV_SHAPES[2], _CONV_SHAPES[6], _CONV_SHAPES[9]])
def test_qlinear_conv_dynamic_weight(shape):
    args, kw = _conv_case(shape, True, "rand", "s8", True, seed=7)
    got = ref.qlinear_conv(*args, **kw, no_vnni=NO_VNNI)
    assert np.array_equal(got, _ort_conv(args, kw, w_const=False))


def test_qlinear_conv_s8_activations_and_1d():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (2, 4, 13), dtype=np.int8)
    w = rng.integers(-127, 128, (6, 2, 3), dtype=np.int8)
    args = (x, np.float32(0.03), np.int8(-5), w, _f32(rng.uniform(0.002, 0.01, 6)),
            np.zeros(6, np.int8), np.float32(0.05), np.int8(7),
            rng.integers(-900, 900, 6).astype(np.int32))
    kw = dict(strides=[2], pads=[1, 2], dilations=[2], group=2)
    expected = _run("QLinearConv", [("x", x, False)] + [
        (f"i{i}", v, True) for i, v in enumerate(args[1:])], np.int8, **kw)
    assert np.array_equal(ref.qlinear_conv(*args, **kw), expected)


def test_qlinear_conv_round_half_even_ties():
    """multiplier 0.5: every odd accumulator is a tie, which must round to even."""
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, (1, 8, 5, 5), dtype=np.uint8)
    w = rng.integers(-3, 4, (16, 8, 1, 1), dtype=np.int8)
    args = (x, np.float32(0.5), np.uint8(128), w, np.float32(1.0), np.int8(0),
            np.float32(1.0), np.uint8(128), None)
    acc = ref.conv_accumulators(x, 128, w, 0)
    assert np.count_nonzero(acc % 2) > 50
    assert np.array_equal(ref.qlinear_conv(*args), _ort_conv(args, {}))


# --------------------------------------------------------------------------- QLinearMatMul

@pytest.mark.parametrize("a_shape,b_shape,per_column,b_const", [
    ((5, 7), (7, 6), False, True),
    ((5, 7), (7, 6), True, True),
    ((1, 33), (33, 17), True, False),
    ((3, 4, 9), (9, 5), False, True),
    ((3, 4, 9), (3, 9, 5), True, True),
    ((2, 3, 4, 9), (2, 3, 9, 6), True, False),
    ((2, 3, 4, 9), (9, 6), True, True),
])
@pytest.mark.parametrize("b_type", ["s8", "u8"])
def test_qlinear_matmul_bit_exact(a_shape, b_shape, per_column, b_const, b_type):
    rng = np.random.default_rng(len(a_shape) * 100 + b_shape[-1] + per_column)
    a = rng.integers(0, 256, a_shape, dtype=np.uint8)
    n = b_shape[-1]
    zp_shape = (*b_shape[:-2], 1, n) if per_column else ()
    if b_type == "s8":
        b = rng.integers(W_LO, W_HI, b_shape, dtype=np.int8)
        b_zp = np.zeros(zp_shape, np.int8)
    else:
        b = rng.integers(0, 256, b_shape, dtype=np.uint8)
        b_zp = rng.integers(100, 150, zp_shape).astype(np.uint8)
    a_scale, a_zp = np.float32(0.02), np.uint8(rng.integers(0, 256))
    b_scale = _f32(rng.uniform(0.001, 0.01, zp_shape))
    acc = ref.matmul_accumulators(a, a_zp, b, b_zp)
    y_scale = _y_scale(acc * 0.02 * float(b_scale.mean()), rng)
    y_zp = np.uint8(rng.integers(0, 256))
    args = (a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp)
    names = ["a", "as", "az", "b", "bs", "bz", "ys", "yz"]
    consts = [False, True, True, b_const, True, True, True, True]
    expected = _run("QLinearMatMul", list(zip(names, args, consts, strict=True)), np.uint8)
    assert np.array_equal(ref.qlinear_matmul(*args, no_vnni=NO_VNNI), expected)


def test_qlinear_matmul_s8_and_ties():
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (2, 6, 10), dtype=np.int8)
    b = rng.integers(-128, 128, (10, 12), dtype=np.int8)
    for scales in [(0.5, 1.0, 1.0), (0.25, 0.5, 0.125), (0.013, 0.0071, 0.37)]:
        args = (a, np.float32(scales[0]), np.int8(3), b, np.float32(scales[1]), np.int8(0),
                np.float32(scales[2]), np.int8(-4))
        names = ["a", "as", "az", "b", "bs", "bz", "ys", "yz"]
        expected = _run("QLinearMatMul", [(nm, v, nm != "a") for nm, v in zip(
            names, args, strict=True)], np.int8)
        assert np.array_equal(ref.qlinear_matmul(*args), expected)


# ----------------------------------------------------------------------------------- QGemm

@pytest.mark.parametrize("trans_a,trans_b,per_column,c_shape,out,alpha", [
    (0, 0, False, None, "float", 1.0),
    (0, 1, True, "n", "float", 1.0),
    (0, 1, False, "mn", "u8", 1.0),
    (0, 0, True, "m1", "u8", 0.75),
    (1, 1, True, None, "u8", 1.0),
    (1, 0, False, "1", "float", 1.3),
    (0, 1, True, "mn", "s8", 1.0),
])
def test_qgemm_bit_exact(trans_a, trans_b, per_column, c_shape, out, alpha):
    rng = np.random.default_rng(trans_a * 8 + trans_b * 4 + per_column * 2 + len(out))
    m, k, n = 6, 19, 10
    signed = out == "s8"
    a = (rng.integers(-128, 128, (m, k), dtype=np.int8) if signed
         else rng.integers(0, 256, (m, k), dtype=np.uint8))
    a_zp = np.int8(-9) if signed else np.uint8(rng.integers(0, 256))
    a = a.T.copy() if trans_a else a
    b = rng.integers(W_LO, W_HI, (n, k) if trans_b else (k, n), dtype=np.int8)
    b_scale = _f32(rng.uniform(0.002, 0.02, n) if per_column else 0.01)
    b_zp = np.zeros(n, np.int8) if per_column else np.int8(0)
    c = None
    if c_shape is not None:
        shape = {"n": (n,), "mn": (m, n), "m1": (m, 1), "1": (1,)}[c_shape]
        c = rng.integers(-20000, 20000, shape).astype(np.int32)
    a_scale = np.float32(0.03)
    y_scale = y_zp = None
    if out != "float":
        y_scale = np.float32(rng.uniform(0.5, 1.5))
        y_zp = np.int8(5) if signed else np.uint8(rng.integers(0, 256))
    args = (a, a_scale, a_zp, b, b_scale, b_zp, c, y_scale, y_zp)
    names = ["a", "as", "az", "b", "bs", "bz", "c", "ys", "yz"]
    inputs = [(nm, v, nm != "a") for nm, v in zip(names, args, strict=True)]
    out_dtype = {"float": np.float32, "u8": np.uint8, "s8": np.int8}[out]
    expected = _run("QGemm", inputs, out_dtype, domain="com.microsoft", alpha=alpha,
                    transA=trans_a, transB=trans_b)
    got = ref.qgemm(*args, alpha=alpha, trans_a=trans_a, trans_b=trans_b, no_vnni=NO_VNNI)
    assert got.dtype == expected.dtype
    assert np.array_equal(got, expected)


# ------------------------------------------------------------------ Quantize / Dequantize

@pytest.mark.parametrize("dtype,axis", list(itertools.product([np.uint8, np.int8],
                                                              [None, 0, 1])))
def test_quantize_linear_bit_exact(dtype, axis):
    rng = np.random.default_rng(17)
    x = _f32(rng.normal(0, 3, (4, 5, 37)))
    x[0, 0, :8] = [np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0, np.nan, -2.5]
    nsc = 1 if axis is None else x.shape[axis]
    scale = _f32(rng.uniform(0.01, 0.1, nsc))
    scale[0] = 0.5  # x = 2.5, -2.5 land exactly on ties
    lo, hi = (0, 256) if dtype is np.uint8 else (-128, 128)
    zp = rng.integers(lo, hi, nsc).astype(dtype)
    x[0, 0, 8:12] = _f32([1.5, 0.5, -0.5, -1.5]) * scale[0]  # more ties
    if axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    attrs = {} if axis is None else {"axis": axis}
    expected = _run("QuantizeLinear", [("x", x, False), ("s", scale, True), ("z", zp, True)],
                    dtype, **attrs)
    assert np.array_equal(ref.quantize_linear(x, scale, zp, axis=axis), expected)


@pytest.mark.parametrize("dtype,axis", list(itertools.product([np.uint8, np.int8, np.int32],
                                                              [None, 1])))
def test_dequantize_linear_bit_exact(dtype, axis):
    rng = np.random.default_rng(19)
    info = np.iinfo(dtype)
    q = rng.integers(info.min, int(info.max) + 1, (3, 6, 21), dtype=dtype)
    nsc = 1 if axis is None else q.shape[axis]
    scale = _f32(rng.uniform(1e-4, 0.3, nsc))
    zp = (np.zeros(nsc, dtype) if dtype is np.int32
          else rng.integers(info.min, int(info.max) + 1, nsc).astype(dtype))
    if axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    attrs = {} if axis is None else {"axis": axis}
    expected = _run("DequantizeLinear", [("q", q, False), ("s", scale, True),
                                         ("z", zp, True)], np.float32, **attrs)
    assert np.array_equal(ref.dequantize_linear(q, scale, zp, axis=axis), expected)


# ------------------------------------------------------------------- AVX2 u8s8 emulation

def test_no_vnni_switch_on_op_references():
    rng = np.random.default_rng(37)
    a = np.full((3, 16), 255, np.uint8)
    b = np.full((16, 4), 127, np.int8)
    args = (a, np.float32(1.0), np.uint8(0), b, np.float32(1.0), np.int8(0),
            np.float32(4096.0), np.uint8(0))
    assert ref.qlinear_matmul(*args).tolist() == [[127] * 4] * 3  # 518160 / 4096 = 126.504
    assert ref.qlinear_matmul(*args, no_vnni=True).tolist() == [[64] * 4] * 3  # 8*32767/4096
    b7 = rng.integers(-64, 64, (16, 4), dtype=np.int8)
    assert np.array_equal(ref.qgemm(a, 0.5, 0, b7, 0.25, 0, no_vnni=True),
                          ref.qgemm(a, 0.5, 0, b7, 0.25, 0))
    bu8 = rng.integers(0, 256, (16, 4), dtype=np.uint8)  # u8 x u8 kernels never saturate
    assert np.array_equal(ref.matmul_accumulators(a, 0, bu8, 128, no_vnni=True),
                          ref.matmul_accumulators(a, 0, bu8, 128))


def test_no_vnni_matches_exact_with_7bit_weights():
    rng = np.random.default_rng(23)
    x = np.full((4, 64), 255, np.uint8)
    x[2:] = rng.integers(0, 256, (2, 64), dtype=np.uint8)
    w = rng.integers(-64, 64, (64, 9), dtype=np.int8)
    w[:, 0], w[:, 1] = 63, -64  # the extremes of the 7-bit range
    exact = ref.matmul_accumulators(x, 17, w, 0)
    assert np.array_equal(ref.emulate_u8s8_no_vnni(x, w, 17, 0), exact)
    report = ref.saturation_report(x, w, 17, 0)
    assert report.saturated == 0 and report.affected_outputs == 0
    assert report.pairs == 4 * 32 * 9
    # conv (K ordered like onnxruntime's im2col), odd channel count
    xc = rng.integers(0, 256, (1, 5, 6, 6), dtype=np.uint8)
    wc = rng.integers(-64, 64, (8, 5, 3, 3), dtype=np.int8)
    kw = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1)
    assert np.array_equal(ref.emulate_u8s8_no_vnni(xc, wc, 9, 0, **kw),
                          ref.conv_accumulators(xc, 9, wc, 0, **kw))
    assert ref.saturation_report(xc, wc, 9, 0, **kw).saturated == 0


def test_no_vnni_saturates_with_full_range_weights():
    x = np.full((2, 8), 255, np.uint8)
    w = np.full((8, 3), 127, np.int8)
    w[:, 1] = -128
    w[:, 2] = [127, -128] * 4  # pairs cancel: no saturation in this column
    exact = ref.matmul_accumulators(x, 0, w, 0)
    emulated = ref.emulate_u8s8_no_vnni(x, w)
    assert exact[0, 0] == 8 * 255 * 127 and emulated[0, 0] == 4 * 32767
    assert emulated[0, 1] == 4 * -32768
    assert emulated[0, 2] == exact[0, 2]
    report = ref.saturation_report(x, w)
    assert report.saturated == 2 * 2 * 4 and report.affected_outputs == 4
    assert report.max_abs_error == 8 * 255 * 128 - 4 * 32768
    assert 0 < report.fraction < 1
    # conv: 3x3 on a saturated input, 2 channels form one pair per kernel position
    xc = np.full((1, 2, 4, 4), 255, np.uint8)
    wc = np.full((4, 2, 3, 3), 127, np.int8)
    conv = ref.saturation_report(xc, wc, strides=[1, 1], group=1)
    assert conv.saturated == conv.pairs > 0
    # depthwise convs use a widening kernel: never saturate
    wd = np.full((2, 1, 3, 3), 127, np.int8)
    assert ref.saturation_report(xc, wd, group=2).saturated == 0


def test_saturating_inputs_match_this_cpu():
    """Inputs that saturate int16 pairs: onnxruntime's result includes the saturation on a CPU
    without VNNI and is exact on one with VNNI; the reference matches whichever this is."""
    rng = np.random.default_rng(31)
    a = rng.integers(200, 256, (7, 24), dtype=np.uint8)
    b = rng.choice(np.int8([-128, -127, 126, 127]), (24, 5))
    args = (a, np.float32(0.02), np.uint8(3), b, np.float32(0.004), np.int8(0),
            np.float32(2.0), np.uint8(128))
    names = ["a", "as", "az", "b", "bs", "bz", "ys", "yz"]
    expected = _run("QLinearMatMul", [(nm, v, nm != "a") for nm, v in zip(
        names, args, strict=True)], np.uint8)
    assert ref.saturation_report(a, b, 3, 0).saturated > 0
    assert not np.array_equal(ref.qlinear_matmul(*args, no_vnni=True),
                              ref.qlinear_matmul(*args, no_vnni=False))
    assert np.array_equal(ref.qlinear_matmul(*args, no_vnni=NO_VNNI), expected)
    for shape in (_CONV_SHAPES[0], _CONV_SHAPES[2], _CONV_SHAPES[6]):
        cargs, kw = _conv_case(shape, True, "rand", "s8", True, seed=5)
        w = rng.choice(np.int8([-128, -127, 126, 127]), cargs[3].shape)
        cargs = (*cargs[:3], w, *cargs[4:])
        assert np.array_equal(ref.qlinear_conv(*cargs, **kw, no_vnni=NO_VNNI),
                              _ort_conv(cargs, kw))


def test_requantize_and_output_scale_order():
    """float32, left to right: x_scale * w_scale / y_scale, then float32(acc) * m."""
    xs, ws, ys = np.float32(0.1), _f32([0.3, 0.7]), np.float32(0.3)
    m = ref.output_scale(xs, ws, ys)
    assert m.dtype == np.float32
    assert np.array_equal(m, (xs * ws) / ys)
    acc = np.array([[2**24 + 1, -7], [5, 3]], np.int32)  # 2**24 + 1 is not a float32
    got = ref.requantize(acc, _f32(0.5), np.int8(0), np.int8)
    assert got.tolist() == [[127, -4], [2, 2]]
    assert ref.requantize(acc, _f32([1.0, 1.0]), np.uint8(10),
                          bias=np.int32([1, 2])).tolist() == [[255, 5], [16, 15]]
    with pytest.raises(OverflowError):
        ref.matmul_accumulators(np.full((1, 70000), 255, np.uint8), 0,
                                np.full((70000, 1), 127, np.int8), 0)


# ------------------------------------------------- float32 operation order (crafted cases)

_F = np.float32


def _order_cases(ours, alts, exact, draw, seed: int, need: int = 2):
    """Scale sets and accumulators whose requantized value depends on the float32 order.

    ``ours(*scales)`` is onnxruntime's float32 multiplier; a case is kept when some
    accumulator in [0, 32640] rounds differently under a float64 product ``acc * m``, under one
    of the ``alts`` float32 orders, or under the exactly rounded multiplier ``exact``. Returns
    the cases and how often each alternative was told apart.
    """
    rng = np.random.default_rng(seed)
    acc = np.arange(32641)
    accf = acc.astype(_F)
    cover, cases = np.zeros(len(alts) + 2, int), []
    for _ in range(3000):
        scales = draw(rng)
        m = ours(*scales)
        y = np.rint(accf * m)
        others = [acc * np.float64(m)] + [accf * _F(f(*scales)) for f in (*alts, exact)]
        hits = [np.flatnonzero((y <= 254) & (np.rint(v) != y)) for v in others]
        if any(h.size for h in hits):
            cases.append((scales, np.unique(np.concatenate(hits))))
            cover += [h.size > 0 for h in hits]
        if (cover >= need).all():
            break
    return cases, cover


def _draw_conv_scales(rng):
    xs, ws = _F(rng.uniform(0.001, 0.1)), _F(rng.uniform(0.0005, 0.05))
    return xs, ws, _F(np.float64(xs) * ws / rng.uniform(0.008, 0.012))


_CONV_ORDER = dict(
    ours=lambda x, w, y: _F(_F(x * w) / y),
    alts=[lambda x, w, y: _F(x * _F(w / y)), lambda x, w, y: _F(_F(x / y) * w)],
    exact=lambda x, w, y: np.float64(x) * np.float64(w) / np.float64(y),
    draw=_draw_conv_scales,
)


def _pairs_for(accs: np.ndarray, rng) -> np.ndarray:
    """u8 pairs (a0, a1) with a0 + 127 * a1 == acc, padded with random accumulators."""
    accs = np.concatenate([accs, rng.integers(0, 32641, 16)])
    a1 = np.minimum(accs // 127, 255)
    return np.stack([accs - 127 * a1, a1], axis=-1).astype(np.uint8)


def test_float32_order_qlinear_matmul_and_conv():
    cases, cover = _order_cases(**_CONV_ORDER, seed=1)
    assert (cover >= 2).all()
    rng = np.random.default_rng(2)
    for (xs, ws, ys), accs in cases:
        a = _pairs_for(accs, rng)  # (M, 2)
        b = np.array([[1], [127]], np.int8)
        args = (a, xs, np.uint8(0), b, ws, np.int8(0), ys, np.uint8(0))
        names = ["a", "as", "az", "b", "bs", "bz", "ys", "yz"]
        expected = _run("QLinearMatMul", [(nm, v, nm != "a") for nm, v in zip(
            names, args, strict=True)], np.uint8)
        assert np.array_equal(ref.qlinear_matmul(*args), expected)
        # 1x1 conv (gemm path), 1x1 conv with C=4, M=16 (symmetric conv kernel), and a
        # (1, 2) depthwise conv over 16 channels (symmetric depthwise kernel)
        x_g = a.T[None, :, None, :]
        x_s = np.concatenate([x_g, np.zeros_like(x_g)], axis=1)
        x_d = np.repeat(a.reshape(1, 1, 1, -1), 16, axis=1)
        for x, w, kw in [
            (x_g, np.array([1, 127], np.int8).reshape(1, 2, 1, 1), {}),
            (x_s, np.tile(np.int8([1, 127, 0, 0]).reshape(1, 4, 1, 1), (16, 1, 1, 1)), {}),
            (x_d, np.tile(np.int8([1, 127]).reshape(1, 1, 1, 2), (16, 1, 1, 1)),
             dict(strides=[1, 2], group=16)),
        ]:
            cargs = (x, xs, np.uint8(0), w, ws, np.int8(0), ys, np.uint8(0), None)
            got = ref.qlinear_conv(*cargs, **kw)
            assert np.array_equal(got, _ort_conv(cargs, kw))
            assert np.array_equal(got[0, 0].ravel(), expected.ravel())


def _draw_gemm_scales(rng):
    al, as_, bs = _F(rng.uniform(0.5, 2.0)), _F(rng.uniform(0.001, 0.1)), _F(
        rng.uniform(0.0005, 0.05))
    return al, as_, bs, _F(np.float64(al) * as_ * bs / rng.uniform(0.008, 0.012))


def test_float32_order_qgemm():
    cases, cover = _order_cases(
        ours=lambda al, a, b, y: _F(_F(_F(al * a) * b) / y),
        alts=[lambda al, a, b, y: _F(al * _F(_F(a * b) / y)),
              lambda al, a, b, y: _F(_F(_F(a * b) / y) * al)],
        exact=lambda al, a, b, y: np.float64(al) * a * b / y,
        draw=_draw_gemm_scales, seed=3)
    assert (cover >= 2).all()
    rng = np.random.default_rng(4)
    for (alpha, a_scale, b_scale, y_scale), accs in cases:
        a = _pairs_for(accs, rng)
        b = np.array([[1, 127], [127, 1]], np.int8)  # two columns, two accumulators
        for ys, yz, out in [(y_scale, np.uint8(0), np.uint8), (None, None, np.float32)]:
            args = (a, a_scale, np.uint8(0), b, b_scale, np.int8(0), None, ys, yz)
            names = ["a", "as", "az", "b", "bs", "bz", "c", "ys", "yz"]
            inputs = [(nm, v, nm != "a") for nm, v in zip(names, args, strict=True)]
            expected = _run("QGemm", inputs, out, domain="com.microsoft", alpha=float(alpha))
            assert np.array_equal(ref.qgemm(*args, alpha=float(alpha)), expected)


def test_quantize_linear_divides_not_multiplies_by_reciprocal():
    """Near-ties where ``x / s`` and ``x * (1 / s)`` round to different integers."""
    rng = np.random.default_rng(29)
    found = 0
    for scale in _F(rng.uniform(0.001, 0.2, 40)):
        ties = _F((np.arange(-130, 130) + 0.5) * np.float64(scale))
        x = np.concatenate([np.nextafter(ties, _F(np.inf)), ties,
                            np.nextafter(ties, _F(-np.inf))]).astype(_F)
        div = np.rint(x / scale)
        differs = div != np.rint(x * (_F(1) / scale))
        if not differs.any():
            continue
        found += int(differs.sum())
        for dtype, zp in [(np.uint8, np.uint8(128)), (np.int8, np.int8(0))]:
            expected = _run("QuantizeLinear", [("x", x, False), ("s", scale, True),
                                               ("z", zp, True)], dtype)
            assert np.array_equal(ref.quantize_linear(x, scale, zp), expected)
    assert found >= 5
