"""Rendering of the per-tensor error report: Markdown, HTML with an embedded SQNR chart, PNG.
matplotlib is imported only when a chart is drawn (Agg canvas, no global pyplot state)."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxq.errors import ConfigError

if TYPE_CHECKING:
    from onnxq.score_types import TensorError

__all__ = ["render_report", "plot_sqnr", "PAGE_CSS", "CHECK_SCRIPT"]


_COLUMNS = ("#", "tensor", "SQNR (dB)", "cosine", "max abs error", "saturated", "scale",
            "zero point", "elements")
_TITLE = "Per-tensor quantization error"
PAGE_CSS = ("body{font:14px sans-serif;margin:8px;max-width:1100px}h1{font-size:1.3em}"
        "img{max-width:100%;height:auto}.scroll{overflow-x:auto}"
        "table{border-collapse:collapse;font:13px sans-serif}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:right}td:nth-child(2){text-align:left;"
        "word-break:break-all;min-width:8em}th{position:sticky;top:0;background:#f4f4f4}")
#: the page checks itself once loaded (a headless browser reads the result from the DOM):
#: tables and images rendered, no image broken
CHECK_SCRIPT = ("<script>addEventListener('load',()=>{const i=[...document.images];"
          "document.body.dataset.rendered=`tables:${document.querySelectorAll('table').length}"
          " images:${i.length} broken:${i.filter(x=>!x.complete||!x.naturalWidth).length}`})"
          "</script>")


def _cells(i: int, t: TensorError) -> list[str]:
    return [str(i), t.name, f"{t.sqnr_db:.2f}", f"{t.cosine:.6f}", f"{t.max_abs_error:.4g}",
            f"{100 * t.saturated_fraction:.3f}%", f"{t.scale:.4g}", str(t.zero_point),
            str(t.elements)]


def _markdown(report: Sequence[TensorError], missing: Sequence[str]) -> str:
    lines = [f"# {_TITLE}", "", f"{len(report)} quantized tensor(s), worst first.", "",
             "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for i, t in enumerate(report, 1):
        cells = [c.replace("|", "\\|") for c in _cells(i, t)]
        cells[1] = f"`{cells[1]}`"
        lines.append("| " + " | ".join(cells) + " |")
    if missing:
        lines += ["", "Not matched to an FP32 tensor (skipped): "
                  + ", ".join(f"`{m}`" for m in missing)]
    return "\n".join(lines) + "\n"


def _latency_html(latency: Mapping[str, float] | None) -> str:
    """A bar chart of batch-1 latency per model (µs), inline."""
    if not latency:
        return ""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 1.2 + 0.4 * len(latency)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names, us = list(latency), [1e6 * v for v in latency.values()]
    ax.barh(range(len(us)), us, color=["#7f7f7f", *["#1f77b4"] * (len(us) - 1)])
    ax.set_yticks(range(len(us)), names)
    ax.invert_yaxis()
    ax.set_xlabel("batch-1 latency (µs), lower is better; this CPU, interleaved")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    first = next(iter(latency.values()))
    speed = ", ".join(f"{n} {first / v:.2f}×" for n, v in list(latency.items())[1:])
    return (f"<h2>Latency</h2><p>Speed-up over {html.escape(names[0])}: "
            f"{html.escape(speed)}.</p><img src=\"data:image/png;base64,"
            f"{base64.b64encode(buf.getvalue()).decode('ascii')}\" alt=\"latency\">")


def _float_html(float_nodes: Sequence[tuple[str, ...]]) -> str:
    if not float_nodes:
        return ""
    unknown = "not recorded (a model onnxq did not quantize, or an older onnxq)"
    rows = "\n".join(
        f"<tr><td>{html.escape(f[1])}</td><td>{html.escape(f[0])}</td>"
        f"<td>{html.escape(f[2] if len(f) > 2 and f[2] else unknown)}</td></tr>"
        for f in float_nodes)
    return (f"<h2>Compute kept in float ({len(float_nodes)})</h2><p>Conv/Gemm/MatMul nodes "
            "that read no int8 input, and why onnxq kept them float.</p>"
            f"<div class=\"scroll\"><table><tr><th>op</th><th>node</th><th>why</th></tr>\n"
            f"{rows}\n</table></div>")


def _html(report: Sequence[TensorError], missing: Sequence[str],
          latency: Mapping[str, float] | None = None,
          float_nodes: Sequence[tuple[str, ...]] = ()) -> str:
    png = base64.b64encode(_sqnr_png(report)).decode("ascii")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
    rows = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(i, t))
                     + "</tr>" for i, t in enumerate(report, 1))
    skipped = ("<p>Not matched to an FP32 tensor (skipped): "
               + html.escape(", ".join(missing)) + "</p>") if missing else ""
    worst = (f"<p>Worst: <b>{html.escape(report[0].name)}</b> at {report[0].sqnr_db:.1f} dB "
             f"SQNR, {100 * report[0].saturated_fraction:.2f}% saturated.</p>"
             if len(report) else "")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_TITLE}</title><style>{PAGE_CSS}</style>{CHECK_SCRIPT}</head><body>\n"
            f"<h1>{_TITLE}</h1>\n<p>{len(report)} quantized tensor(s), worst first (SQNR of "
            f"the int8 value against FP32 on the evaluation data).</p>\n{worst}\n"
            f"<img src=\"data:image/png;base64,{png}\" alt=\"SQNR per tensor\">\n"
            f"<div class=\"scroll\"><table><tr>{head}</tr>\n{rows}\n</table></div>\n"
            f"{skipped}\n{_latency_html(latency)}\n{_float_html(float_nodes)}\n"
            "</body></html>\n")


def _sqnr_png(report: Sequence[TensorError]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.array([t.sqnr_db for t in report], dtype=np.float64)
    finite = values[np.isfinite(values)]
    top = float(finite.max()) + 10.0 if finite.size else 60.0
    values = np.nan_to_num(values, nan=0.0, posinf=top, neginf=0.0)
    fig = Figure(figsize=(8, 1.5 + 0.25 * max(len(report), 1)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if len(report):
        colors = ["#d62728" if v < 20 else "#ff7f0e" if v < 30 else "#2ca02c" for v in values]
        ax.barh(range(len(report)), values, color=colors)
        ax.set_yticks(range(len(report)), [t.name for t in report], fontsize=7)
        ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, "no tensors", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("SQNR (dB), higher is better")
    ax.set_title("Per-tensor SQNR, worst first")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def plot_sqnr(report: Sequence[TensorError], png_path: str | os.PathLike) -> Path:
    """A PNG horizontal bar chart of the per-tensor SQNR (matplotlib, no display needed)."""
    (dest := Path(png_path)).write_bytes(_sqnr_png(report))
    return dest


def render_report(report: Sequence[TensorError], path: str | os.PathLike, *,
                  latency: Mapping[str, float] | None = None,
                  float_nodes: Sequence[tuple[str, ...]] = ()) -> Path:
    """Write ``report`` as a Markdown table (``.md``) or an HTML page with a SQNR chart (and,
    when given, a latency chart and the compute nodes kept in float)."""
    dest = Path(path)
    suffix = dest.suffix.lower()
    if suffix not in (".md", ".html", ".htm"):
        raise ConfigError(f"cannot render a report as {dest.name!r}: use a .md or .html path")
    from onnxq.io import write_text_atomic

    missing = getattr(report, "missing", ())
    text = _markdown(report, missing) if suffix == ".md" else _html(
        report, missing, latency, float_nodes)
    return write_text_atomic(dest, text)


