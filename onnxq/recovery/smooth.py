"""SmoothQuant: move activation outliers into the weights before static quantization.

A MatMul/Gemm ``y = x·W`` whose input ``x`` has a few channels far larger than the rest loses
the small channels to a per-tensor int8 scale. With ``s_j = max|x_j|^α / max|W_j,:|^(1-α)``,
``y = (x / s)·(diag(s)·W)`` exactly; ``x / s`` has flat channels and ``diag(s)·W`` stays easy
for per-channel int8 weights. The division is folded into the producer when that is exact (a
``LayerNormalization`` whose output only these MatMuls read: its scale and bias are divided);
otherwise a ``Mul`` by ``1 / s`` is inserted on the MatMuls' branch only (a residual that reads
``x`` keeps it unscaled). All readers of ``x`` that are smoothed share one ``s``.

The channel maxima come from one float run over the first calibration feeds; the ranges are
then calibrated on the smoothed model as usual.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.calibrate import collect_ranges
from onnxq.plan import QuantPlan
from onnxq.qtypes import TensorRange
from onnxq.quant_ops import Role

__all__ = ["smooth", "Smoothed", "OUTLIER_RATIO"]

#: a MatMul input is smoothed when its largest channel maximum is at least this many times
#: its median channel maximum (flat inputs gain nothing and would get a Mul each)
OUTLIER_RATIO = 8.0
_S_LIMITS = (1e-4, 1e4)


@dataclass(frozen=True, slots=True)
class Smoothed:
    model: onnx.ModelProto
    report: dict  # input tensor → {"readers", "ratio", "folded_into" | "mul"}


class _ChannelMax:
    """A calibrator that keeps each tensor's max |x| per last-axis channel."""

    name = "channel_max"

    def __init__(self) -> None:
        self.maxima: dict[str, np.ndarray] = {}

    def observe(self, name: str, array: np.ndarray, *, index: int | None = None) -> None:
        a = np.abs(np.asarray(array, np.float32))
        m = a.reshape(-1, a.shape[-1]).max(axis=0) if a.ndim >= 1 and a.size else None
        if m is None:
            return
        old = self.maxima.get(name)
        self.maxima[name] = m if old is None or old.shape != m.shape else np.maximum(old, m)

    def compute(self) -> dict[str, TensorRange]:
        return {n: TensorRange(0.0, float(m.max())) for n, m in self.maxima.items()}


def _weight_rows(node: gs.Node) -> np.ndarray | None:
    """``W`` as ``[K, N]`` (rows = input channels) for a MatMul or a plain Gemm."""
    w = G.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return None
        return w.T if node.attrs.get("transB", 0) else w
    return w


def _groups(graph: gs.Graph, plan: QuantPlan) -> dict[str, list[gs.Node]]:
    """Input tensor → the planned int8 MatMul/Gemm nodes with a constant weight reading it."""
    planned = {n.name for n in plan.nodes if n.role is Role.ANCHOR and n.op in ("MatMul", "Gemm")
               and n.weight is not None and n.weight[0] == 1}
    groups: dict[str, list[gs.Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.name in planned and isinstance(node.inputs[0], gs.Variable) \
                and _weight_rows(node) is not None:
            groups[node.inputs[0].name].append(node)
    return dict(groups)


def _scales(x_max: np.ndarray, weights: Sequence[np.ndarray], alpha: float) -> np.ndarray:
    w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    s = np.power(np.maximum(x_max, 1e-8), alpha) / np.power(np.maximum(w_max, 1e-8), 1 - alpha)
    return np.clip(s, *_S_LIMITS).astype(np.float32)


def _fold_into_layernorm(graph: gs.Graph, x: gs.Tensor, readers: list[gs.Node],
                         s: np.ndarray) -> str | None:
    """Divide a LayerNormalization's scale and bias by ``s`` when only ``readers`` read it."""
    ln = G.producer(x)
    if ln is None or ln.op != "LayerNormalization" or ln.attrs.get("axis", -1) != -1 \
            or {id(n) for n in G.consumers(x)} != {id(n) for n in readers} \
            or x.name in G.graph_output_names(graph):
        return None
    scale = G.constant_value(ln.inputs[1]) if len(ln.inputs) > 1 else None
    bias = G.constant_value(ln.inputs[2]) if len(ln.inputs) > 2 and ln.inputs[2].name \
        else None
    if scale is None or scale.shape != s.shape:
        return None
    for i, value in ((1, scale), (2, bias)):
        if value is None:
            continue
        name = G.unique_name(graph, f"{ln.inputs[i].name}_smoothed")
        ln.inputs[i] = gs.Constant(name, (value / s).astype(np.float32))
    return ln.name


def _apply(graph: gs.Graph, name: str, readers: list[gs.Node], s: np.ndarray) -> dict:
    x = readers[0].inputs[0]
    for node in readers:
        w = _weight_rows(node)
        assert w is not None
        scaled = (w * s[:, None]).astype(np.float32)
        if node.op == "Gemm" and node.attrs.get("transB", 0):
            scaled = np.ascontiguousarray(scaled.T)
        node.inputs[1] = gs.Constant(G.unique_name(graph, f"{node.inputs[1].name}_smoothed"),
                                     scaled)
    folded = _fold_into_layernorm(graph, x, readers, s)
    if folded:
        return {"folded_into": folded}
    inv = gs.Constant(G.unique_name(graph, f"{name}_smooth_scale"), (1.0 / s).astype(np.float32))
    out = gs.Variable(G.unique_name(graph, f"{name}_smoothed"), dtype=np.float32,
                      shape=x.shape)
    mul = gs.Node("Mul", G.unique_name(graph, f"{name}_smooth"), inputs=[x, inv], outputs=[out])
    graph.nodes.append(mul)
    for node in readers:
        node.inputs[0] = out
    return {"mul": mul.name}


def smooth(model: onnx.ModelProto, plan: QuantPlan, feeds: Sequence[Mapping[str, np.ndarray]],
           alpha: float) -> Smoothed:
    """``model`` (prepared, float) with SmoothQuant applied to the planned MatMul/Gemm inputs
    that have outlier channels; channel maxima from ``feeds``."""
    graph = G.import_graph(model)
    groups = _groups(graph, plan)
    if not groups or not feeds:
        return Smoothed(model, {})
    observer = _ChannelMax()
    collect_ranges(model, sorted(groups), list(feeds), observer, progress=False, partial=True)
    report: dict = {}
    for name in sorted(groups):
        x_max = observer.maxima.get(name)
        readers = groups[name]
        weights = [_weight_rows(n) for n in readers]
        if x_max is None or any(w is None or w.shape[0] != x_max.size for w in weights):
            continue
        ratio = float(x_max.max() / max(float(np.median(x_max)), 1e-12))
        if ratio < OUTLIER_RATIO:
            continue
        s = _scales(x_max, [w for w in weights if w is not None], alpha)
        report[name] = {"readers": [n.name for n in readers], "ratio": round(ratio, 1),
                        **_apply(graph, name, readers, s)}
    if not report:
        return Smoothed(model, {})
    graph.cleanup().toposort()
    return Smoothed(G.export_graph(graph, model), report)
