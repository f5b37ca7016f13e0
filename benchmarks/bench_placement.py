"""Latency-aware placement: onnxq's default (objective=latency) against its all-int8 plan
(objective=size), FP32 and onnxruntime's best quantize_static setting (QDQ, u8 activations,
per-channel s8 weights), at batch 1 and 8, on CNNs and a BERT-base-shaped encoder built in
code and on the digits CNN of ``make demo`` (random weights: speed only). Each table is timed
interleaved in one run; the predicted speed-up is the cost model's.

    python -m benchmarks.bench_placement [--quick] [--threads 2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import onnxq
from benchmarks import common
from tests import builders as B


def _digits(image: int = 28):
    from benchmarks import digits

    rng = np.random.default_rng(0)
    return digits.to_onnx(digits._init_params(rng))


MODELS = {
    "lcnet (PP-LCNet-class, SE, HardSwish)": lambda q: B.lcnet_shaped(image=96 if q else 224),
    "mobilenetv3-shaped": lambda q: B.mobilenet_shaped(image=96 if q else 224),
    "resnet18-shaped": lambda q: B.resnet18_shaped(image=96 if q else 224),
    "digits CNN (make demo)": lambda q: _digits(),
    "bert-base-shaped (seq 128)": lambda q: B.bert_shaped(layers=2 if q else 12),
}


def _quantized(fp32, calib, **kw):
    start = time.perf_counter()
    result = onnxq.quantize(fp32, calib, progress=False, **kw)
    return result, time.perf_counter() - start


def run_one(name: str, quick: bool, threads: int, seconds: float) -> dict:
    fp32 = MODELS[name](quick)
    calib = B.feeds(fp32, batch=1, n=4 if quick else 16, seed=1)
    latency, t_lat = _quantized(fp32, calib)
    size, t_size = _quantized(fp32, calib, objective="size")
    models: dict[str, tuple] = {"fp32": (fp32, None), "onnxq (default: latency)":
                                (latency.model, t_lat), "onnxq all-int8 (size)":
                                (size.model, t_size),
                                "ort best (qdq)": common.ort_quantize_static(fp32, calib,
                                                                             best=True)}
    rows = common.compare_models(models, B.feeds(fp32, batch=1, seed=5)[0],
                                 B.feeds(fp32, batch=8, seed=6)[0],
                                 B.feeds(fp32, batch=8, n=2, seed=99), threads=threads,
                                 min_seconds=seconds)
    placement = latency.report.placement or {}
    for row in rows:
        if row["model"].startswith("onnxq (default"):
            row["predicted_b1"] = placement.get("predicted_speedup")
    return {"model": name, "rows": rows, "placement": placement}


COLUMNS = common.MODEL_COLUMNS[:5] + [("predicted b1", "predicted_b1",
                                       lambda v: "-" if v is None else f"{v:.2f}")] \
    + common.MODEL_COLUMNS[5:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    seconds = 0.3 if args.quick else 2.0
    load = common.wait_for_idle(max_wait=5 if args.quick else 60)
    names = [n for n in MODELS if not args.only or any(o in n for o in args.only)]
    results = []
    for name in names:
        results.append(run_one(name, args.quick, args.threads, seconds))
        print(f"{name}: done", file=sys.stderr)
    env = common.environment()
    parts = [f"Placement, {args.threads} threads, onnxruntime {env['onnxruntime']}, "
             f"{env['cpu']} (ISA {env['isa']}), {env['date']}, load {load:.2f}"]
    for res in results:
        p = res["placement"]
        parts.append(f"\n### {res['model']}\n\n{common.markdown_table(res['rows'], COLUMNS)}"
                     f"\n\nplacement: {p.get('kept_float', 0)} of {p.get('candidates', 0)} "
                     f"planned nodes float, {len(p.get('float_regions', []))} region(s), "
                     f"table {p.get('table')}")
    common.publish("placement", args.quick, {"results": results, "environment": env,
                                            "load_average_at_start": load},
                   "\n".join(parts), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
