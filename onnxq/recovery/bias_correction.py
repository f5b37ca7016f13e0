"""Bias correction: move each quantized layer's bias so that its output mean matches FP32's.

* **fast** — the error of the int8 *weights* alone, from the calibration statistics already
  collected: for a layer ``y = op(x, W) + b``, ``E[op(x, Wq) − op(x, W)] = op(E[x], Wq − W)``
  (the op is linear in ``x``), evaluated once on the batch-mean input map, so convolution
  padding is exact. No second run of the model.
* **full** — data-driven, layer by layer on the quantized upstream (NNCF's BiasCorrection,
  AIMET's empirical one): the QDQ model is run on kept calibration feeds, level by level in
  topological order (layers of one level do not feed each other), and each layer's bias is
  moved by the difference between FP32's output mean and the quantized model's, with every
  upstream correction already in place. It corrects the weight error, the activation
  rounding and clipping, and what upstream layers pass on. One onnxruntime session; each
  level's biases are fed as inputs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from onnxq import graph as G
from onnxq.recovery.targets import Target, WeightQuantizer
from onnxq.runtime import input_specs, iter_feeds, make_session

__all__ = ["fast_shifts", "full_biases", "levels", "channel_mean"]

BiasKey = tuple[str, int]


def channel_mean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean over every axis but ``axis`` (float64)."""
    x = np.asarray(x, np.float64)
    axis = axis % x.ndim
    return x.mean(axis=tuple(i for i in range(x.ndim) if i != axis))


def _pads(node: gs.Node, spatial: tuple[int, ...], kernel: tuple[int, ...],
          strides: tuple[int, ...], dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    n = len(spatial)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for size, k, st, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max(0, (-(-size // st) - 1) * st + d * (k - 1) + 1 - size)
            small = total // 2
            out.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        return out
    if auto == "VALID":
        return [(0, 0)] * n
    pads = list(node.attrs.get("pads", [0] * 2 * n))
    return [(int(pads[i]), int(pads[i + n])) for i in range(n)]


def _conv_shift(node: gs.Node, mean: np.ndarray, delta_w: np.ndarray) -> np.ndarray:
    """mean over positions of Conv(E[x], ΔW), per output channel, in float64 numpy: the sum
    of the (padded) mean input under each kernel tap, weighted by ΔW."""
    kernel = tuple(int(k) for k in delta_w.shape[2:])
    n = len(kernel)
    strides = tuple(int(v) for v in node.attrs.get("strides", [1] * n))
    dilations = tuple(int(v) for v in node.attrs.get("dilations", [1] * n))
    x = np.asarray(mean, np.float64)
    pads = _pads(node, x.shape[1:], kernel, strides, dilations)
    x = np.pad(x, [(0, 0), *pads])
    outs = [(x.shape[1 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
            for i in range(n)]
    taps = np.zeros((x.shape[0], *kernel))
    for tap in np.ndindex(*kernel):
        window = tuple(slice(t * d, t * d + st * (o - 1) + 1, st)
                       for t, d, st, o in zip(tap, dilations, strides, outs, strict=True))
        taps[(slice(None), *tap)] = x[(slice(None), *window)].sum(axis=tuple(range(1, n + 1)))
    group = int(node.attrs.get("group", 1))
    cout, cin_g = delta_w.shape[0], delta_w.shape[1]
    per_group = cout // group
    dw = np.asarray(delta_w, np.float64)
    shift = np.empty(cout)
    for g in range(group):
        block = taps[g * cin_g:(g + 1) * cin_g].reshape(-1)
        rows = dw[g * per_group:(g + 1) * per_group].reshape(per_group, -1)
        shift[g * per_group:(g + 1) * per_group] = rows @ block
    return shift / max(1, int(np.prod(outs)))


def _conv_transpose_delta(node: gs.Node, mean: np.ndarray, delta_w: np.ndarray) -> np.ndarray:
    """ConvTranspose(E[x], ΔW), by onnxruntime on a one-node model."""
    attrs = {k: v for k, v in node.attrs.items() if v is not None}
    one = helper.make_node(node.op, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [one], "delta", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(delta_w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    session = make_session(model, threads=1, optimize=None)
    return session.run(None, {"x": mean[None].astype(np.float32)})[0]


def _shift(target: Target, node: gs.Node, mean: np.ndarray, delta_w: np.ndarray
           ) -> np.ndarray | None:
    """The per-channel change of the output mean that ``delta_w`` causes."""
    if target.op in ("Conv", "ConvTranspose"):
        if mean.ndim != delta_w.ndim - 1:
            return None
        if target.op == "Conv":
            return _conv_shift(node, mean, delta_w)
        return channel_mean(_conv_transpose_delta(node, mean, delta_w), 1)
    vector = np.asarray(mean, np.float64).reshape(-1)
    if target.op == "Gemm":
        dw = delta_w.T if node.attrs.get("transB", 0) else delta_w
        return float(node.attrs.get("alpha", 1.0)) * (vector @ dw)
    return vector @ delta_w


def fast_shifts(graph: gs.Graph, targets: Sequence[Target], means: Mapping[str, np.ndarray],
                quantized: WeightQuantizer,
                weights: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per target node: the shift of its output mean that cancels its weight error, from
    ``means`` (the batch-mean of each input, ``stats.InputMeans``). ``weights`` gives the
    int8-grid weights where another algorithm (AdaRound) chose them; else ``quantized``."""
    nodes = {n.name: n for n in graph.nodes}
    out = {}
    for t in targets:
        node, mean = nodes.get(t.node), means.get(t.x)
        w = G.constant_value(node.inputs[t.weight_index], cache=False) if node is not None else None
        if node is None or mean is None or w is None:
            continue
        grid = (weights or {}).get(t.node)
        wq = grid if grid is not None else quantized(w, t.axis, t.exact)
        delta = wq.astype(np.float64) - w.astype(np.float64)
        shift = _shift(t, node, np.asarray(mean, np.float64), delta)
        if shift is not None and np.all(np.isfinite(shift)):
            out[t.node] = -np.asarray(shift, np.float64)
    return out


def levels(model: onnx.ModelProto, targets: Sequence[Target]) -> list[list[Target]]:
    """Targets grouped by depth: a target's level is one more than the deepest target
    upstream of it, so that targets of one level never feed each other."""
    by_holder: dict[str, list[Target]] = {}
    for t in targets:
        by_holder.setdefault(t.holder, []).append(t)
    of_node = {t.node: t for t in targets}
    depth: dict[str, int] = {}
    level_of: dict[str, int] = {}
    for node in model.graph.node:
        d = max((depth.get(i, 0) for i in _reads(node)), default=0)
        if node.name in of_node:
            level_of[node.name] = d + 1
            d += 1
        for t in by_holder.get(node.name, ()):
            d = max(d, level_of.get(t.node, 0))
        for o in node.output:
            depth[o] = d
    grouped: dict[int, list[Target]] = {}
    for t in targets:
        grouped.setdefault(level_of.get(t.node, 1), []).append(t)
    return [grouped[k] for k in sorted(grouped)]


def _reads(node: onnx.NodeProto) -> list[str]:
    """Inputs of ``node``, and the outer tensors its subgraphs read."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            names += [i for n in attr.g.node for i in _reads(n)]
    return names


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in dict.fromkeys(names):
        if name not in present:
            out.graph.output.append(helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None))
    return out


class _BiasInputs:
    """The working QDQ model: each target's bias is a graph input, so one session serves
    every level. An int32 bias behind its DequantizeLinear moves in steps of its scale; a
    float one (a bias Add the plan keeps float) moves freely."""

    def __init__(self, qdq: onnx.ModelProto, targets: Sequence[Target]) -> None:
        model = onnx.ModelProto()
        model.CopyFrom(qdq)
        graph = model.graph
        inits = {i.name: i for i in graph.initializer}
        producers = {o: n for n in graph.node for o in n.output}
        holders = {n.name: n for n in graph.node}
        self.values: dict[str, np.ndarray] = {}  # input name → current bias (stored units)
        self.steps: dict[str, np.ndarray] = {}   # input name → output change per unit
        self.dtypes: dict[str, np.dtype] = {}
        self.of: dict[str, str] = {}             # target node → input name
        self.outputs: dict[str, str] = {}        # target node → its output in the QDQ model
        for k, t in enumerate(targets):
            holder = holders.get(t.holder)
            if holder is None or len(holder.input) <= t.bias_index:
                continue
            dq = producers.get(holder.input[t.bias_index])
            name = f"onnxq_bias_correction_{k}"
            if dq is None and holder.input[t.bias_index] in inits:
                values = onnx.numpy_helper.to_array(inits[holder.input[t.bias_index]])
                step = np.ones(values.shape)
                if values.dtype != np.float32:
                    continue
                holder.input[t.bias_index] = name
            elif dq is not None and dq.op_type == "DequantizeLinear" and \
                    dq.input[0] in inits and dq.input[1] in inits:
                values = onnx.numpy_helper.to_array(inits[dq.input[0]])
                step = onnx.numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
                if values.dtype != np.int32:
                    continue
                dq.input[0] = name
            else:
                continue
            graph.input.append(helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(values.dtype), values.shape))
            self.values[name] = values.astype(np.float64)
            self.steps[name] = np.broadcast_to(step * t.beta, values.shape).copy()
            self.dtypes[name] = values.dtype
            self.of[t.node] = name
            self.outputs[t.node] = holder.output[0]
        self.model = _with_outputs(model, list(self.outputs.values()))

    def move(self, name: str, delta: np.ndarray) -> None:
        """Move bias ``name`` so that its output changes by ``delta`` (as near as its grid
        allows)."""
        units = delta.reshape(self.values[name].shape) / self.steps[name]
        if self.dtypes[name] == np.int32:
            units = np.round(units)
        self.values[name] = self.values[name] + units

    def feed(self) -> dict[str, np.ndarray]:
        out = {}
        for name, value in self.values.items():
            if self.dtypes[name] == np.int32:
                value = np.clip(value, -2**31, 2**31 - 1)
            out[name] = value.astype(self.dtypes[name])
        return out


def _output_means(session, specs, feeds, names: list[str], axes: list[int],
                  extra: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    sums: list[np.ndarray | None] = [None] * len(names)
    count = 0
    for feed in iter_feeds(feeds, specs, "calibration feed"):
        arrays = session.run(names, {**feed, **extra})
        for i, (a, axis) in enumerate(zip(arrays, axes, strict=True)):
            m = channel_mean(a, axis)
            sums[i] = m if sums[i] is None else sums[i] + m
        count += 1
    return [np.asarray(s, np.float64) / max(count, 1) for s in sums]


def full_biases(fp32: onnx.ModelProto, qdq: onnx.ModelProto, targets: Sequence[Target],
                feeds: Sequence[Mapping[str, np.ndarray]], *, budget_s: float,
                progress: bool = False) -> tuple[dict[str, np.ndarray], int, int]:
    """Per corrected target node: the shift of its output (a bias change, before Gemm's beta)
    that makes its output mean, in the quantized model with every upstream correction in place, equal
    FP32's. Also returns (levels done, levels in all): the budget may stop it early."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    work = _BiasInputs(qdq, targets)
    chosen = [t for t in targets if t.node in work.of]
    if not chosen or not feeds:
        return {}, 0, 0
    fp_session = make_session(_with_outputs(fp32, [t.output for t in chosen]), optimize=False)
    fp_means = dict(zip([t.node for t in chosen], _output_means(
        fp_session, input_specs(fp32), feeds, [t.output for t in chosen],
        [t.channel_axis for t in chosen], {}), strict=True))
    del fp_session
    session = make_session(work.model, optimize=False)
    specs = input_specs(qdq)
    initial = {k: v.copy() for k, v in work.values.items()}
    groups = levels(fp32, chosen)
    done = 0
    for group in tqdm(groups, desc="bias correction", unit="level", disable=not progress,
                      leave=False):
        if time.perf_counter() - start > budget_s:
            break
        got = _output_means(session, specs, feeds, [work.outputs[t.node] for t in group],
                            [t.channel_axis for t in group], work.feed())
        for t, q_mean in zip(group, got, strict=True):
            name = work.of[t.node]
            want = fp_means[t.node]
            if q_mean.shape != want.shape or want.size != work.values[name].size:
                continue
            work.move(name, want - q_mean)
        done += 1
    shifts = {}
    for t in chosen:
        name = work.of[t.node]
        moved = (work.values[name] - initial[name]) * work.steps[name]
        if np.any(moved):
            shifts[t.node] = moved.reshape(-1)
    return shifts, done, len(groups)
