"""The quantize report as one self-contained HTML page (``onnxq quantize --report x.html``):
what was quantized, what stayed float and why, the placement's predicted times, the notes.
Same page style and self-check as the compare report (``score_render``)."""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

from onnxq.report import QuantReport
from onnxq.score_render import CHECK_SCRIPT, PAGE_CSS

__all__ = ["report_text", "report_html"]


def _table(head: tuple[str, ...], rows: list[tuple]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                     for r in rows)
    return f"<div class=\"scroll\"><table><tr>{cells}</tr>\n{body}\n</table></div>"


def report_html(report: QuantReport) -> str:
    ops = Counter(op for _, op in report.quantized)
    types = (f"activations {report.activation_type}, weights {report.weight_type} "
             f"({report.weight_bits}-bit, {'per-channel' if report.per_channel else 'per-tensor'})"
             + (f", target {report.target}" if report.target else ""))
    what = (f"{len(report.quantized)} node(s) quantized: " + html.escape(", ".join(
        f"{op}×{n}" for op, n in sorted(ops.items()))) if report.quantized
        else "No node quantized (see “Kept in float”)")
    parts = [f"<h1>onnxq quantize report</h1><p>{what}.<br>Types: {html.escape(types)}.</p>"]
    predicted = (report.placement or {}).get("predicted_us") or {}
    if predicted:
        speedup = (report.placement or {}).get("predicted_speedup")
        parts.append("<h2>Placement: predicted batch-1 µs on this target</h2>" + _table(
            (*predicted, "predicted speed-up"), [(*(f"{v:.0f}" for v in predicted.values()),
                                                  f"{speedup:.2f}×" if speedup else "-")]))
    parts.append(f"<h2>Kept in float ({len(report.skipped)})</h2>" + (_table(
        ("node", "why"), list(report.skipped)) if report.skipped else "<p>none</p>"))
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>"
                                                      for n in report.notes) + "</ul>")
    parts.append("<h2>Quantized nodes</h2>" + _table(("node", "op"), list(report.quantized)))
    parts.append("<h2>Operators in the output</h2>" + _table(
        ("op", "count"), sorted(report.op_histogram.items())))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>onnxq quantize report</title><style>{PAGE_CSS}</style>{CHECK_SCRIPT}"
            "</head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def report_text(report: QuantReport, path: str | Path) -> str:
    """The report for ``path``: HTML for ``.html``/``.htm``, JSON otherwise."""
    if Path(path).suffix.lower() in (".html", ".htm"):
        return report_html(report)
    return json.dumps(report.to_dict(), indent=2) + "\n"
