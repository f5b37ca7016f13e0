"""Scoring an INT8 model against its float original: output agreement, a per-tensor error
report (where is accuracy lost?), Markdown/HTML rendering and A/B latency. Both models run in
onnxruntime (CPU, fixed threads) on the same feeds; statistics are running sums."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxq import score_names as names
from onnxq.errors import ConfigError, ModelError
from onnxq.io import clean_stale, external_copy, load_model, temp_prefix
from onnxq.report import COMPUTE_OPS, float_reasons
from onnxq.runtime import InputSpec, input_specs, iter_feeds, make_session, time_interleaved
from onnxq.score_render import plot_sqnr, render_report  # re-exported
from onnxq.score_types import OutputAgreement, OutputStats, TensorError, TensorReport

__all__ = ["OutputStats", "OutputAgreement", "TensorError", "TensorReport", "compare_outputs",
           "tensor_report", "render_report", "plot_sqnr", "measure_latency", "time_interleaved",
           "float_compute"]

ModelLike = onnx.ModelProto | str | os.PathLike
Feed = Mapping[str, np.ndarray]
Metric = Callable[[list[np.ndarray], list[np.ndarray]], float]

_QRANGE: dict[int, tuple[int, int]] = {TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127),
           TensorProto.UINT16: (0, 65535), TensorProto.INT16: (-32768, 32767),
           TensorProto.UINT4: (0, 15), TensorProto.INT4: (-8, 7)}


@dataclass(frozen=True, slots=True)
class _Probe:
    name: str  # FP32 tensor
    dq: str  # its dequantized INT8 counterpart (or the int8 tensor itself, see ``raw``)
    scale: np.ndarray
    zero_point: np.ndarray
    qrange: tuple[int, int] | None
    axis: int
    raw: bool = False  # ``dq`` is the QuantizeLinear's int8 output (its readers are int8 kernels)

    def value(self, v: np.ndarray) -> np.ndarray:
        """The INT8 model's value of the tensor, dequantized here when ``raw``."""
        if not self.raw:
            return v
        scale = _bcast(self.scale, v.shape, self.axis)
        zp = _bcast(self.zero_point.astype(np.float64), v.shape, self.axis)
        if scale is None or zp is None:
            return np.full(v.shape, np.nan)  # an axis mismatch: reported as missing
        return ((v.astype(np.float64) - zp) * scale).astype(np.float32)


class _Acc:
    """Running float64 sums for one tensor (memory does not grow with the feeds)."""

    __slots__ = ("x2", "y2", "xy", "e2", "abs_sum", "max_err", "lsb_max", "lsb_sum", "n",
                 "saturated", "hits", "rows", "mismatch")

    def __init__(self) -> None:
        self.x2 = self.y2 = self.xy = self.e2 = self.abs_sum = self.max_err = 0.0
        self.lsb_max = self.lsb_sum = 0.0
        self.n = self.saturated = self.hits = self.rows = 0
        self.mismatch = False

    def add(self, x, y, *, bounds=None, scale=None, top1: bool = False) -> None:
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            self.mismatch = True
            return
        xf, yf = x.ravel(), y.ravel()
        err = np.abs(xf - yf)
        self.x2 += float(xf @ xf)
        self.y2 += float(yf @ yf)
        self.xy += float(xf @ yf)
        self.e2 += float(err @ err)
        self.abs_sum += float(err.sum())
        self.max_err = max(self.max_err, float(err.max(initial=0.0)))
        self.n += xf.size
        if bounds is not None:
            self.saturated += int(np.count_nonzero((x < bounds[0]) | (x > bounds[1])))
        if scale is not None:
            lsb = err.reshape(x.shape) / scale
            self.lsb_max = max(self.lsb_max, float(lsb.max(initial=0.0)))
            self.lsb_sum += float(lsb.sum())
        if top1 and x.ndim >= 2 and x.shape[-1] > 0:
            self.hits += int(np.count_nonzero(x.argmax(-1) == y.argmax(-1)))
            self.rows += x.size // x.shape[-1]

    def sqnr(self) -> float:
        if self.e2 == 0.0:
            return math.inf
        return -math.inf if self.x2 == 0.0 else 10.0 * math.log10(self.x2 / self.e2)

    def cosine(self) -> float:
        denom = math.sqrt(self.x2 * self.y2)
        if denom == 0.0:
            return 1.0 if self.x2 == self.y2 else 0.0
        return max(-1.0, min(1.0, self.xy / denom))


# -- models, inputs and sessions ---------------------------------------------------------------
def _bar(feeds: Iterable[Feed], desc: str, progress: bool) -> Iterable[Feed]:
    """``feeds`` with a progress bar (``progress``) that leaves no trace when done."""
    if not progress:
        return feeds
    from tqdm.auto import tqdm

    return tqdm(feeds, desc=desc, unit="feed", leave=False,
                total=len(feeds) if isinstance(feeds, Sized) else None)


def _model(source: ModelLike) -> tuple[onnx.ModelProto, onnx.ModelProto | str]:
    """(the graph to inspect, what a session is built from). ModelProtos are never modified."""
    if isinstance(source, onnx.ModelProto):
        return source, source
    if isinstance(source, (str, os.PathLike)):
        return load_model(source), os.fspath(source)
    raise ModelError(f"expected an onnx.ModelProto or a path, not {type(source).__name__}")


def _common_specs(a: onnx.ModelProto, b: onnx.ModelProto,
                  labels: tuple[str, str] = ("FP32", "INT8")) -> list[InputSpec]:
    specs_a, specs_b = input_specs(a), input_specs(b)
    sig_a = {s.name: str(s.dtype) for s in specs_a}
    sig_b = {s.name: str(s.dtype) for s in specs_b}
    if sig_a != sig_b:
        raise ModelError(f"the models have different inputs, so they cannot run on the same "
                         f"feeds: {labels[0]} {sorted(sig_a.items())}, {labels[1]} "
                         f"{sorted(sig_b.items())}")
    return specs_a


def _iter_feeds(feeds: Iterable[Feed], specs: list[InputSpec]) -> Iterator[dict]:
    return iter_feeds(feeds, specs, "feed")


def _session(source: onnx.ModelProto | str, threads: int, *, basic: bool = False):
    return make_session(source, threads=max(1, int(threads)), optimize=not basic)


# -- quantization parameters ---------------------------------------------------------------------
def _constants(model: onnx.ModelProto) -> dict[str, TensorProto]:
    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                consts[node.output[0]] = value
    return consts


def _qparams(consts: dict[str, TensorProto], node: onnx.NodeProto):
    """(scale, zero point, (qmin, qmax) or None, axis) of a Q/DQ node; None if not constant."""
    scale_t = consts.get(node.input[1]) if len(node.input) > 1 else None
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if scale_t is None or (zp_name and zp_name not in consts):
        return None
    scale = numpy_helper.to_array(scale_t).astype(np.float64)
    if zp_name:
        zp_t = consts[zp_name]
        zp, qrange = numpy_helper.to_array(zp_t).astype(np.int64), _QRANGE.get(zp_t.data_type)
    else:
        zp, qrange = np.zeros(1, np.int64), _QRANGE[TensorProto.UINT8]
    axis = next((int(a.i) for a in node.attribute if a.name == "axis"), 1)
    return scale, zp, qrange, axis


def _bcast(param: np.ndarray, shape: tuple[int, ...], axis: int):
    """``param`` shaped to broadcast against ``shape`` (per channel along ``axis``)."""
    if param.size == 1:
        return float(param.ravel()[0])
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape) or shape[axis] != param.size:
        return None
    return param.reshape([-1 if i == axis else 1 for i in range(len(shape))])


def _probes(int8: onnx.ModelProto, fp32: onnx.ModelProto) -> tuple[list[_Probe], list[str]]:
    consts = _constants(int8)
    fp32_consts = set(_constants(fp32))
    fp32_names = ({o for n in fp32.graph.node for o in n.output}
                  | {i.name for i in fp32.graph.input}) - fp32_consts
    readers = names.readers(int8)
    folded = names.clamps(fp32, {o for n in int8.graph.node for o in n.output})
    probes: list[_Probe] = []
    missing: list[str] = []
    seen: set[str] = set()
    for node in int8.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in consts:
            continue  # weights and other constants
        dq = next((r for r in readers.get(node.output[0], ())
                   if r.op_type == "DequantizeLinear"), None)
        # without one (its readers are int8 kernels, e.g. MatMulIntegerToFloat), the int8
        # tensor is fetched and dequantized here
        out = dq.output[0] if dq is not None else node.output[0]
        name = names.fp32_name(node.input[0], out, fp32_names)
        name = names.clamped(name, folded, node.output[0], fp32_names)
        params = _qparams(consts, node)
        if name in seen:
            continue
        if name is None or params is None:
            missing.append(node.input[0])
            continue
        seen.add(name)
        scale, zp, qrange, axis = params
        probes.append(_Probe(name, out, scale, zp, qrange, axis, raw=dq is None))
    return probes, list(dict.fromkeys(missing))


def _bounds(probe: _Probe, shape: tuple[int, ...]):
    if probe.qrange is None:
        return None
    lo = _bcast((probe.qrange[0] - probe.zero_point) * probe.scale, shape, probe.axis)
    hi = _bcast((probe.qrange[1] - probe.zero_point) * probe.scale, shape, probe.axis)
    return None if lo is None or hi is None else (lo, hi)


# -- public API ----------------------------------------------------------------------------------
def compare_outputs(fp32: ModelLike, int8: ModelLike, feeds: Iterable[Feed], *,
                    metric: Metric | None = None, threads: int = 1,
                    emulate: str | None = None, progress: bool = False) -> OutputAgreement:
    """Run both models on every feed and compare each graph output (matched by name).
    ``metric(fp32_outputs, int8_outputs) -> float`` gets, per output, the values of all feeds
    concatenated along axis 0 (so they are kept in memory). ``emulate`` ("avx2", "vnni", ...)
    runs the INT8 model as that CPU computes it (``onnxq.emulate``), not on this one."""
    g32, src32 = _model(fp32)
    g8, src8 = _model(int8)
    specs = _common_specs(g32, g8)
    names = [o.name for o in g32.graph.output]
    absent = sorted(set(names) - {o.name for o in g8.graph.output})
    if absent:
        raise ModelError(f"the INT8 model lacks output(s) {absent} of the FP32 model; its "
                         f"outputs are {[o.name for o in g8.graph.output]}")
    consts = _constants(g8)
    scales = {n.output[0]: p for n in g8.graph.node
              if n.op_type == "DequantizeLinear" and n.output[0] in names
              and (p := _qparams(consts, n)) is not None}
    s32 = _session(src32, threads)
    if emulate is None:
        s8 = _session(src8, threads)
    else:
        from onnxq.emulate import EmulatedSession

        s8 = EmulatedSession(g8, emulate)
    accs = {name: _Acc() for name in names}
    kept: tuple[list, list] = ([], [])
    count = 0
    for feed in _iter_feeds(_bar(feeds, "comparing outputs", progress), specs):
        a, b = s32.run(names, feed), s8.run(names, feed)
        for name, x, y in zip(names, a, b, strict=True):
            p = scales.get(name)
            scale = _bcast(p[0], np.shape(y), p[3]) if p is not None else None
            accs[name].add(x, y, scale=scale, top1=True)
        if metric is not None:
            kept[0].append(a)
            kept[1].append(b)
        count += 1
    bad = [n for n, acc in accs.items() if acc.mismatch]
    if bad:
        raise ModelError(f"output(s) {bad} have different shapes in the two models")
    value = None
    if metric is not None:
        stacked = [[np.concatenate(v) if np.ndim(v[0]) else np.stack(v)
                    for v in zip(*k, strict=True)] for k in kept]
        value = float(metric(*stacked))
    stats = tuple(_output_stats(name, accs[name], name in scales) for name in names)
    return OutputAgreement(outputs=stats, feeds=count, metric=value)


def _output_stats(name: str, acc: _Acc, lsb: bool) -> OutputStats:
    n = max(acc.n, 1)
    return OutputStats(
        name=name, top1_agreement=acc.hits / acc.rows if acc.rows else None,
        cosine=acc.cosine(), sqnr_db=acc.sqnr(), max_abs_error=acc.max_err,
        mean_abs_error=acc.abs_sum / n, max_error_lsb=acc.lsb_max if lsb else None,
        mean_error_lsb=acc.lsb_sum / n if lsb else None, elements=acc.n)


def tensor_report(fp32: ModelLike, int8: ModelLike, feeds: Iterable[Feed], *,
                  threads: int = 1, progress: bool = False) -> TensorReport:
    """Error of every activation the INT8 model quantizes, worst (lowest SQNR) first: for each
    QuantizeLinear on a non-constant ``T``, FP32 ``T`` vs the output of the DequantizeLinear
    after it (extra outputs of private model copies). ``fp32`` may be the original (unfused)
    model; INT8 tensors it lacks are listed in ``missing``."""
    g32, _ = _model(fp32)
    g8, _ = _model(int8)
    specs = _common_specs(g32, g8)
    probes, missing = _probes(g8, g32)
    if not probes and not missing:
        raise ModelError("the INT8 model quantizes no activation (no QuantizeLinear on a "
                         "non-constant tensor); pass a QDQ model such as onnxq.quantize makes")
    inputs = {s.name for s in specs}
    fetch32 = list(dict.fromkeys(p.name for p in probes if p.name not in inputs))
    fetch8 = list(dict.fromkeys(p.dq for p in probes))
    accs = {p.name: _Acc() for p in probes}
    count = 0
    clean_stale(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix=temp_prefix(kind="score")) as tmp:
        run32 = _fetcher(g32, fetch32, Path(tmp, "fp32"), threads)
        run8 = _fetcher(g8, fetch8, Path(tmp, "int8"), threads)
        for feed in _iter_feeds(_bar(feeds, "per-tensor errors", progress), specs):
            v32, v8 = run32(feed) | {k: feed[k] for k in inputs}, run8(feed)
            for p in probes:
                x = v32[p.name]
                accs[p.name].add(x, p.value(v8[p.dq]), bounds=_bounds(p, np.shape(x)))
            count += 1
    missing += [p.name for p in probes if accs[p.name].mismatch]
    rows = [_tensor_error(p, accs[p.name]) for p in probes if not accs[p.name].mismatch]
    rows.sort(key=lambda r: (r.sqnr_db, -r.saturated_fraction, r.name))
    return TensorReport(tensors=tuple(rows), missing=tuple(missing), feeds=count)


def _fetcher(graph: onnx.ModelProto, names: list[str], folder: Path, threads: int):
    """feed -> {name: value}, from a private copy of ``graph`` with ``names`` as outputs."""
    if not names:
        return lambda feed: {}
    folder.mkdir()
    path, carriers = external_copy(graph, names, folder)
    session = _session(str(path), threads, basic=True)
    outputs = [carriers[n] for n in names]  # main-graph probes: always carried
    return lambda feed: dict(zip(names, session.run(outputs, feed), strict=True))


def _tensor_error(probe: _Probe, acc: _Acc) -> TensorError:
    return TensorError(
        name=probe.name, sqnr_db=acc.sqnr(), cosine=acc.cosine(), max_abs_error=acc.max_err,
        saturated_fraction=acc.saturated / acc.n if acc.n else 0.0,
        scale=float(probe.scale.max()), zero_point=int(probe.zero_point.ravel()[0]),
        elements=acc.n)


# -- latency -----------------------------------------------------------------------------------
def measure_latency(models: Mapping[str, ModelLike], feed: Feed, *, threads: int = 2,
                    min_seconds: float = 1.0, warmup: int = 3, rounds: int = 5
                    ) -> dict[str, float]:
    """Median seconds per run of each model, timed A B A B ... so drift hits all of them."""
    if not models:
        raise ConfigError("measure_latency needs at least one model, e.g. {'fp32': m, ...}")
    loaded = {name: _model(m) for name, m in models.items()}
    first = next(iter(loaded))
    specs = input_specs(loaded[first][0])
    for name, (graph, _) in loaded.items():
        _common_specs(loaded[first][0], graph, labels=(first, name))
    checked = next(_iter_feeds([feed], specs))
    sessions = {name: _session(src, threads) for name, (_, src) in loaded.items()}
    return time_interleaved(sessions, checked, min_seconds=min_seconds, warmup=warmup,
                            rounds=rounds)


def float_compute(model: ModelLike) -> list[tuple[str, str, str]]:
    """(node, op, why) of the main graph's Conv/ConvTranspose/Gemm/MatMul of a quantized
    model that read no dequantized value and are not integer ops: the compute left in float;
    ``why`` as onnxq recorded it when it quantized the model ("" for other models)."""
    graph = _model(model)[0]
    reasons = float_reasons(graph)
    dq = {o for n in graph.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [(n.name, n.op_type, reasons.get(n.name, "")) for n in graph.graph.node
            if n.op_type in COMPUTE_OPS and not any(i in dq for i in n.input)]
