"""``onnxq zoo``: quantize and score a list of models into one table, and the flags every
command that can run on Ray workers shares (``--workers``, ``--ray-address``)."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

__all__ = ["add_parser", "cmd_zoo", "cluster_args", "cluster_of", "run_zoo"]


def cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run on N Ray workers (the [ray] extra; same result, docs/scale-out.md)")
    p.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="join this Ray cluster (ray start --head prints it) instead of a "
                        "local Ray")


def cluster_of(args: argparse.Namespace):
    from onnxq.distributed import Cluster

    return Cluster.of(args.workers, args.ray_address)


def add_parser(sub) -> None:
    z = sub.add_parser("zoo", help="quantize and score a list of models (zoo.toml) into one "
                                   "table; reruns skip unchanged models")
    z.add_argument("zoo", metavar="ZOO.toml", help="the models, their data and settings "
                                                   "(format: docs/scale-out.md)")
    z.add_argument("--out", required=True, metavar="DIR",
                   help="results folder: zoo.md, zoo.json, zoo.png, models/, cache.json")
    z.add_argument("--no-latency", action="store_true",
                   help="skip the FP32 vs INT8 timing (no model can then pass)")
    z.add_argument("--threads", type=int, default=2, help="threads for the timing")
    z.add_argument("--seconds", type=float, default=1.0, help="timed work per model")
    z.add_argument("--rerun", action="store_true", help="ignore the cache: redo every model")
    cluster_args(z)
    z.add_argument("--quiet", "-q", action="store_true")


def cmd_zoo(args: argparse.Namespace) -> int:
    from onnxq.errors import ConfigError
    from onnxq.zoo import read_zoo

    if not args.threads >= 1 or not 0 < args.seconds < float("inf"):
        raise ConfigError(f"--threads {args.threads} must be >= 1 and --seconds "
                          f"{args.seconds} a positive number")
    entries = read_zoo(args.zoo)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder")
    run_zoo(entries, out, cluster=cluster_of(args), latency=not args.no_latency,
                   threads=args.threads, seconds=args.seconds, rerun=args.rerun,
                   progress=not args.quiet)
    if not args.quiet:
        print((out / "zoo.md").read_text(), end="")
        print(f"wrote {out / 'zoo.md'}, {out / 'zoo.json'} and {out / 'zoo.png'}")
    return 0


def run_zoo(entries, out: Path, *, cluster=None, latency: bool = True, threads: int = 2,
            seconds: float = 1.0, rerun: bool = False, progress: bool = True) -> list[dict]:
    """Quantize and score ``entries`` (skipping cached ones), time the new INT8 models
    against FP32 here, one after the other, and write the table. Returns the rows."""
    from tqdm.auto import tqdm

    from onnxq.zoo import entry_key, verdict

    (out / "models").mkdir(parents=True, exist_ok=True)
    cache_path = out / "cache.json"
    cache = {} if rerun or not cache_path.is_file() else json.loads(cache_path.read_text())
    keys = {e.name: entry_key(e, _stamp(e)) for e in entries}
    rows: dict[str, dict] = {}
    todo = []
    for e in entries:
        hit = cache.get(e.name)
        if hit and hit.get("key") == keys[e.name] and (out / "models" / f"{e.name}.onnx").is_file():
            rows[e.name] = dict(hit["row"], cached=True)
        else:
            todo.append(e)
    with tqdm(total=len(todo), desc="zoo", unit="model", disable=not progress) as bar:
        for e, (row, blob) in zip(todo, _quantized(todo, cluster), strict=True):
            if blob is not None:
                from onnxq.io import write_text_atomic

                write_text_atomic(out / "models" / f"{e.name}.onnx", blob)
                if latency:
                    row["speedup"] = _speedup(e, out, threads, seconds)
            rows[e.name] = verdict(row, e)
            if row["status"] == "ok":
                cache[e.name] = {"key": keys[e.name], "row": rows[e.name]}
            bar.update(1)
    ordered = [rows[e.name] for e in entries]
    _write(ordered, out, cache)
    return ordered


def _quantized(todo, cluster):
    """(row, INT8 bytes or None) per entry, in order: here, or on Ray workers."""
    from onnxq.zoo import ZooWorker

    if cluster is None:
        worker = ZooWorker()
        yield from (worker.run(e) for e in todo)
        return
    from onnxq.distributed import WorkerPool, connected

    with connected(cluster) as ray, WorkerPool(ray, ZooWorker, cluster.workers) as pool:
        for e, answer in zip(todo, pool.imap("run", [(e,) for e in todo], settle=True),
                             strict=True):
            if isinstance(answer, BaseException):
                answer = ({"name": e.name, "status": "failed", "cached": False,
                           "error": " ".join(str(answer).split())[:300]}, None)
            yield answer


def _stamp(entry) -> str:
    from onnxq import __version__
    from onnxq.kernels.isa import resolve_target
    from onnxq.runtime import ort_version

    target = resolve_target(entry.config.get("target", "auto"))
    return f"onnxq {__version__} onnxruntime {ort_version()} target {target}"


def _speedup(entry, out: Path, threads: int, seconds: float) -> float | None:
    from onnxq.data import load_feeds
    from onnxq.errors import OnnxqError
    from onnxq.score import measure_latency

    feed = dict(next(iter(load_feeds(entry.eval_data, batch=1))))
    feed.pop(entry.labels_key, None)
    try:
        times = measure_latency({"fp32": entry.model,
                                 "int8": str(out / "models" / f"{entry.name}.onnx")}, feed,
                                threads=threads, min_seconds=seconds)
    except OnnxqError as exc:
        print(f"onnxq: {entry.name}: timing failed: {exc}", file=sys.stderr)
        return None
    return round(times["fp32"] / times["int8"], 3)


def _write(rows: list[dict], out: Path, cache: dict) -> None:
    from onnxq.io import write_text_atomic
    from onnxq.zoo import ROW_KEYS

    passed = sum(1 for r in rows if r.get("passed"))
    write_text_atomic(out / "zoo.json", json.dumps(
        {"pass_rate": passed / len(rows), "rows": rows}, indent=2, sort_keys=True) + "\n")
    write_text_atomic(out / "cache.json", json.dumps(cache, indent=2, sort_keys=True) + "\n")
    lines = ["| " + " | ".join(ROW_KEYS) + " |", "|" + "---|" * len(ROW_KEYS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k in ROW_KEYS) + " |")
    lines.append(f"\npass rate: {passed}/{len(rows)} ({passed / len(rows):.0%})")
    write_text_atomic(out / "zoo.md", "\n".join(lines) + "\n")
    try:
        write_text_atomic(out / "zoo.png", _plot(rows))
    except ImportError:
        print("onnxq: zoo.png needs matplotlib (pip install matplotlib); the table and "
              "JSON are written", file=sys.stderr)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


def _plot(rows: list[dict]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 1 + 0.45 * len(rows)))
    FigureCanvasAgg(fig)
    speed, drop = fig.subplots(1, 2, sharey=True)
    names = [r["name"] for r in rows][::-1]
    colors = ["tab:green" if r.get("passed") else "tab:red" for r in rows][::-1]
    speed.barh(names, [r.get("speedup") or 0 for r in rows][::-1], color=colors)
    speed.axvline(1.0, color="black", lw=0.8)
    speed.set_xlabel("INT8 speed-up over FP32 (batch 1)")
    drop.barh(names, [r.get("drop") or 0 for r in rows][::-1], color=colors)
    drop.set_xlabel("metric drop (FP32 - INT8)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()
