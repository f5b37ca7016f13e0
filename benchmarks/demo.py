"""The main job on a real pretrained model: Google's Magika (the content-type classifier its
``magika`` package ships), quantized by onnxq and by onnxruntime's quantize_static (defaults,
and its best settings for this CPU), scored on files of this machine labelled by extension:
accuracy, size, batch-1 latency and speed-up in one table. onnxq appears twice: its default
output, and ``onnxq.tune``'s with no drop allowed in top-1 agreement with FP32 on the
calibration files (the evaluation files and their labels are never used for tuning).

    python -m benchmarks.demo [--out DIR] [--quiet]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import onnxq
from benchmarks import common
from onnxq.kernels.isa import host_target
from onnxq.tune import TuneTarget, tune


@contextlib.contextmanager
def _silenced():
    """The peer's console noise (onnxruntime's "consider pre-processing" advice, logging and
    Python warnings) kept off the table."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _agreement(fp32, feeds):
    """Top-1 agreement with FP32 on ``feeds`` (the calibration files: tuning never sees the
    evaluation files or their labels)."""
    import numpy as np

    reference = [common.session(fp32, 2).run(None, f)[0].argmax(-1) for f in feeds]

    def metric(model) -> float:
        sess = common.session(model, 2)
        return float(np.mean([np.array_equal(sess.run(None, f)[0].argmax(-1), r)
                              for f, r in zip(feeds, reference, strict=True)]))

    return metric


def _runner(model):
    sess = common.session(model, 2)
    return lambda feed: sess.run(None, feed)


def _row(name, model, bench, ref, seconds):
    result = bench.evaluate(_runner(model), ref) if ref is not None else None
    return {"model": name, "metric": None if result is None else result.metric,
            "size_kb": len(model.SerializeToString()) / 1024, "quantize_s": seconds,
            "result": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="results folder")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from benchmarks.real_models import magika

    start = time.perf_counter()
    bench = magika()
    print(f"Magika ({bench.description}); {bench.data['calibration']}, "
          f"{bench.data['eval_samples']} evaluation files "
          f"(loaded in {time.perf_counter() - start:.1f} s)")
    models = {"FP32": (bench.model, None)}
    start = time.perf_counter()
    models["onnxq INT8 (default)"] = (onnxq.quantize(bench.model, bench.calib,
                                                      progress=not args.quiet).model,
                                      time.perf_counter() - start)
    start = time.perf_counter()
    tuned = tune(bench.model, bench.calib, _agreement(bench.model, bench.calib),
                 target=TuneTarget(max_drop=0.0, time_budget=120), progress=not args.quiet)
    models["onnxq INT8 (tune: no drop)"] = (tuned.model, time.perf_counter() - start)
    with _silenced():
        models["onnxruntime quantize_static (defaults)"] = common.ort_quantize_static(
            bench.model, bench.calib)
        models["onnxruntime quantize_static (best: u8, per-channel)"] = \
            common.ort_quantize_static(bench.model, bench.calib, best=True)
    ref = bench.evaluate(_runner(bench.model), None)
    rows = [_row(n, m, bench, ref, s) if n != "FP32" else
            {"model": n, "metric": ref.metric, "size_kb": len(m.SerializeToString()) / 1024,
             "quantize_s": None} for n, (m, s) in models.items()]
    sessions = {n: common.session(m, 2) for n, (m, _) in models.items()}
    latency = common.time_interleaved(sessions, bench.feed_b1, min_seconds=2.0)
    for row in rows:
        row["latency_us"] = latency[row["model"]] * 1e6
        row["speedup"] = latency["FP32"] / latency[row["model"]]
        row["drop"] = ref.metric - row["metric"]
        row.pop("result", None)
    _print(rows, bench)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(
        {"cpu": host_target(), "threads": 2, "model": "magika", "rows": rows}, indent=2) + "\n")
    return 0


def _print(rows: list[dict], bench) -> None:
    head = (f"| model | {bench.metric} | drop | size KB | batch-1 latency us | speed-up | "
            "quantize s |")
    print(f"\nCPU: {host_target()} (onnxq's target), 2 threads, interleaved timing\n")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for r in rows:
        q = "-" if r["quantize_s"] is None else f"{r['quantize_s']:.1f}"
        print(f"| {r['model']} | {r['metric']:.2f} | {r['drop']:.2f} | {r['size_kb']:.1f} | "
              f"{r['latency_us']:.0f} | {r['speedup']:.2f}x | {q} |")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
