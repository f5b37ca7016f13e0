"""``onnxq profile``: where the time goes, per node, per op type and per region, in an FP32
model and (optionally) its INT8 model, from onnxruntime's profiler on this CPU.

A *region* is a compute node of the FP32 model (Conv, Gemm, MatMul …) with the nodes that
follow it up to the next one; every node of an optimized graph is charged to one. A node whose
name or output names (after onnxruntime's suffixes are stripped) match the FP32 model's is
charged to that node's region; conversions and layout changes (QuantizeLinear,
DequantizeLinear, Transpose, Reorder…) to the region of the nearest matched node upstream
(else downstream): the region whose int8 or float choice caused them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxq import runtime

__all__ = ["profile", "Profile", "ProfileRow", "render_table", "plot_regions", "to_json"]

_ANCHORS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "Attention"}
_SUFFIX = re.compile(r"(_token_\d+|_nchwc|_hsig|_QuantizeLinear|_DequantizeLinear|_quantized|"
                     r"_dequantized|_output_\d+|_fused)+$")
_OVERHEAD = {"QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput", "ReorderOutput",
             "DynamicQuantizeLinear", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


@dataclass(frozen=True, slots=True)
class ProfileRow:
    region: str
    op: str  # the region's compute op
    fp32_us: float
    int8_us: float | None
    int8_overhead_us: float | None  # of int8_us: conversions and layout changes


@dataclass(frozen=True, slots=True)
class Profile:
    rows: tuple[ProfileRow, ...]
    ops: dict[str, dict[str, float]]  # model label → op type → µs
    totals: dict[str, float] = field(default_factory=dict)
    runs: int = 0
    threads: int = 0

    def to_dict(self) -> dict:
        return {"regions": [dataclasses.asdict(r) for r in self.rows],
                "op_types_us": self.ops, "totals_us": self.totals, "runs": self.runs,
                "threads": self.threads}


def _regions(fp32: onnx.ModelProto) -> tuple[dict[str, str], dict[str, str]]:
    """FP32 node name → region, and tensor name → region (of its producer)."""
    producer = {o: n for n in fp32.graph.node for o in n.output}
    region: dict[str, str] = {}
    ops: dict[str, str] = {}
    for n in fp32.graph.node:  # topological order
        if n.op_type in _ANCHORS:
            region[n.name] = n.name
        else:
            ups = [region[producer[i].name] for i in n.input if i in producer
                   and producer[i].name in region]
            region[n.name] = ups[0] if ups else "(input)"
        ops[n.name] = n.op_type
    tensors = {o: region[n.name] for n in fp32.graph.node for o in n.output}
    return region, tensors


def _charge(optimized: onnx.ModelProto, names: dict[str, str], tensors: dict[str, str]
            ) -> dict[str, str]:
    """Node of the optimized graph → region of the FP32 model."""
    nodes = list(optimized.graph.node)
    found: dict[str, str] = {}
    for n in nodes:
        if n.op_type in _OVERHEAD:
            continue
        for key in [n.name, _SUFFIX.sub("", n.name)] + [_SUFFIX.sub("", o) for o in n.output]:
            if key in names or key in tensors:
                found[n.name] = names.get(key) or tensors[key]
                break
    producer = {o: n for n in nodes for o in n.output}
    readers: dict[str, list] = defaultdict(list)
    for n in nodes:
        for i in n.input:
            readers[i].append(n)
    for n in nodes:
        if n.name not in found:
            found[n.name] = _nearest(n, found, producer, readers, tensors)
    return found


def _nearest(node, found, producer, readers, tensors) -> str:
    for direction in ("up", "down"):
        frontier, seen = [node], {node.name}
        while frontier:
            nxt = []
            for cur in frontier:
                links = ([producer[i] for i in cur.input if i in producer] if direction == "up"
                         else [r for o in cur.output for r in readers.get(o, [])])
                for other in links:
                    if other.name in found:
                        return found[other.name]
                    if other.name not in seen:
                        seen.add(other.name)
                        nxt.append(other)
            frontier = nxt
        if direction == "up":
            hits = [tensors[i] for i in node.input if i in tensors]
            if hits:
                return hits[0]
    return "(input)"


def profile(fp32: onnx.ModelProto | str | os.PathLike, feed: Mapping[str, np.ndarray],
            int8: onnx.ModelProto | str | os.PathLike | None = None, *, runs: int = 50,
            threads: int = 2) -> Profile:
    """Per region and per op type, µs per run of ``fp32`` (and ``int8``) on ``feed``."""
    fp32_model = fp32 if isinstance(fp32, onnx.ModelProto) else onnx.load(os.fspath(fp32))
    names, tensors = _regions(fp32_model)
    by_region: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    ops: dict[str, dict[str, float]] = {}
    models = {"fp32": fp32_model, **({"int8": int8} if int8 is not None else {})}
    for label, model in models.items():
        src = model if isinstance(model, onnx.ModelProto) else os.fspath(model)
        times, optimized = runtime.profile_nodes(src, feed, runs=runs, threads=threads)
        charged = _charge(optimized, names, tensors)
        ops[label] = defaultdict(float)
        for node, (op, us) in times.items():
            region = charged.get(node, "(input)")
            by_region[region][label] += us
            if op in _OVERHEAD:
                by_region[region][label + "_overhead"] += us
            ops[label][op] += us
    anchor_op = {n.name: n.op_type for n in fp32_model.graph.node}
    order = list(dict.fromkeys(["(input)", *names.values()]))
    rows = tuple(ProfileRow(region=r, op=anchor_op.get(r, "-"), fp32_us=by_region[r]["fp32"],
                            int8_us=by_region[r]["int8"] if int8 is not None else None,
                            int8_overhead_us=by_region[r]["int8_overhead"]
                            if int8 is not None else None)
                 for r in order if r in by_region)
    totals = {label: sum(v.values()) for label, v in ops.items()}
    return Profile(rows=rows, ops={k: dict(sorted(v.items(), key=lambda kv: -kv[1]))
                                   for k, v in ops.items()}, totals=totals, runs=runs,
                   threads=threads)


def render_table(p: Profile, top: int | None = None) -> str:
    """Markdown: the regions (largest first when ``top`` is given), then the op types."""
    both = any(r.int8_us is not None for r in p.rows)
    rows = sorted(p.rows, key=lambda r: -max(r.fp32_us, r.int8_us or 0)) if top else p.rows
    lines = ["| region | op | FP32 µs | " + ("INT8 µs | of which conversions µs | speed-up |"
                                          if both else ""),
             "|---|---|---|" + ("---|---|---|" if both else "")]
    for r in rows[:top] if top else rows:
        cells = [r.region, r.op, f"{r.fp32_us:.1f}"]
        if both:
            speed = r.fp32_us / r.int8_us if r.int8_us else float("nan")
            cells += [f"{r.int8_us:.1f}", f"{r.int8_overhead_us:.1f}", f"{speed:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| op type | " + " | ".join(f"{k} µs" for k in p.ops) + " |")
    lines.append("|---|" + "---|" * len(p.ops))
    all_ops = list(dict.fromkeys(op for v in p.ops.values() for op in v))
    for op in all_ops:
        lines.append(f"| {op} | " + " | ".join(f"{v.get(op, 0.0):.1f}" for v in p.ops.values())
                     + " |")
    lines.append("| **total** | " + " | ".join(f"{t:.1f}" for t in p.totals.values()) + " |")
    return "\n".join(lines)


def plot_regions(p: Profile, top: int = 25) -> bytes:
    """A PNG bar chart of FP32 vs INT8 µs per region (the ``top`` largest)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sorted(p.rows, key=lambda r: -max(r.fp32_us, r.int8_us or 0))[:top][::-1]
    fig = Figure(figsize=(8, 1 + 0.3 * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    ax.barh(y + 0.2, [r.fp32_us for r in rows], 0.4, label="FP32", color="tab:gray")
    if any(r.int8_us is not None for r in rows):
        ax.barh(y - 0.2, [r.int8_us or 0 for r in rows], 0.4, label="INT8", color="tab:blue")
    ax.set_yticks(y, [r.region[:40] for r in rows], fontsize=7)
    ax.set_xlabel("µs per run (onnxruntime profiler)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def to_json(p: Profile) -> str:
    return json.dumps(p.to_dict(), indent=2) + "\n"
