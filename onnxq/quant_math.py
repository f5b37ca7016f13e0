"""Pure numpy quantization arithmetic: parameters from ranges, quantize and dequantize.

Rounding is round-half-to-even (as ONNX QuantizeLinear specifies) and results saturate.
"""

from __future__ import annotations

import numpy as np

from onnxq.qtypes import QParams, QType, TensorRange

__all__ = [
    "MIN_SCALE",
    "activation_params",
    "weight_params",
    "half_grid_up",
    "bias_params",
    "quantize",
    "dequantize",
    "quantize_bias",
]

#: The smallest scale onnxq writes: a range narrower than this (e.g. an all-zero tensor) is
#: widened so the scale stays a normal float32 and dequantization stays exact for zero.
MIN_SCALE = 2.0**-24


def activation_params(rng: TensorRange, qtype: QType, *, symmetric: bool = False) -> QParams:
    """Per-tensor parameters for an activation with real range ``rng``.

    The range is widened to contain 0 so that zero is exactly representable (padding, Relu).
    Asymmetric: ``scale = (hi - lo) / (qmax - qmin)``, zero point rounds ``qmin - lo / scale``.
    Symmetric: zero point is the type's midpoint (0 for s8, 128 for u8).
    """
    lo, hi = min(float(rng.lo), 0.0), max(float(rng.hi), 0.0)
    qmin, qmax = qtype.qmin, qtype.qmax
    if symmetric:
        bound = max(abs(lo), abs(hi))
        half = (qmax - qmin) / 2.0
        scale = max(bound / half, MIN_SCALE)
        zp = 0 if qtype is QType.S8 else 128
    else:
        scale = max((hi - lo) / (qmax - qmin), MIN_SCALE)
        zp = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return QParams(
        scale=np.asarray(scale, dtype=np.float32),
        zero_point=np.asarray(zp, dtype=qtype.numpy),
        qtype=qtype,
    )


def weight_params(
    weight: np.ndarray, qtype: QType, *, axis: int | None, reduce_range: bool = False
) -> QParams:
    """Symmetric parameters for a constant weight, per tensor or per channel along ``axis``.

    s8 weights use the restricted range [-127, 127] (so that -x is representable); with
    ``reduce_range`` they use 7 bits ([-63, 63]) to avoid the 16-bit saturation of non-VNNI x86.
    """
    w = np.asarray(weight, dtype=np.float32)
    if axis is not None:
        axis = axis % w.ndim
    absmax = _absmax(w, axis)
    if qtype is QType.S8:
        levels = 63.0 if reduce_range else 127.0
        zp_value = 0
    else:  # u8 weights: symmetric around 128
        levels = 63.5 if reduce_range else 127.5
        zp_value = 128
    scale = np.maximum(absmax.astype(np.float64) / levels, MIN_SCALE).astype(np.float32)
    if axis is not None:
        scale = half_grid_up(scale)
    zp = np.full(scale.shape, zp_value, dtype=qtype.numpy)
    return QParams(scale=scale, zero_point=zp, qtype=qtype, axis=axis)


def half_grid_up(scale: np.ndarray) -> np.ndarray:
    """Scales moved up (by less than 2⁻¹⁰ relative, so no weight clips) to the nearest float16
    number, where they are normal float16 numbers; the others unchanged. A per-channel scale vector on
    that grid is stored as float16 in the output, exactly (``passes/compact.py``)."""
    scale = np.asarray(scale, np.float32)
    with np.errstate(over="ignore"):
        half = scale.astype(np.float16)
    below = half.astype(np.float32) < scale
    half[below] = np.nextafter(half[below], np.float16(np.inf))
    up = half.astype(np.float32)
    fits = (scale >= np.finfo(np.float16).tiny) & np.isfinite(up)
    return np.where(fits, up, scale).astype(np.float32)


def _absmax(w: np.ndarray, axis: int | None) -> np.ndarray:
    """max |w| over everything (axis None) or over all axes but ``axis``, in blocks along the
    first axis (no full-size temporary)."""
    if not w.size:
        return np.asarray(0.0, np.float32) if axis is None else np.zeros(w.shape[axis],
                                                                          np.float32)
    if w.ndim == 0:
        return np.abs(w)
    rows = max(1, _BLOCK // max(1, w.size // w.shape[0]))
    parts = []
    for start in range(0, w.shape[0], rows):
        block = np.abs(w[start:start + rows])
        if axis is None:
            parts.append(np.max(block))
        else:
            other = tuple(i for i in range(w.ndim) if i != axis)
            parts.append(np.max(block, axis=other) if other else block)
    if axis is None:
        return np.asarray(max(parts), dtype=np.float32)
    if axis == 0:
        return np.concatenate(parts).astype(np.float32)
    return np.max(np.stack(parts), axis=0).astype(np.float32)


def bias_params(input_scale: np.ndarray | np.floating, weight: QParams) -> QParams:
    """int32 bias parameters: scale = input scale × weight scale, zero point 0."""
    scale = (np.float32(input_scale) * weight.scale.astype(np.float32)).astype(np.float32)
    scale = np.maximum(scale, np.float32(MIN_SCALE * MIN_SCALE)).astype(np.float32)
    zp = np.zeros(scale.shape, dtype=np.int32)
    return QParams(scale=scale, zero_point=zp, qtype=QType.S32, axis=0 if scale.ndim else None)


def _broadcast(params: QParams, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale = params.scale.astype(np.float32)
    zp = params.zero_point.astype(np.int64)
    if params.axis is not None and scale.ndim == 1:
        shape = [1] * ndim
        shape[params.axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return scale, zp


_BLOCK = 1 << 22  # elements per block: temporaries stay ~16 MB whatever the tensor's size


def quantize(x: np.ndarray, params: QParams) -> np.ndarray:
    """QuantizeLinear: ``saturate(round_half_even(x / scale) + zero_point)``.

    Computed in blocks along the first axis, so a 1 GB weight needs a few MB of temporaries,
    not several copies of itself (8-bit types round and clip in float32, which is exact: a
    rounded value beyond 2**24 is clipped anyway)."""
    x = np.asarray(x, dtype=np.float32)
    scale, zp = _broadcast(params, x.ndim)
    wide = np.dtype(params.qtype.numpy).itemsize > 2
    out = np.empty(x.shape, dtype=params.qtype.numpy)
    if x.ndim == 0 or x.size <= _BLOCK:
        out[...] = _quantize_block(x, scale, zp, params, wide)
        return out
    rows = max(1, _BLOCK // max(1, x.size // x.shape[0]))
    for start in range(0, x.shape[0], rows):
        block = slice(start, start + rows)
        s = scale[block] if scale.ndim and scale.shape[0] == x.shape[0] > 1 else scale
        z = zp[block] if zp.ndim and zp.shape[0] == x.shape[0] > 1 else zp
        out[block] = _quantize_block(x[block], s, z, params, wide)
    return out


def _quantize_block(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, params: QParams,
                    wide: bool) -> np.ndarray:
    q = np.rint(x / scale)
    q = q.astype(np.float64) + zp if wide else q + zp.astype(np.float32)
    return np.clip(q, params.qtype.qmin, params.qtype.qmax)


def dequantize(q: np.ndarray, params: QParams) -> np.ndarray:
    """DequantizeLinear: ``(q - zero_point) * scale``."""
    q = np.asarray(q)
    scale, zp = _broadcast(params, q.ndim)
    return ((q.astype(np.int64) - zp).astype(np.float32) * scale).astype(np.float32)


def quantize_bias(bias: np.ndarray, params: QParams) -> tuple[np.ndarray, int]:
    """Quantize a float bias to int32; returns the values and how many saturated."""
    b = np.asarray(bias, dtype=np.float64)
    q = np.rint(b / params.scale.astype(np.float64))
    info = np.iinfo(np.int32)
    saturated = int(np.count_nonzero((q < info.min) | (q > info.max)))
    return np.clip(q, info.min, info.max).astype(np.int32), saturated
