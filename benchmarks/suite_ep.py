"""The suite's columns for another execution provider (``--ep openvino``): FP32, onnxq's
default output and NNCF's model timed on that EP at batch 1 (interleaved, in the EP's own
interpreter when its onnxruntime build cannot share this venv), and the checks: onnxq INT8
at least as fast as that EP's FP32 on every model, and at least as fast as NNCF's INT8 on
at least 80 % of them."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import onnx

from onnxq.ep import run_on_eps
from onnxq.errors import OnnxqError

#: the methods timed on the other EP: FP32, onnxq's default output and the one made for the
#: OpenVINO EP (``--ep openvino``), NNCF's (the natural peer there)
EP_METHODS = ("fp32", "onnxq_qdq", "onnxq_ov", "nncf")
#: the share of models where onnxq must be at least as fast as NNCF on the EP
MIN_SHARE_VS_NNCF = 0.8


def time_on_ep(models: Mapping[str, onnx.ModelProto], feed: dict, ep: str, *, threads: int,
               min_seconds: float, python: str | None) -> dict[str, float | str] | str:
    """Median batch-1 seconds per method on ``ep`` ("failed: why" for a model the EP
    refuses), or why nothing could run."""
    chosen = {m: model for m, model in models.items() if m in EP_METHODS}
    with tempfile.TemporaryDirectory(prefix="onnxq-suite-ep-") as tmp:
        paths = {}
        for method, model in chosen.items():
            paths[method] = str(Path(tmp) / f"{method}.onnx")
            onnx.save(model, paths[method])
        pythons = {ep: python} if python else None
        try:
            [result] = run_on_eps(paths, [feed], [ep], threads=threads, seconds=min_seconds,
                                  pythons=pythons)
        except OnnxqError as exc:  # find which model the EP refuses: each alone
            failed = {}
            for method, path in paths.items():
                try:
                    run_on_eps({method: path}, [feed], [ep], threads=threads, seconds=0.1,
                               pythons=pythons)
                except OnnxqError as one:
                    failed[method] = str(one)
            if not failed or "fp32" in failed:
                return str(exc)
            kept = {m: p for m, p in paths.items() if m not in failed}
            [result] = run_on_eps(kept, [feed], [ep], threads=threads, seconds=min_seconds,
                                  pythons=pythons)
            return {**result.seconds, **{m: f"failed: {why}" for m, why in failed.items()}}
    return result.seconds


def add_columns(rows: list[dict], seconds: dict[str, float | str] | str, ep: str) -> None:
    """``<ep>_latency_ms`` and ``<ep>_speedup_b1`` on the rows of the timed methods."""
    for row in rows:
        if row["method"] not in EP_METHODS:
            continue
        if isinstance(seconds, str):
            row[f"{ep}_status"] = seconds
            continue
        value = seconds.get(row["method"])
        if isinstance(value, str):
            row[f"{ep}_status"] = value
        elif value is not None and isinstance(seconds["fp32"], float):
            row[f"{ep}_latency_ms"] = value * 1e3
            row[f"{ep}_speedup_b1"] = seconds["fp32"] / value


def summary(rows: list[dict], ep: str, tolerance: float) -> dict:
    """Per real model: onnxq's and NNCF's speed-up on ``ep``, and the two checks."""
    by: dict[str, dict[str, dict]] = {}
    for row in rows:
        by.setdefault(row["model"], {})[row["method"]] = row
    table, beats, compared, slower, refused = [], 0, 0, [], []
    for model, methods in by.items():
        if methods.get("fp32", {}).get(f"{ep}_status"):
            refused.append(model)
        made = methods.get("onnxq_ov", {}).get(f"{ep}_speedup_b1")
        default = methods.get("onnxq_qdq", {}).get(f"{ep}_speedup_b1")
        mine = made if made is not None else default
        peer = methods.get("nncf", {}).get(f"{ep}_speedup_b1")
        fp32 = methods.get("fp32", {}).get(f"{ep}_latency_ms")
        if mine is None:
            continue
        if mine < 1.0 - tolerance:
            slower.append(model)
        if peer is not None:
            compared += 1
            beats += mine >= peer * (1.0 - tolerance)
        table.append({"model": model, "fp32_ms": fp32, "onnxq_speedup": mine,
                      "onnxq_default_speedup": default, "nncf_speedup": peer})
    return {"ep": ep, "rows": table, "slower_than_fp32": slower, "ep_refused_fp32": refused,
            "not_slower_than_fp32": bool(table) and not slower,
            "share_at_least_nncf": beats / compared if compared else None,
            "at_least_nncf_on_80pct": compared > 0 and beats / compared >= MIN_SHARE_VS_NNCF}


def render(summary_: dict, tolerance: float) -> str:
    ep = summary_["ep"]
    lines = [f"## The {ep} execution provider", "",
             f"Batch-1 latency on the {ep} EP (its own onnxruntime build), interleaved per "
             "model; speed-ups against FP32 on the same EP in the same run.", "",
             f"| model | FP32 ms ({ep}) | onnxq --ep {ep} speed-up | onnxq default "
             "(CPU EP) speed-up | NNCF speed-up |", "|---|---|---|---|---|"]
    for r in summary_["rows"]:
        fp32 = "-" if r["fp32_ms"] is None else f"{r['fp32_ms']:.3f}"
        peer = "-" if r["nncf_speedup"] is None else f"{r['nncf_speedup']:.2f}x"
        default = "-" if r["onnxq_default_speedup"] is None else \
            f"{r['onnxq_default_speedup']:.2f}x"
        lines.append(f"| {r['model']} | {fp32} | {r['onnxq_speedup']:.2f}x | {default} | "
                     f"{peer} |")
    share = summary_["share_at_least_nncf"]
    lines += ["", f"onnxq INT8 >= {1 - tolerance:.2f}x FP32 on every model: "
              f"{summary_['not_slower_than_fp32']}"
              + (f" (slower: {', '.join(summary_['slower_than_fp32'])})"
                 if summary_["slower_than_fp32"] else ""),
              f"the {ep} EP cannot run the FP32 model of: "
              f"{', '.join(summary_.get('ep_refused_fp32') or []) or 'none'}",
              f"onnxq INT8 at least as fast as NNCF (within {tolerance:.0%}) on "
              + ("-" if share is None else f"{share:.0%}") + " of the models (target "
              f"{MIN_SHARE_VS_NNCF:.0%}): {summary_['at_least_nncf_on_80pct']}"]
    return "\n".join(lines)
