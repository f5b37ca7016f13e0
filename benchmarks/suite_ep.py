"""The suite's columns for another execution provider (``--ep openvino``): FP32, onnxq's
default output and NNCF's model timed on that EP at batch 1 (interleaved, in the EP's own
interpreter when its onnxruntime build cannot share this venv), and the checks: onnxq INT8
at least as fast as that EP's FP32 on every model, and at least as fast as NNCF's INT8 on
at least 80 % of them."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx

from onnxq.ep import outputs_on_ep, run_on_eps
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


def _recorded(evaluate: Callable, fp32_run: Callable) -> list[dict]:
    """The feeds the task's evaluator passes, in order (answered by FP32 on the CPU EP)."""
    feeds: list[dict] = []

    def run(feed: dict) -> list:
        feeds.append({k: np.array(v, copy=True) for k, v in feed.items()})
        return fp32_run(feed)

    evaluate(run, None)
    return feeds


def _key(feed: Mapping[str, np.ndarray]) -> tuple:
    return tuple((k, np.asarray(v).dtype.str, np.shape(v),
                  hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest())
                 for k, v in sorted(feed.items()))


def _replay(feeds: list[dict], outputs: list[list[np.ndarray]]) -> Callable[[dict], list]:
    """A runner answering the evaluator's calls from outputs computed on the EP, looked up
    by the feed's content (the evaluator may ask for fewer, in another order, than FP32's
    pass recorded); a feed never recorded (a stream whose state is the model's own output)
    is an error."""
    index = {_key(f): i for i, f in enumerate(feeds)}

    def run(feed: dict) -> list:
        i = index.get(_key(feed))
        if i is None:
            raise RuntimeError("the evaluator's feeds depend on the model's own outputs (a "
                               "stream), so they cannot be replayed on the EP")
        return outputs[i]

    return run


def score_on_ep(bench, models: Mapping[str, onnx.ModelProto], fp32_run: Callable, ep: str, *,
                threads: int, python: str | None,
                accurate: Callable[[dict], bool]) -> dict[str, dict | str]:
    """The task metric of each model computed from its outputs on ``ep``: the evaluator's
    feeds are recorded once, run on the EP in one go, and replayed to the evaluator. Per
    method ``{"metric", "drop", "cosine", "accurate"}`` (drop against FP32 on the same EP),
    or why it could not be scored."""
    chosen = {m: model for m, model in models.items() if m in EP_METHODS}
    try:
        feeds = _recorded(bench.evaluate, fp32_run)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the suite goes on
        return {m: f"not scored on the {ep} EP: {exc}" for m in chosen}
    pythons = {ep: python} if python else None
    outputs: dict[str, list] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="onnxq-suite-score-") as tmp:
        for method, model in chosen.items():  # one at a time: memory, and a refusal is its own
            path = str(Path(tmp) / f"{method}.onnx")
            onnx.save(model, path)
            try:
                outputs.update(outputs_on_ep({method: path}, feeds, ep, threads=threads,
                                             pythons=pythons))
            except OnnxqError as exc:
                failed[method] = f"failed on the {ep} EP: {' '.join(str(exc).split())[:160]}"
    if "fp32" not in outputs:
        return {m: failed.get("fp32", "FP32 did not run") for m in chosen}
    try:
        ref = bench.evaluate(_replay(feeds, outputs["fp32"]), None)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the suite goes on
        return {m: f"not scored on the {ep} EP: {' '.join(str(exc).split())[:160]}"
                for m in chosen}
    scores: dict[str, dict | str] = dict(failed)
    for method in outputs:
        try:
            res = ref if method == "fp32" else bench.evaluate(_replay(feeds, outputs[method]),
                                                              ref)
        except Exception as exc:  # noqa: BLE001 - one model's scoring must not stop the suite
            scores[method] = f"not scored on the {ep} EP: {' '.join(str(exc).split())[:160]}"
            continue
        a = np.asarray(ref.outputs, np.float64).ravel()
        b = np.asarray(res.outputs, np.float64).ravel()
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
        drop = ref.metric - res.metric
        got = {"metric": res.metric, "drop": drop, "cosine": cosine}
        scores[method] = {**got, "accurate": accurate(got)}
    return scores


def add_scores(rows: list[dict], scores: dict[str, dict | str], ep: str) -> None:
    """``<ep>_metric``, ``<ep>_drop``, ``<ep>_cosine``, ``<ep>_accurate`` (or
    ``<ep>_score_status``) on the rows of the scored methods."""
    for row in rows:
        got = scores.get(row["method"])
        if isinstance(got, str):
            row[f"{ep}_score_status"] = got
        elif got is not None:
            row.update({f"{ep}_{k}": v for k, v in got.items()})


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


def _drop(row: dict, ep: str) -> str:
    """The metric drop on the EP as a cell: "0.25", "0.25 (missed)", or "-"."""
    if f"{ep}_drop" not in row:
        return "-"
    return f"{row[f'{ep}_drop']:.2f}" + ("" if row.get(f"{ep}_accurate") else " (missed)")


def summary(rows: list[dict], ep: str, tolerance: float) -> dict:
    """Per real model: onnxq's and NNCF's speed-up and task-metric drop on ``ep``, and the
    checks: onnxq not slower than FP32; at least as fast as NNCF on ``MIN_SHARE_VS_NNCF`` of
    the models (speed alone); and the same share counting NNCF's model as beaten where it
    misses the accuracy target on the EP and onnxq's meets it."""
    by: dict[str, dict[str, dict]] = {}
    for row in rows:
        by.setdefault(row["model"], {})[row["method"]] = row
    # the model made for the EP when the run made one; else the default model, and the table
    # says so
    made_for_ep = any(row["method"] == "onnxq_ov" for row in rows)
    table, beats, beats_accurate, compared, slower, refused, inaccurate = [], 0, 0, 0, [], [], []
    for model, methods in by.items():
        if methods.get("fp32", {}).get(f"{ep}_status"):
            refused.append(model)
        default = methods.get("onnxq_qdq", {}).get(f"{ep}_speedup_b1")
        # the model made for the EP when it was made: one the EP refuses is a miss, never
        # replaced by the default model's figure
        mine_row = methods.get("onnxq_ov" if made_for_ep else "onnxq_qdq") or {}
        mine = mine_row.get(f"{ep}_speedup_b1")
        peer_row = methods.get("nncf", {})
        peer = peer_row.get(f"{ep}_speedup_b1")
        fp32 = methods.get("fp32", {}).get(f"{ep}_latency_ms")
        if fp32 is None or (mine is None and default is None):
            continue
        if mine is None or mine < 1.0 - tolerance:
            slower.append(model)
        if mine_row.get(f"{ep}_accurate") is False:
            inaccurate.append(model)
        if peer is not None:
            compared += 1
            fast = mine is not None and mine >= peer * (1.0 - tolerance)
            beats += fast
            beats_accurate += mine is not None and mine_row.get(f"{ep}_accurate") is not False \
                and (fast or peer_row.get(f"{ep}_accurate") is False)
        table.append({"model": model, "fp32_ms": fp32, "onnxq_speedup": mine,
                      "onnxq_default_speedup": default, "nncf_speedup": peer,
                      "onnxq_drop": _drop(mine_row, ep), "nncf_drop": _drop(peer_row, ep)})
    share = beats / compared if compared else None
    return {"ep": ep, "onnxq_model": "onnxq_ov" if made_for_ep else "onnxq_qdq",
            "rows": table, "slower_than_fp32": slower, "ep_refused_fp32": refused,
            "not_slower_than_fp32": bool(table) and not slower,
            "missed_accuracy_on_ep": inaccurate,
            "share_at_least_nncf": share,
            "share_at_least_nncf_accurate": beats_accurate / compared if compared else None,
            "at_least_nncf_on_80pct": share is not None and share >= MIN_SHARE_VS_NNCF}


def render(summary_: dict, tolerance: float) -> str:
    ep = summary_["ep"]
    made_for_ep = summary_.get("onnxq_model", "onnxq_ov") == "onnxq_ov"
    mine_label = f"onnxq --ep {ep}" if made_for_ep else "onnxq default model"
    lines = [f"## The {ep} execution provider", "",
             f"Batch-1 latency on the {ep} EP (its own onnxruntime build), interleaved per "
             "model; speed-ups against FP32 on the same EP in the same run. Drops: the task "
             f"metric computed from the outputs on the {ep} EP, against FP32 on that EP "
             "(\"missed\": beyond the model's accuracy target)."
             + ("" if made_for_ep else f" This run made no `--ep {ep}` model (method "
                "onnxq_ov): onnxq's figures are its default (CPU EP) model's on this EP."),
             "", f"| model | FP32 ms ({ep}) | {mine_label} speed-up | drop | onnxq default "
             "(CPU EP) speed-up | NNCF speed-up | NNCF drop |", "|---|---|---|---|---|---|---|"]
    for r in summary_["rows"]:
        fp32 = "-" if r["fp32_ms"] is None else f"{r['fp32_ms']:.3f}"
        peer = "-" if r["nncf_speedup"] is None else f"{r['nncf_speedup']:.2f}x"
        default = "-" if r["onnxq_default_speedup"] is None else \
            f"{r['onnxq_default_speedup']:.2f}x"
        mine = "failed" if r["onnxq_speedup"] is None else f"{r['onnxq_speedup']:.2f}x"
        lines.append(f"| {r['model']} | {fp32} | {mine} | {r['onnxq_drop']} | {default} | "
                     f"{peer} | {r['nncf_drop']} |")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.0%}"

    lines += ["", f"onnxq INT8 >= {1 - tolerance:.2f}x FP32 on every model: "
              f"{summary_['not_slower_than_fp32']}"
              + (f" (slower: {', '.join(summary_['slower_than_fp32'])})"
                 if summary_["slower_than_fp32"] else ""),
              f"onnxq INT8 misses the accuracy target on the {ep} EP on: "
              f"{', '.join(summary_['missed_accuracy_on_ep']) or 'none'}",
              f"the {ep} EP cannot run the FP32 model of: "
              f"{', '.join(summary_.get('ep_refused_fp32') or []) or 'none'}",
              f"onnxq INT8 at least as fast as NNCF (within {tolerance:.0%}) on "
              f"{pct(summary_['share_at_least_nncf'])} of the models (target "
              f"{MIN_SHARE_VS_NNCF:.0%}): {summary_['at_least_nncf_on_80pct']}",
              "counting NNCF's model as beaten where it misses the accuracy target on the EP "
              f"and onnxq's meets it: {pct(summary_['share_at_least_nncf_accurate'])}"]
    return "\n".join(lines)
