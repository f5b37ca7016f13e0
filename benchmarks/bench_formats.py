"""QDQ vs QLinear (QOperator): onnxq's two formats of the same plan against onnxruntime's
quantize_static in both formats (its best settings: u8 activations, per-channel s8 weights),
on a ResNet-18-shaped CNN and a MobileNetV3-shaped depthwise/HardSwish CNN built in code.

    python -m benchmarks.bench_formats [--quick] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import sys
import time

import onnxq
from benchmarks import common
from tests import builders as B

MODELS = {"resnet18": B.resnet18_shaped, "mobilenet": B.mobilenet_shaped}


def run_one(name: str, image: int, threads: int, calib_n: int, seconds: float) -> dict:
    fp32 = MODELS[name](image=image)
    calib = B.feeds(fp32, batch=1, n=calib_n, seed=1)
    models: dict[str, tuple] = {"fp32": (fp32, None)}
    for fmt in ("qdq", "qlinear"):
        start = time.perf_counter()
        models[f"onnxq {fmt}"] = (onnxq.quantize(fp32, calib, progress=False,
                                                 format=fmt).model,
                                  time.perf_counter() - start)
    models["ort qdq (best)"] = common.ort_quantize_static(fp32, calib, best=True)
    models["ort qoperator (best)"] = common.ort_quantize_static(fp32, calib, best=True,
                                                                qoperator=True)
    models["ort qoperator (defaults)"] = common.ort_quantize_static(fp32, calib,
                                                                    qoperator=True)
    rows = common.compare_models(models, B.feeds(fp32, batch=1, seed=5)[0],
                                 B.feeds(fp32, batch=8, seed=6)[0],
                                 B.feeds(fp32, batch=8, n=2, seed=99), threads=threads,
                                 min_seconds=seconds)
    by = {r["model"]: r for r in rows}
    targets = {
        "qlinear_ge_ort_qoperator_best_b8": by["onnxq qlinear"]["throughput"]
        >= by["ort qoperator (best)"]["throughput"],
        "qlinear_within_5pct_of_qdq_b8": by["onnxq qlinear"]["throughput"]
        >= 0.95 * by["onnxq qdq"]["throughput"],
    }
    return {"model": name, "image": image, "rows": rows, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    image, seconds, calib = (64, 0.3, 4) if args.quick else (224, 2.0, 16)
    load = common.wait_for_idle(max_wait=5 if args.quick else 60)
    results = [run_one(name, image, args.threads, calib, seconds) for name in MODELS]
    env = common.environment()
    parts = [f"QDQ vs QLinear, {image}x{image}, {args.threads} threads, onnxruntime "
             f"{env['onnxruntime']}, {env['cpu']} (ISA {env['isa']}), {env['date']}, load {load:.2f}"]
    for res in results:
        parts.append(f"\n### {res['model']}\n\n"
                     f"{common.markdown_table(res['rows'], common.MODEL_COLUMNS)}\n\n"
                     f"targets: {res['targets']}")
    common.publish("formats", args.quick, {"results": results, "environment": env,
                                          "load_average_at_start": load},
                   "\n".join(parts), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
