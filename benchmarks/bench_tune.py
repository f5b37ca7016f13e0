"""Tuning on a depthwise/HardSwish CNN (MobileNetV3-shaped, built in code) where onnxruntime's
quantize_static output is slower than FP32: onnxq's tuned model must meet the accuracy target
(output cosine within --max-drop of FP32) and be at least as fast as FP32.

    python -m benchmarks.bench_tune [--quick] [--batch 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time

import onnxq
from benchmarks import common
from onnxq.tune import TuneTarget, tune
from tests import builders as B


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-drop", type=float, default=0.001)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    image = 96 if args.quick else 224
    load = common.wait_for_idle(max_wait=5 if args.quick else 60)
    fp32 = B.mobilenet_shaped(image=image)
    calib = B.feeds(fp32, batch=1, n=8, seed=1)
    evals = B.feeds(fp32, batch=4, n=4, seed=2)
    latency_feed = B.feeds(fp32, batch=args.batch, seed=3)[0]
    start = time.perf_counter()
    tuned = tune(fp32, calib, eval_data=evals, latency_feed=latency_feed,
                 target=TuneTarget(max_drop=args.max_drop, time_budget=900))
    tune_s = time.perf_counter() - start
    start = time.perf_counter()
    plain = onnxq.quantize(fp32, calib, progress=False)
    models = {"fp32": (fp32, None), "onnxq tuned": (tuned.model, tune_s),
              "onnxq plain qdq": (plain.model, time.perf_counter() - start),
              "ort quantize_static (defaults)": common.ort_quantize_static(fp32, calib),
              "ort quantize_static (u8, per-channel)": common.ort_quantize_static(
                  fp32, calib, best=True)}
    rows = common.compare_models(models, B.feeds(fp32, batch=1, seed=5)[0], latency_feed,
                                 evals, min_seconds=0.5 if args.quick else 2.0)
    by = {r["model"]: r for r in rows}
    is_int8 = any(n.op_type == "QuantizeLinear" for n in tuned.model.graph.node)
    targets = {"tuned_not_slower_than_fp32 (3% timing noise band)":
               by["onnxq tuned"]["speedup_b8"] >= 0.97,
               "tuned_is_int8 (else the FP32 fallback)": is_int8,
               "tuned_within_max_drop": 1 - by["onnxq tuned"]["cosine"] <= args.max_drop,
               "ort_defaults_slower_than_fp32": by["ort quantize_static (defaults)"][
                   "speedup_b8"] < 1.0}
    env = common.environment()
    text = (f"Tuning a MobileNetV3-shaped CNN ({image}x{image}, batch {args.batch}, 2 threads, "
            f"onnxruntime {env['onnxruntime']}, {env['date']}, load {load:.2f})\n\n"
            f"{common.markdown_table(rows, common.MODEL_COLUMNS)}\n\n"
            f"targets: {targets}\n\ntrial log:\n{tuned.table()}")
    print(text)
    path = common.write_results("tune" + ("_quick" if args.quick else ""),
                                {"rows": rows, "targets": targets, "log": tuned.log(),
                                 "environment": env}, text, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
