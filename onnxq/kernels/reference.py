"""Bit-exact numpy references for onnxruntime's CPU (MLAS) quantized kernels.

These functions reproduce, bit for bit, what onnxruntime's CPU execution provider computes for
QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul and com.microsoft QGemm, so that
onnxq can check onnxruntime and explain any difference from the float model.

onnxruntime's arithmetic, as modelled here (see ``onnxruntime/core/mlas``):

* QuantizeLinear: ``x / scale`` in float32 (a true division, not a multiply by the reciprocal),
  clamped to ``[qmin - zp, qmax - zp]``, rounded half to even (``cvtps2dq``), plus ``zp``.
  NaN becomes ``qmin`` (``maxps`` returns its second operand when the first is NaN).
* DequantizeLinear: ``float32(int32(q) - zp) * scale``.
* Integer ops: exact int32 accumulation of ``(x - x_zp) * (w - w_zp)``; the int32 bias is added
  to the accumulator with int32 wrap-around; then ``requantize``: ``float32(acc) * multiplier``
  (one float32 multiply, no FMA), clamp, round half to even, add the output zero point.
* The multiplier is computed in float32 as ``x_scale * w_scale[c] / y_scale`` (QLinearConv,
  QLinearMatMul) or ``alpha * a_scale * b_scale[c] / y_scale`` (QGemm), left to right.

``emulate_u8s8_no_vnni`` models the AVX2 u8 x s8 kernels used on x86 CPUs without VNNI, where
``vpmaddubsw`` adds adjacent u8*s8 products into int16 with signed saturation; with 7-bit
weights (``reduce_range``) this never saturates, with full-range s8 weights it can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from onnxq.kernels.isa import exact_depthwise

__all__ = [
    "quantize_linear",
    "dequantize_linear",
    "output_scale",
    "requantize",
    "conv_accumulators",
    "matmul_accumulators",
    "qlinear_conv",
    "qlinear_matmul",
    "qgemm",
    "emulate_u8s8_no_vnni",
    "SaturationReport",
    "saturation_report",
]

_INT32 = np.iinfo(np.int32)
_INT16 = np.iinfo(np.int16)


def _qdtype(zero_point: object, default: np.dtype | type) -> np.dtype:
    """The quantized dtype given by a zero point array (uint8/int8), else ``default``."""
    dt = getattr(zero_point, "dtype", None)
    if dt is not None and np.dtype(dt) in (np.dtype(np.uint8), np.dtype(np.int8)):
        return np.dtype(dt)
    return np.dtype(default)


def _param(value: object, ndim: int, axis: int | None, dtype: type) -> np.ndarray:
    """A scale/zero point shaped to broadcast along ``axis`` of an ``ndim``-d tensor."""
    p: np.ndarray = np.asarray(0 if value is None else value, dtype=dtype)
    if axis is None or p.size == 1 and p.ndim == 0:
        if p.size != 1:
            raise ValueError(f"per-axis parameter of shape {p.shape} needs an axis")
        return p.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return p.reshape(shape)


def _to_int32(acc: np.ndarray) -> np.ndarray:
    """Exact accumulators as int32; onnxruntime's result is undefined past int32."""
    acc = np.asarray(acc, dtype=np.int64)
    if acc.size and (acc.min() < _INT32.min or acc.max() > _INT32.max):
        raise OverflowError("accumulator exceeds int32: onnxruntime would wrap or saturate")
    return acc.astype(np.int32)


def _add_bias(acc: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """int32 add with two's-complement wrap-around, as ``vpaddd`` does."""
    if bias is None:
        return acc
    total = acc.astype(np.int64) + np.asarray(bias, dtype=np.int64)
    return total.astype(np.int32)  # numpy's int64 -> int32 cast wraps


def _round_saturate(v: np.ndarray, zero_point: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """MLAS's tail: clamp to [qmin - zp, qmax - zp] in float32, round half even, add zp."""
    info = np.iinfo(dtype)
    zp = np.asarray(zero_point, dtype=np.int64)
    lo = (info.min - zp).astype(np.float32)
    hi = (info.max - zp).astype(np.float32)
    v = np.where(np.isnan(v), lo, v)
    v = np.minimum(np.maximum(v, lo), hi)
    return (np.rint(v).astype(np.int64) + zp).astype(dtype)


def quantize_linear(x: np.ndarray, scale: np.ndarray | float, zero_point: object = None,
                    axis: int | None = None, dtype: type | None = None) -> np.ndarray:
    """ONNX QuantizeLinear as onnxruntime computes it (u8/s8, per tensor or per ``axis``).

    ``dtype`` defaults to the zero point's dtype when it is a uint8/int8 array, else uint8.
    """
    x = np.asarray(x, dtype=np.float32)
    out = _qdtype(zero_point, np.uint8) if dtype is None else np.dtype(dtype)
    s = _param(scale, x.ndim, axis, np.float32)
    zp = _param(zero_point, x.ndim, axis, np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (x / s).astype(np.float32)
    return _round_saturate(v, zp, out)


def dequantize_linear(q: np.ndarray, scale: np.ndarray | float, zero_point: object = None,
                      axis: int | None = None) -> np.ndarray:
    """ONNX DequantizeLinear: ``float32(int32(q) - zp) * scale`` (u8, s8 or int32 input)."""
    q = np.asarray(q)
    s = _param(scale, q.ndim, axis, np.float32)
    zp = _param(zero_point, q.ndim, axis, np.int64)
    diff = (q.astype(np.int64) - zp).astype(np.int32)
    return (diff.astype(np.float32) * s).astype(np.float32)


def output_scale(in_scale: object, w_scale: object, y_scale: object = None,
                 alpha: float = 1.0) -> np.ndarray:
    """The float32 requantization multiplier ``alpha * in_scale * w_scale / y_scale``.

    Evaluated left to right in float32 like onnxruntime (``alpha * in_scale`` is exact for
    ``alpha == 1``, so this is also QLinearConv's ``x_scale * w_scale[c] / y_scale``).
    """
    m = np.float32(alpha) * np.asarray(in_scale, dtype=np.float32).reshape(())
    m = (m * np.asarray(w_scale, dtype=np.float32)).astype(np.float32)
    if y_scale is not None:
        m = (m / np.asarray(y_scale, dtype=np.float32).reshape(())).astype(np.float32)
    return m


def requantize(acc_int32: np.ndarray, multiplier: np.ndarray | float, y_zp: object,
               dtype: np.dtype | type | None = None,
               bias: np.ndarray | None = None) -> np.ndarray:
    """MLAS's requantization of int32 accumulators (``MlasRequantizeOutput``).

    ``bias`` (int32, broadcast) is added with wrap-around, then ``float32(acc) * multiplier``,
    clamp, round half to even, ``+ y_zp``. ``multiplier`` broadcasts against ``acc_int32``.
    """
    acc = _add_bias(np.asarray(acc_int32).astype(np.int32), bias)
    out = _qdtype(y_zp, np.uint8) if dtype is None else np.dtype(dtype)
    v = (acc.astype(np.float32) * np.asarray(multiplier, dtype=np.float32)).astype(np.float32)
    return _round_saturate(v, np.asarray(0 if y_zp is None else y_zp, dtype=np.int64), out)


def _conv_operands(x: np.ndarray, x_zp: int, w: np.ndarray, strides: Sequence[int] | None,
                   pads: Sequence[int] | None, dilations: Sequence[int] | None,
                   group: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """im2col in onnxruntime's NHWC order: cols (N, G, P, K), filters (G, K, Mg), out shape.

    K runs over (kernel position, input channel) with channels fastest, like MLAS. Padding
    holds the raw zero point ``x_zp``, as onnxruntime pads.
    """
    rank = w.ndim - 2
    if rank not in (1, 2) or x.ndim != w.ndim:
        raise ValueError("qlinear_conv supports 1-D and 2-D NCHW convolutions")
    strides = tuple(strides or (1,) * rank)
    dilations = tuple(dilations or (1,) * rank)
    pads = tuple(pads or (0,) * (2 * rank))
    if rank == 1:  # treat as 2-D with a height of 1
        x, w = x[:, :, None, :], w[:, :, None, :]
        strides, dilations, pads = (1, *strides), (1, *dilations), (0, pads[0], 0, pads[1])
    n, c, _, _ = x.shape
    m, cg, kh, kw = w.shape
    if c != cg * group or m % group:
        raise ValueError(f"channels {c} / filters {w.shape} do not match group={group}")
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])),
                constant_values=x_zp)
    span = (dilations[0] * (kh - 1) + 1, dilations[1] * (kw - 1) + 1)
    oh = (xp.shape[2] - span[0]) // strides[0] + 1
    ow = (xp.shape[3] - span[1]) // strides[1] + 1
    win = sliding_window_view(xp, span, axis=(2, 3))
    win = win[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]][:, :, :oh, :ow]
    win = win.reshape(n, group, cg, oh, ow, kh, kw).transpose(0, 1, 3, 4, 5, 6, 2)
    cols = win.reshape(n, group, oh * ow, kh * kw * cg)
    wmat = w.reshape(group, m // group, cg, kh, kw).transpose(0, 3, 4, 2, 1)
    out_shape = (oh, ow) if rank == 2 else (ow,)
    return cols, wmat.reshape(group, kh * kw * cg, m // group), out_shape


def _gemm_exact(a: np.ndarray, a_zp: object, b: np.ndarray, b_zp: object) -> np.ndarray:
    """Exact ``(a - a_zp) @ (b - b_zp)`` as int64 (float64 BLAS is exact below 2**53)."""
    af = a.astype(np.float64) - np.asarray(a_zp, dtype=np.float64)
    bf = b.astype(np.float64) - np.asarray(b_zp, dtype=np.float64)
    return np.matmul(af, bf).astype(np.int64)


def _gemm_u8s8_avx2(a: np.ndarray, a_zp: object, b: np.ndarray,
                    b_zp: object) -> tuple[np.ndarray, int, int]:
    """AVX2 u8s8 GEMM: raw pairs (k, k+1) saturate in int16, zero points fixed up exactly.

    Returns (accumulators as int64, saturated pair count, pair count).
    """
    if a.dtype != np.uint8 or b.dtype != np.int8:
        raise TypeError("the vpmaddubsw path multiplies uint8 activations by int8 weights")
    k = a.shape[-1]
    if k % 2:
        a = np.concatenate([a, np.zeros((*a.shape[:-1], 1), a.dtype)], axis=-1)
        b = np.concatenate([b, np.zeros((*b.shape[:-2], 1, b.shape[-1]), b.dtype)], axis=-2)
    ai, bi = a.astype(np.int32), b.astype(np.int32)
    pairs = (ai[..., 0::2, None] * bi[..., 0::2, :][..., None, :, :]
             + ai[..., 1::2, None] * bi[..., 1::2, :][..., None, :, :])
    clipped = np.clip(pairs, _INT16.min, _INT16.max)
    saturated = int(np.count_nonzero(clipped != pairs))
    raw = clipped.sum(axis=-2, dtype=np.int64)
    azp = np.asarray(a_zp, dtype=np.int64)
    bzp = np.asarray(b_zp, dtype=np.int64)
    row = a.astype(np.int64).sum(axis=-1, keepdims=True)
    col = b.astype(np.int64).sum(axis=-2, keepdims=True)
    acc = raw - azp * col - bzp * row + k * azp * bzp
    return acc, saturated, int(pairs.size)


def _conv_gemm(x: np.ndarray, x_zp: object, w: np.ndarray, w_zp: object, strides, pads,
               dilations, group: int, no_vnni: bool) -> tuple[np.ndarray, int, int]:
    """Convolution accumulators (N, M, *out) as int64, with saturation counts."""
    x, w = np.asarray(x), np.asarray(w)
    xzp = int(np.asarray(0 if x_zp is None else x_zp).reshape(()))
    cols, wmat, out_shape = _conv_operands(x, xzp, w, strides, pads, dilations, group)
    g, _, mg = wmat.shape
    wzp = np.asarray(0 if w_zp is None else w_zp, dtype=np.int64)
    wzp = wzp.reshape(()) if wzp.size == 1 else wzp.reshape(g, 1, mg)
    depthwise = exact_depthwise(w.shape, g)  # MLAS widens to int16 here: never saturates
    if no_vnni and not depthwise:
        acc, saturated, pairs = _gemm_u8s8_avx2(cols, xzp, wmat, wzp)
    else:
        acc, saturated, pairs = _gemm_exact(cols, xzp, wmat, wzp), 0, 0
    n = x.shape[0]
    acc = acc.transpose(0, 1, 3, 2).reshape(n, g * mg, *out_shape)
    return acc, saturated, pairs


def _u8s8(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == np.uint8 and b.dtype == np.int8


def conv_accumulators(x: np.ndarray, x_zp: object, w: np.ndarray, w_zp: object = 0, *,
                      strides: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                      dilations: Sequence[int] | None = None, group: int = 1,
                      no_vnni: bool = False) -> np.ndarray:
    """int32 accumulators ``sum((x - x_zp) * (w - w_zp))`` of an NCHW (or NCW) convolution.

    ``pads`` uses ONNX order ``[begin..., end...]``; ``w_zp`` may be per output channel.
    ``no_vnni`` applies the int16 saturation of ``emulate_u8s8_no_vnni`` to u8 x s8 inputs.
    """
    x, w = np.asarray(x), np.asarray(w)
    emulate = no_vnni and _u8s8(x, w)
    acc, _, _ = _conv_gemm(x, x_zp, w, w_zp, strides, pads, dilations, group, emulate)
    return _to_int32(acc)


def matmul_accumulators(a: np.ndarray, a_zp: object, b: np.ndarray, b_zp: object = 0, *,
                        no_vnni: bool = False) -> np.ndarray:
    """int32 accumulators ``(a - a_zp) @ (b - b_zp)`` (numpy matmul batching).

    ``b_zp`` is a scalar, per column ``(N,)`` or per batch and column ``(..., 1, N)``.
    ``no_vnni`` applies the int16 saturation of ``emulate_u8s8_no_vnni`` to u8 x s8 inputs.
    """
    a, b = np.asarray(a), np.asarray(b)
    if no_vnni and _u8s8(a, b):
        return _to_int32(_gemm_u8s8_avx2(a, a_zp, b, b_zp)[0])
    return _to_int32(_gemm_exact(a, a_zp, b, b_zp))


def qlinear_conv(x: np.ndarray, x_scale: object, x_zp: object, w: np.ndarray, w_scale: object,
                 w_zp: object, y_scale: object, y_zp: object, bias: np.ndarray | None = None,
                 *, strides: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                 dilations: Sequence[int] | None = None, group: int = 1,
                 no_vnni: bool = False) -> np.ndarray:
    """ONNX QLinearConv (NCHW or NCW, groups, per-channel ``w_scale``/``w_zp`` on axis 0).

    ``no_vnni=True`` models an x86 CPU without VNNI (int16 saturation for u8 x s8).
    """
    acc = conv_accumulators(x, x_zp, w, w_zp, strides=strides, pads=pads,
                            dilations=dilations, group=group, no_vnni=no_vnni)
    chan = (1, -1) + (1,) * (acc.ndim - 2)
    mult = output_scale(x_scale, w_scale, y_scale)
    mult = mult.reshape(chan) if mult.size > 1 else mult.reshape(())
    b = None if bias is None else np.asarray(bias, dtype=np.int32).reshape(chan)
    return requantize(acc, mult, y_zp, _qdtype(y_zp, np.asarray(x).dtype), bias=b)


def qlinear_matmul(a: np.ndarray, a_scale: object, a_zp: object, b: np.ndarray,
                   b_scale: object, b_zp: object, y_scale: object, y_zp: object, *,
                   no_vnni: bool = False) -> np.ndarray:
    """ONNX QLinearMatMul (N-D batched; ``b_scale``/``b_zp`` per tensor or per column).

    ``b_scale``/``b_zp`` per column have shape ``(..., 1, N)`` (or ``(N,)``).
    """
    acc = matmul_accumulators(a, a_zp, b, b_zp, no_vnni=no_vnni)
    mult = output_scale(a_scale, b_scale, y_scale)
    return requantize(acc, mult, y_zp, _qdtype(y_zp, np.asarray(a).dtype))


def qgemm(a: np.ndarray, a_scale: object, a_zp: object, b: np.ndarray, b_scale: object,
          b_zp: object, c: np.ndarray | None = None, y_scale: object = None,
          y_zp: object = None, *, alpha: float = 1.0, trans_a: int = 0,
          trans_b: int = 0, no_vnni: bool = False) -> np.ndarray:
    """com.microsoft QGemm: ``alpha * A' @ B'`` plus an int32 ``c`` added to the accumulator.

    Without ``y_zp`` the output is float32 ``float32(acc) * multiplier`` (as in onnxruntime,
    the multiplier includes ``1 / y_scale`` when only ``y_scale`` is given); otherwise it is
    requantized to ``y_zp``'s type. ``b_scale``/``b_zp`` are scalars or per column ``(N,)``.
    """
    a2 = np.asarray(a).T if trans_a else np.asarray(a)
    b2 = np.asarray(b).T if trans_b else np.asarray(b)
    acc = _add_bias(matmul_accumulators(a2, a_zp, b2, b_zp, no_vnni=no_vnni), c)
    mult = output_scale(a_scale, b_scale, y_scale, alpha)
    if y_zp is None:
        return (acc.astype(np.float32) * mult).astype(np.float32)
    return requantize(acc, mult, y_zp, _qdtype(y_zp, a2.dtype))


@dataclass(frozen=True, slots=True)
class SaturationReport:
    """How the AVX2 (no VNNI) u8 x s8 path would differ from the exact int32 result."""

    pairs: int  # int16 pair sums (vpmaddubsw lanes) computed
    saturated: int  # of those, how many saturated
    outputs: int  # accumulators computed
    affected_outputs: int  # accumulators that differ from the exact result
    max_abs_error: int  # largest |emulated - exact| accumulator difference

    @property
    def fraction(self) -> float:
        return self.saturated / self.pairs if self.pairs else 0.0


def _emulate(x_q: np.ndarray, w_q: np.ndarray, x_zp: object, w_zp: object,
             conv: dict) -> tuple[np.ndarray, np.ndarray, int, int]:
    x_q, w_q = np.asarray(x_q), np.asarray(w_q)
    if w_q.ndim >= 3:
        args = (conv.get("strides"), conv.get("pads"), conv.get("dilations"),
                conv.get("group", 1))
        acc, sat, pairs = _conv_gemm(x_q, x_zp, w_q, w_zp, *args, True)
        exact, _, _ = _conv_gemm(x_q, x_zp, w_q, w_zp, *args, False)
    else:
        if conv:
            raise TypeError(f"convolution options {sorted(conv)} need a conv weight")
        acc, sat, pairs = _gemm_u8s8_avx2(x_q, x_zp, w_q, w_zp)
        exact = _gemm_exact(x_q, x_zp, w_q, w_zp)
    return acc, exact, sat, pairs


def emulate_u8s8_no_vnni(x_q: np.ndarray, w_q: np.ndarray, x_zp: object = 0,
                         w_zp: object = 0, **conv: object) -> np.ndarray:
    """int32 accumulators as the AVX2 u8 x s8 kernels (no VNNI) compute them.

    ``vpmaddubsw`` adds the products of adjacent K pairs ``(2j, 2j+1)`` of raw u8 activations
    and s8 weights into int16 with signed saturation; ``vpmaddwd`` with ones then widens to
    int32. Zero points are corrected exactly afterwards, as MLAS does. A 2-D ``w_q`` (K, N) is
    a matmul with ``x_q`` (..., M, K); a 3-D/4-D ``w_q`` is a conv taking ``strides``,
    ``pads``, ``dilations`` and ``group`` keywords (K ordered like onnxruntime's im2col;
    depthwise convs use a widening kernel that cannot saturate).
    """
    acc, _, _, _ = _emulate(x_q, w_q, x_zp, w_zp, conv)
    return _to_int32(acc)


def saturation_report(x_q: np.ndarray, w_q: np.ndarray, x_zp: object = 0, w_zp: object = 0,
                      **conv: object) -> SaturationReport:
    """Count the int16 saturations a non-VNNI x86 CPU would hit (see ``emulate_u8s8_no_vnni``).

    With 7-bit weights in [-64, 63] a pair is at most 2 * 255 * 64 = 32640 in magnitude,
    so nothing saturates; full-range s8 weights can reach 2 * 255 * 127 = 64770.
    """
    acc, exact, saturated, pairs = _emulate(x_q, w_q, x_zp, w_zp, conv)
    diff = np.abs(acc - exact)
    return SaturationReport(pairs=pairs, saturated=saturated, outputs=int(acc.size),
                            affected_outputs=int(np.count_nonzero(diff)),
                            max_abs_error=int(diff.max()) if diff.size else 0)
