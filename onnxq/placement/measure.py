"""Measure the CPU EP's float and int8 kernels on this host: the cost table of the placement.

Convolutions and GEMMs are timed as chains (the marginal cost of one more layer, so the layout
changes at a chain's ends cancel out); elementwise ops, quantize/dequantize and layout changes
as single ops at a fixed size. Each figure is a median of interleaved rounds (``runtime``).
The table is a plain dict, written as JSON (``costs.save_table``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq import runtime

__all__ = ["measure_table", "measure_convs", "node_overheads", "bcast_nhwc", "BCAST_OPS", "CHANNELS", "CONV_KINDS", "GEMM_ROWS",
           "ELEMENTWISE", "NODE_OPS"]

#: channel counts the conv rates are measured at (interpolated log-linearly between)
CHANNELS = (3, 8, 16, 32, 64, 128, 256, 512, 1024)
#: GEMM rows (batch × tokens) the GEMM rates are measured at
GEMM_ROWS = (1, 4, 16, 64, 256)
#: conv kinds measured: 2-D ones, and a volumetric dense conv (onnxruntime's int8 Conv with
#: more than two spatial dims builds its im2col buffer in one thread, generic code)
CONV_KINDS = ("pointwise", "depthwise3", "depthwise5", "dense3", "dense3.nd")
#: elements of the tensors the elementwise costs are measured on
_ELEMENTS = 64 * 56 * 56
#: frames of the volumetric conv chains (``dense3.nd``)
_DEPTH = 4
_F, _U8, _I8, _I32 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializer=inits)
    return helper.make_model(graph, ir_version=9, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _info(name: str, dtype: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _arr(name: str, value, dtype) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _conv_chain(kind: str, c: int, hw: int, depth: int, int8: bool) -> onnx.ModelProto:
    """``depth`` convs of one kind (c → c channels, stride 1) on a [1, c, hw, hw] tensor; a
    ``.nd`` kind (``dense3.nd``) is the volumetric one: 3×3×3 on [1, c, 4, hw, hw]."""
    rng = np.random.default_rng(0)
    base, nd = kind.removesuffix(".nd"), kind.endswith(".nd")
    k, group = {"pointwise": (1, 1), "depthwise3": (3, c), "depthwise5": (5, c),
                "dense3": (3, 1)}[base]
    spatial = [_DEPTH, hw, hw] if nd else [hw, hw]
    kernel = [k] * len(spatial)
    attrs: dict[str, Any] = {"kernel_shape": kernel, "pads": [k // 2] * 2 * len(spatial),
                             "group": group}
    wshape = (c, c // group, *kernel)
    inits = [_arr("xs", 0.05, np.float32), _arr("xz", 128, np.uint8)]
    nodes, x = [], "x"
    for i in range(depth):
        y = "y" if i == depth - 1 else f"t{i}"
        if int8:
            inits += [_arr(f"w{i}", rng.integers(-60, 60, wshape), np.int8),
                      _arr(f"ws{i}", np.full(c, 0.01), np.float32), _arr(f"wz{i}", np.zeros(c),
                                                                         np.int8),
                      _arr(f"b{i}", rng.integers(-500, 500, c), np.int32)]
            nodes.append(helper.make_node("QLinearConv", [x, "xs", "xz", f"w{i}", f"ws{i}",
                                                          f"wz{i}", "xs", "xz", f"b{i}"], [y],
                                          **attrs))
        else:
            inits += [_arr(f"w{i}", rng.normal(0, 0.1, wshape), np.float32),
                      _arr(f"b{i}", rng.normal(0, 0.1, c), np.float32)]
            nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [y], **attrs))
        x = y
    dtype = _U8 if int8 else _F
    return _model(nodes, [_info("x", dtype, [1, c, *spatial])],
                  [_info("y", dtype, [1, c, *spatial])], inits)


def _gemm_chain(m: int, n: int, depth: int, int8: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [_arr("xs", 0.05, np.float32), _arr("xz", 128, np.uint8)]
    nodes, x = [], "x"
    for i in range(depth):
        y = "y" if i == depth - 1 else f"t{i}"
        if int8:
            inits += [_arr(f"w{i}", rng.integers(-60, 60, (n, n)), np.int8),
                      _arr(f"ws{i}", 0.01, np.float32), _arr(f"wz{i}", 0, np.int8)]
            nodes.append(helper.make_node("QLinearMatMul", [x, "xs", "xz", f"w{i}", f"ws{i}",
                                                            f"wz{i}", "xs", "xz"], [y]))
        else:
            inits.append(_arr(f"w{i}", rng.normal(0, 0.05, (n, n)), np.float32))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [y]))
        x = y
    dtype = _U8 if int8 else _F
    return _model(nodes, [_info("x", dtype, [m, n])], [_info("y", dtype, [m, n])], inits)


def _single(op: str, inputs: list[tuple[str, int, list]], out: tuple[int, list],
            extra_inputs=(), inits=(), domain: str = "", **attrs) -> onnx.ModelProto:
    names = [n for n, _, _ in inputs] + list(extra_inputs)
    node = helper.make_node(op, names, ["y"], domain=domain, **attrs)
    return _model([node], [_info(n, t, s) for n, t, s in inputs], [_info("y", *out)],
                  list(inits))


def _elementwise_models() -> dict[str, onnx.ModelProto]:
    c, hw = 64, 56
    s, g = [1, c, hw, hw], [1, c, 1, 1]
    q = [_arr("s", 0.05, np.float32), _arr("z", 128, np.uint8)]
    ms = "com.microsoft"
    two = [("a", _U8, s), ("b", _U8, s)]
    half, k2 = [1, c, hw // 2, hw // 2], [2, 2]
    return {
        "QuantizeLinear": _single("QuantizeLinear", [("x", _F, s)], (_U8, s), ["s", "z"], q),
        "DequantizeLinear": _single("DequantizeLinear", [("x", _U8, s)], (_F, s), ["s", "z"], q),
        "Transpose.u8": _single("Transpose", [("x", _U8, s)], (_U8, [1, hw, hw, c]),
                                perm=[0, 2, 3, 1]),
        "Transpose.f32": _single("Transpose", [("x", _F, s)], (_F, [1, hw, hw, c]),
                                 perm=[0, 2, 3, 1]),
        "QLinearAdd": _model([helper.make_node("QLinearAdd", ["a", "s", "z", "b", "s", "z", "s",
                                                             "z"], ["y"], domain=ms)],
                             [_info(*t) for t in two], [_info("y", _U8, s)], q),
        "QLinearMul": _model([helper.make_node("QLinearMul", ["a", "s", "z", "b", "s", "z", "s",
                                                             "z"], ["y"], domain=ms)],
                             [_info(*t) for t in two], [_info("y", _U8, s)], q),
        "QLinearMul.bcast": _model([helper.make_node(
            "QLinearMul", ["a", "s", "z", "b", "s", "z", "s", "z"], ["y"], domain=ms)],
            [_info("a", _U8, s), _info("b", _U8, g)], [_info("y", _U8, s)], q),
        "QLinearSigmoid": _single("QLinearSigmoid", [("x", _U8, s)], (_U8, s),
                                  ["s", "z", "s", "z"], q, domain=ms),
        "QLinearGlobalAveragePool": _single("QLinearGlobalAveragePool", [("x", _U8, s)],
                                            (_U8, g), ["s", "z", "s", "z"], q, domain=ms,
                                            channels_last=0),
        "Add": _single("Add", [("a", _F, s), ("b", _F, s)], (_F, s)),
        "Mul": _single("Mul", [("a", _F, s), ("b", _F, s)], (_F, s)),
        "Mul.bcast": _single("Mul", [("a", _F, s), ("b", _F, g)], (_F, s)),
        "Sigmoid": _single("Sigmoid", [("x", _F, s)], (_F, s)),
        "HardSwish": _single("HardSwish", [("x", _F, s)], (_F, s)),
        "GlobalAveragePool": _single("GlobalAveragePool", [("x", _F, s)], (_F, g)),
        # 2×2 max pools, per input element: float, u8 in onnxruntime's plain NCHW kernel (what
        # a QuantizeLinear propagated above a float-fed MaxPool makes) and u8 NHWC
        "MaxPool.f32": _single("MaxPool", [("x", _F, s)], (_F, half), kernel_shape=k2,
                               strides=k2),
        "MaxPool.u8": _single("MaxPool", [("x", _U8, s)], (_U8, half), kernel_shape=k2,
                              strides=k2),
        "MaxPool.nhwc": _single("NhwcMaxPool", [("x", _U8, [1, hw, hw, c])],
                                (_U8, [1, hw // 2, hw // 2, c]), domain=ms, kernel_shape=k2,
                                strides=k2),
    }


#: channel counts the NHWC channel-broadcast elementwise costs are measured at
BCAST_CHANNELS = (4, 8, 16, 32, 64, 128, 256)
#: int8 ops with a per-channel constant priced by channel count in NHWC (``bcast_nhwc``)
BCAST_OPS = ("QLinearMul", "QLinearAdd")


def _bcast_nhwc_model(op: str, c: int) -> tuple[onnx.ModelProto, int]:
    """``op`` of a [1, hw, hw, c] u8 tensor and a [1, 1, 1, c] constant: an int8 Conv's NHWC
    output scaled or shifted per channel (a BatchNorm after a ReLU); and its element count."""
    hw = max(2, round(math.sqrt(_ELEMENTS / c)))
    shape, per_channel = [1, hw, hw, c], [1, 1, 1, c]
    inits = [_arr("s", 0.05, np.float32), _arr("z", 128, np.uint8),
             _arr("b", np.full(per_channel, 3), np.uint8)]
    node = helper.make_node(op, ["a", "s", "z", "b", "s", "z", "s", "z"], ["y"],
                            domain="com.microsoft")
    return (_model([node], [_info("a", _U8, shape)], [_info("y", _U8, shape)], inits),
            hw * hw * c)


def bcast_nhwc(threads: int, seconds: float) -> dict[str, list]:
    """ns per element of ``BCAST_OPS`` with a per-channel constant on an NHWC tensor, by
    channels: onnxruntime loops over the channel runs, so few channels cost many times the
    NCHW figure (``elementwise_ns``'s ``QLinearMul.bcast``)."""
    out: dict[str, list] = {}
    for op in BCAST_OPS:
        for c in BCAST_CHANNELS:
            model, n = _bcast_nhwc_model(op, c)
            out.setdefault(op, []).append([c, _time({op: model}, threads, seconds)[op] * 1e9 / n])
    return out


#: ops whose fixed cost per node is measured on its own (``node_overheads``)
NODE_OPS = ("Add", "QLinearAdd", "Mul", "QLinearMul", "MatMul", "QLinearMatMul",
            "QuantizeLinear", "DequantizeLinear")
_TINY = 16  # elements (and GEMM width) of the tiny tensors those are measured on


def _tiny_chain(op: str, depth: int) -> onnx.ModelProto:
    """``depth`` nodes of ``op`` on a [1, 16] tensor, each reading the previous one; for the
    conversions, QuantizeLinear → DequantizeLinear pairs (other scales, so none folds away)."""
    n, ms = _TINY, "com.microsoft"
    inits = [_arr("s", 0.05, np.float32), _arr("s2", 0.06, np.float32), _arr("z", 128, np.uint8)]
    nodes, x = [], "x"
    for i in range(depth):
        y = "y" if i == depth - 1 else f"t{i}"
        if op in ("Add", "Mul"):
            inits.append(_arr(f"c{i}", np.full((1, n), 0.01), np.float32))
            nodes.append(helper.make_node(op, [x, f"c{i}"], [y]))
        elif op in ("QLinearAdd", "QLinearMul"):
            inits.append(_arr(f"c{i}", np.full((1, n), 3), np.uint8))
            nodes.append(helper.make_node(op, [x, "s", "z", f"c{i}", "s", "z", "s", "z"], [y],
                                          domain=ms))
        elif op == "MatMul":
            inits.append(_arr(f"w{i}", np.full((n, n), 0.01), np.float32))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [y]))
        elif op == "QLinearMatMul":
            inits += [_arr(f"w{i}", np.full((n, n), 3), np.int8), _arr(f"wz{i}", 0, np.int8)]
            nodes.append(helper.make_node("QLinearMatMul", [x, "s", "z", f"w{i}", "s",
                                                            f"wz{i}", "s", "z"], [y]))
        else:  # a conversion pair
            nodes += [helper.make_node("QuantizeLinear", [x, "s", "z"], [f"q{i}"]),
                      helper.make_node("DequantizeLinear", [f"q{i}", "s2", "z"], [y])]
        x = y
    dtype = _U8 if op.startswith("QLinear") else _F
    return _model(nodes, [_info("x", dtype, [1, n])], [_info("y", dtype, [1, n])], inits)


def node_overheads(threads: int, seconds: float) -> dict[str, float]:
    """µs one node of each of ``NODE_OPS`` costs whatever its size (on 16 elements): what
    decides a batch-1 loop body's small products and elementwise ops. A QuantizeLinear and a
    DequantizeLinear get half of a pair each."""
    out, depth = {}, 8
    for op in NODE_OPS[:-1]:
        t = _time({"short": _tiny_chain(op, 1), "long": _tiny_chain(op, 1 + depth)}, threads,
                  seconds)
        out[op] = max(t["long"] - t["short"], 1e-7) / depth * 1e6
    out["QuantizeLinear"] = out["DequantizeLinear"] = out["QuantizeLinear"] / 2
    return out


def _feed(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feed = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i.type.tensor_type.elem_type == _U8:
            feed[i.name] = rng.integers(0, 255, shape).astype(np.uint8)
        else:
            feed[i.name] = rng.normal(0, 1, shape).astype(np.float32)
    return feed


def _time(models: dict[str, onnx.ModelProto], threads: int, seconds: float) -> dict[str, float]:
    """Models with the same inputs, timed interleaved."""
    sessions = {k: runtime.make_session(m, threads=threads) for k, m in models.items()}
    feed = _feed(next(iter(models.values())))
    return runtime.time_interleaved(sessions, feed, min_seconds=seconds, rounds=3)


def _marginal(build: Callable[[int, bool], onnx.ModelProto], threads: int, seconds: float,
              depth: int = 4) -> dict[str, float]:
    """Seconds of one more layer, float and int8: (T(1 + depth) − T(1)) / depth."""
    out = {}
    for int8 in (False, True):
        t = _time({"short": build(1, int8), "long": build(1 + depth, int8)}, threads, seconds)
        out["int8" if int8 else "float"] = max(t["long"] - t["short"], 1e-7) / depth
    return out


def _hw_for(c: int, kind: str) -> int:
    target = 200_000 if not kind.startswith("dense3") else 60_000
    frames = _DEPTH if kind.endswith(".nd") else 1
    return int(min(112, max(7, round(math.sqrt(target / c / frames)))))


def _macs(kind: str, c: int, hw: int) -> float:
    """Millions of multiply-adds of one layer of ``_conv_chain``."""
    nd = kind.endswith(".nd")
    taps = {"pointwise": 1, "depthwise3": 9, "depthwise5": 25, "dense3": 9}[
        kind.removesuffix(".nd")] * (3 if nd else 1)  # a volumetric one: 3×3×3
    pixels = hw * hw * (_DEPTH if nd else 1)
    return pixels * c * (taps if kind.startswith("depthwise") else taps * c) / 1e6


def measure_table(*, threads: int = 2, seconds: float = 0.4, repeats: int = 1,
                  progress=None) -> dict:
    """The host's cost table: conv and GEMM µs per million MACs by channels / rows, per-node
    overhead, and ns per element of elementwise ops and conversions; with ``repeats`` > 1,
    the median of that many measurements of each figure (a shared machine is noisy)."""
    tables = [_measure_once(threads, seconds, progress) for _ in range(max(repeats, 1))]
    return _median(tables)


def _median(tables: list):
    first = tables[0]
    if isinstance(first, dict):
        return {k: _median([t[k] for t in tables]) for k in first}
    if isinstance(first, list) and first and isinstance(first[0], list):
        return [[p[0], float(np.median([t[i][1] for t in tables]))] for i, p in
                enumerate(first)]
    return float(np.median(tables))


def measure_convs(kinds=CONV_KINDS, *, threads: int = 2, seconds: float = 0.4,
                  progress=None) -> dict[str, dict[str, list]]:
    """µs per million MACs of each conv kind, float and int8, at each of ``CHANNELS``."""
    conv: dict[str, dict[str, list]] = {}
    steps = [(kind, c) for kind in kinds
             for c in CHANNELS if not (kind.startswith("dense3") and c > 256)
             and (c >= 8 or kind.startswith(("dense3", "pointwise")))]
    for kind, c in steps:
        hw = _hw_for(c, kind)
        macs = _macs(kind, c, hw)
        t = _marginal(functools.partial(_conv_chain, kind, c, hw), threads, seconds)
        for dtype, sec in t.items():
            conv.setdefault(kind, {}).setdefault(dtype, []).append([c, sec * 1e6 / macs])
        if progress:
            progress(f"conv {kind} c={c}")
    return conv


def _measure_once(threads: int, seconds: float, progress) -> dict:
    conv = measure_convs(threads=threads, seconds=seconds, progress=progress)
    gemm: dict[str, list] = {}
    for m in GEMM_ROWS:
        t = _marginal(functools.partial(_gemm_chain, m, 512), threads, seconds)
        for dtype, sec in t.items():
            gemm.setdefault(dtype, []).append([m, sec * 1e6 / (m * 512 * 512 / 1e6)])
    tiny = _marginal(functools.partial(_conv_chain, "pointwise", 8, 4), threads, seconds)
    elementwise = {k: _time({k: m}, threads, seconds)[k] * 1e9 / _ELEMENTS
                   for k, m in _elementwise_models().items()}
    return {"conv_us_per_mmac": conv, "gemm_us_per_mmac": gemm,
            "node_overhead_us": {k: v * 1e6 for k, v in tiny.items()},
            "node_us": node_overheads(threads, seconds), "elementwise_ns": elementwise,
            "bcast_nhwc_ns": bcast_nhwc(threads, seconds)}


ELEMENTWISE = tuple(_elementwise_models())
