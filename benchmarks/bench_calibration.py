"""Calibration cost: peak RSS and wall time of onnxq's calibrators vs onnxruntime's, each in its
own child process, on a BERT-base-shaped encoder built in code (12 layers, hidden 768, seq 128).

    python -m benchmarks.bench_calibration [--quick] [--samples 100 400] [--out DIR]

Each (method, samples) runs in a fresh process; a watchdog kills a child whose RSS passes
``--memory-cap-gb`` (onnxruntime's Entropy/Percentile keep every activation in memory) and the
table says so. ``--quick`` uses a 2-layer, hidden-256 encoder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common, peers

METHODS = ["onnxq:minmax", "onnxq:entropy", "onnxq:percentile", "onnxq:mse", "ort:minmax",
           "ort:entropy", "ort:percentile"]


def _feeds(model_path: str, samples: int):
    """Feeds generated lazily (the data set itself costs no memory), from the input's
    declared shape; the model file is not loaded for this."""
    import numpy as np

    info = json.loads(Path(model_path).with_suffix(".json").read_text())
    for i in range(samples):
        rng = np.random.default_rng(1000 + i)
        yield {info["input"]: rng.standard_normal(info["shape"]).astype(np.float32)}


def _child(method: str, model_path: str, samples: int) -> dict:
    start = time.perf_counter()
    tool, name = method.split(":")
    if tool == "onnxq":
        import onnxq

        ranges = onnxq.calibrate(model_path, _feeds(model_path, samples), progress=False,
                                 calibrator=name)
        count = len(ranges)
    else:
        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

        class Reader:
            def __init__(self):
                self.it = _feeds(model_path, samples)

            def get_next(self):
                return next(self.it, None)

        kind = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile}[name]
        with tempfile.TemporaryDirectory() as tmp:
            cal = create_calibrator(model_path, augmented_model_path=f"{tmp}/aug.onnx",
                                    calibrate_method=kind)
            cal.collect_data(Reader())
            count = len(cal.compute_data().data)
    return {"seconds": time.perf_counter() - start, "tensors": count,
            "peak_rss_mb": peers.peak_rss_mb()}


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _run_child(method: str, model_path: str, samples: int, cap_mb: float,
               timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_calibration", "--child", method,
           "--model", model_path, "--samples", str(samples)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    peak, start = 0.0, time.monotonic()
    while proc.poll() is None:
        peak = max(peak, _rss_mb(proc.pid))
        if peak > cap_mb or time.monotonic() - start > timeout:
            proc.kill()
            proc.wait()
            why = "memory cap" if peak > cap_mb else "timeout"
            return {"method": method, "samples": samples, "status": f"killed ({why})",
                    "peak_rss_mb": peak, "seconds": time.monotonic() - start}
        time.sleep(0.2)
    out = proc.stdout.read().strip().splitlines() if proc.stdout else []
    if proc.returncode != 0 or not out:
        return {"method": method, "samples": samples, "status": f"failed ({proc.returncode})",
                "peak_rss_mb": peak}
    result = json.loads(out[-1])
    return {"method": method, "samples": samples, "status": "ok", **result}


def _fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-cap-gb", type=float, default=12.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.model, args.samples[0])))
        return 0

    from tests import builders as B

    shape = dict(layers=2, hidden=256, heads=4, seq=64) if args.quick else dict(
        layers=12, hidden=768, heads=12, seq=128)
    samples = args.samples or ([8, 32] if args.quick else [100, 400])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bert.onnx")
        import onnx

        model = B.bert_shaped(**shape)
        Path(path).with_suffix(".json").write_text(json.dumps({
            "input": model.graph.input[0].name, "shape": [1, shape["seq"], shape["hidden"]]}))
        onnx.save(model, path)
        del model
        for n in samples:
            for method in args.methods:
                if method.startswith("ort:") and method != "ort:minmax" and n != samples[0]:
                    continue  # onnxruntime's histogram calibrators: the first size is enough
                row = _run_child(method, path, n, args.memory_cap_gb * 1024,
                                 timeout=3600)
                print(f"  {method:18s} {n:4d} samples: {row['status']}, "
                      f"{_fmt(row.get('peak_rss_mb'), 0)} MB, {_fmt(row.get('seconds'))} s",
                      flush=True)
                rows.append(row)
    payload = {"rows": rows, "model": shape, "environment": common.environment()}
    for r in rows:
        ref = next((x for x in rows if x["method"] == "ort:minmax" and x["status"] == "ok"
                    and x["samples"] == r["samples"]), None)
        if ref and r.get("seconds") and r["status"] == "ok":
            r["time_vs_ort_minmax"] = r["seconds"] / ref["seconds"]
    growth = {}
    for m in args.methods:
        by_n = {r["samples"]: r for r in rows if r["method"] == m and r["status"] == "ok"}
        if len(by_n) >= 2:
            lo, hi = by_n[min(by_n)], by_n[max(by_n)]
            growth[m] = hi["peak_rss_mb"] / lo["peak_rss_mb"] - 1
    payload["rss_growth"] = growth
    cols = [("method", "method", str), ("samples", "samples", str), ("status", "status", str),
            ("peak RSS MB", "peak_rss_mb", lambda v: _fmt(v, 0)),
            ("wall s", "seconds", _fmt), ("time / ort minmax", "time_vs_ort_minmax",
                                          lambda v: _fmt(v, 2))]
    env = payload["environment"]
    text = (f"Calibration of a BERT-shaped encoder {shape}, onnxruntime {env['onnxruntime']}, "
            f"{env['date']}\n\n{common.markdown_table(rows, cols)}\n\n"
            f"peak-RSS growth from {samples[0]} to {samples[-1]} samples: "
            + ", ".join(f"{k} {v:+.1%}" for k, v in growth.items()))
    print(text)
    name = "calibration" + ("_quick" if args.quick else "")
    print(f"wrote {common.write_results(name, payload, text, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
