"""ResNet-18-shaped CNN (built in code): FP32 vs onnxq INT8 vs onnxruntime quantize_static.

Batch 1 latency and batch 8 throughput at 2 threads, interleaved; prints a table and writes
``benchmarks/results/resnet18.json`` (+ ``.md``). ``--quick`` uses 64×64 images for CI.

    python -m benchmarks.bench_resnet18 [--quick] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time

import onnxq
from benchmarks import common
from tests import builders as B


def run(image: int, threads: int, calib_samples: int, min_seconds: float) -> dict:
    fp32 = B.resnet18_shaped(image=image)
    calib = B.feeds(fp32, batch=1, n=calib_samples, seed=1)
    models: dict[str, tuple] = {"fp32": (fp32, None)}
    start = time.perf_counter()
    result = onnxq.quantize(fp32, calib, progress=False)
    models["onnxq int8 (qdq)"] = (result.model, time.perf_counter() - start)
    models["ort quantize_static (defaults)"] = common.ort_quantize_static(fp32, calib)
    models["ort quantize_static (u8, per-channel)"] = common.ort_quantize_static(
        fp32, calib, best=True)
    rows = common.compare_models(models, B.feeds(fp32, batch=1, seed=5)[0],
                                 B.feeds(fp32, batch=8, seed=6)[0],
                                 B.feeds(fp32, batch=8, n=4, seed=99), threads=threads,
                                 min_seconds=min_seconds)
    return {"rows": rows, "image": image, "threads": threads, "calib_samples": calib_samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64x64 images, short timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="results folder")
    args = parser.parse_args(argv)
    image, seconds, calib = (64, 0.3, 4) if args.quick else (224, 2.0, 16)
    load = common.wait_for_idle(max_wait=5 if args.quick else 60)
    payload = run(image, args.threads, calib, seconds)
    payload["load_average_at_start"] = load
    payload["environment"] = common.environment()
    onnxq_row = next(r for r in payload["rows"] if r["model"].startswith("onnxq"))
    ort_row = next(r for r in payload["rows"] if r["model"].endswith("(defaults)"))
    payload["targets"] = {
        "onnxq_b8_speedup_ge_3": onnxq_row["speedup_b8"] >= 3.0,
        "onnxq_faster_than_ort_default_b1": onnxq_row["latency_ms"] <= ort_row["latency_ms"],
        "onnxq_faster_than_ort_default_b8": onnxq_row["throughput"] >= ort_row["throughput"],
    }
    table = common.markdown_table(payload["rows"], common.MODEL_COLUMNS)
    env = payload["environment"]
    header = (f"ResNet-18-shaped, {image}x{image}, {args.threads} threads, onnxruntime "
              f"{env['onnxruntime']}, {env['cpu']} (ISA {env['isa']}), {env['date']}, onnxq {env['onnxq_revision']}")
    text = f"{header}\n\n{table}\n\ntargets: {payload['targets']}"
    print(text)
    path = common.write_results("resnet18" + ("_quick" if args.quick else ""), payload, text,
                                args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
