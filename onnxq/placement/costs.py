"""The cost model: predicted batch-1 time of a node in float or int8 on onnxruntime's CPU EP.

A cost table (``measure.measure_table``) holds µs per million MACs of each conv kind and of
GEMMs, by channels / rows, and ns per element of elementwise ops and conversions. Predictions
interpolate it log-linearly. Tables ship for the AVX-512 VNNI and AVX2 targets
(``tables/*.json``); a table measured on the host is cached per CPU model and onnxruntime
version (``host_table``).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx_graphsurgeon as gs

from onnxq import graph as G

__all__ = ["CostTable", "load_table", "host_table", "table_for_target", "NodeCost",
           "conv_kind", "FUSED_ACTIVATIONS"]

_TABLES = Path(__file__).resolve().parent / "tables"
#: the shipped table each target uses
_TARGET_TABLE = {"vnni": "vnni", "amx": "amx", "avx512": "vnni", "avx2": "avx2",
                 "portable": "avx2", "arm": "avx2"}
#: activations onnxruntime fuses into a float Conv (FusedConv / NCHWc), free there
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "HardSigmoid", "HardSwish", "LeakyRelu",
                               "Sigmoid", "Tanh"})


@dataclass(frozen=True, slots=True)
class NodeCost:
    """Predicted µs of one node in float and in int8 (its own kernel only)."""

    float_us: float
    int8_us: float


def _interp(points: list, x: float) -> float:
    """Log-linear interpolation of ``[[x, y], ...]`` (sorted by x), clamped at the ends."""
    xs = [p[0] for p in points]
    if x <= xs[0]:
        return float(points[0][1])
    if x >= xs[-1]:
        return float(points[-1][1])
    i = bisect.bisect_right(xs, x)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return float(y0 + t * (y1 - y0))


@dataclass(frozen=True, slots=True)
class CostTable:
    data: Mapping
    source: str  # where it came from (shipped table name or cache file)

    def conv_rate(self, kind: str, dtype: str, channels: float) -> float:
        rates = self.data["conv_us_per_mmac"]
        if kind in rates:
            return _interp(rates[kind][dtype], channels)
        # a table measured before volumetric convs (``dense3.nd``): its 2-D rate, scaled by
        # the shipped AMX table's volumetric / 2-D ratio (onnxruntime's int8 volumetric
        # im2col is scalar, single-threaded code: slower relative to AMX's fast int8 GEMM,
        # so the scaling errs towards float on other CPUs)
        base = kind.removesuffix(".nd")
        reference = _reference_table()
        return (_interp(rates[base][dtype], channels) * reference.conv_rate(kind, dtype, channels)
                / reference.conv_rate(base, dtype, channels))

    def bcast_nhwc(self, op: str, channels: float) -> float:
        """µs per element of int8 ``op`` (QLinearMul, QLinearAdd) with a per-channel constant
        on an NHWC tensor of ``channels`` channels. A table measured before these figures reads
        the shipped AMX table's, scaled by the two tables' NCHW figure for the op."""
        nchw = "QLinearMul.bcast" if op == "QLinearMul" else op
        if "bcast_nhwc_ns" in self.data:
            return _interp(self.data["bcast_nhwc_ns"][op], channels) / 1000.0
        reference = _reference_table()
        return (reference.bcast_nhwc(op, channels) * self.per_element(nchw)
                / reference.per_element(nchw))

    def gemm_rate(self, dtype: str, rows: float) -> float:
        return _interp(self.data["gemm_us_per_mmac"][dtype], rows)

    def overhead(self, dtype: str, op: str | None = None) -> float:
        """µs a node costs whatever its size: ``op``'s own (``node_us``, measured on tiny
        tensors) where the table has it, else the one figure per dtype fitted on conv chains."""
        own = self.data.get("node_us", {}).get(op) if op else None
        return float(own) if own is not None else float(self.data["node_overhead_us"][dtype])

    def per_element(self, op: str) -> float:
        """µs per element."""
        return float(self.data["elementwise_ns"][op]) / 1000.0

    def lstm_min_int8_hidden(self, default: int) -> int:
        """The least LSTM ``hidden_size`` that runs faster as ``DynamicQuantizeLSTM`` on this
        table's CPU (``benchmarks/bench_lstm_width.py``); ``default`` where it was not
        measured (a host-measured table)."""
        return int(self.data.get("lstm_min_int8_hidden", default))

    def has(self, op: str) -> bool:
        """Whether the table measured ``op`` (tables older than a kernel lack it)."""
        return op in self.data["elementwise_ns"]

    def border(self, elements: int, *, to_int8: bool, int8_conv: bool, float_conv: bool
               ) -> float:
        """µs of one float ↔ int8 conversion of a tensor: QuantizeLinear or DequantizeLinear,
        plus the layout changes onnxruntime adds around an int8 Conv (NHWC) and a float Conv
        (NCHWc). Fixed costs: the conversion's own node, and the u8 Transpose's next to an int8
        Conv (the one figure per dtype: a table without per-op figures has its fixed cost
        for the whole border)."""
        op = "QuantizeLinear" if to_int8 else "DequantizeLinear"
        us = elements * self.per_element(op) + self.overhead("int8", op)
        if int8_conv:
            us += elements * self.per_element("Transpose.u8")
            us += self.overhead("int8") if "node_us" in self.data else 0.0
        if float_conv:
            us += elements * self.per_element("Transpose.f32")
        return us


def load_table(path: str | os.PathLike) -> CostTable:
    p = Path(path)
    return CostTable(json.loads(p.read_text()), str(p))


@functools.cache
def _reference_table() -> CostTable:
    """The shipped table with every conv kind measured (read once; never modified)."""
    return load_table(_TABLES / "amx.json")


def table_for_target(target: str) -> CostTable:
    name = _TARGET_TABLE.get(target, "avx2")
    return load_table(_TABLES / f"{name}.json")


def host_table(cache_dir: str | os.PathLike | None = None, *, progress=None) -> CostTable:
    """The table measured on this host, cached per CPU model and onnxruntime version (about a
    minute to measure the first time)."""
    from onnxq import runtime
    from onnxq.placement.measure import measure_table

    key = f"{_cpu_model()}|{runtime.ort_version()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = Path(cache_dir or os.environ.get("ONNXQ_CACHE")
                  or Path.home() / ".cache" / "onnxq")
    path = folder / f"cost-{digest}.json"
    if path.exists():
        return load_table(path)
    data = dict(measure_table(progress=progress))
    data["meta"] = {"cpu": _cpu_model(), "onnxruntime": runtime.ort_version(),
                    "measured": "host"}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return load_table(path)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def conv_kind(node: gs.Node, cin: int) -> str:
    """pointwise (1×1), depthwise3 / depthwise5 (one filter per channel), dense3, or
    dense3.nd: a dense conv over more than two spatial dims (a volumetric one, priced apart:
    onnxruntime's int8 kernel builds its im2col buffer in one thread there)."""
    shape = G.constant_shape(node.inputs[1]) if len(node.inputs) > 1 else None
    kernel = [int(k) for k in (shape[2:] if shape else node.attrs.get("kernel_shape", [3]))]
    group = int(node.attrs.get("group", 1))
    if group > 1 and group == cin:
        return "depthwise5" if max(kernel, default=1) >= 5 else "depthwise3"
    if all(k == 1 for k in kernel) and group == 1:
        return "pointwise"
    return "dense3.nd" if len(kernel) > 2 else "dense3"
