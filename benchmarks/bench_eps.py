"""INT8 speed-up on each execution provider: a ResNet-18-shaped CNN and a BERT-base-shaped
encoder, FP32 and INT8 (onnxq default, onnxq with every node int8, onnxq made for the OpenVINO
EP, NNCF, onnxruntime's best quantize_static) timed on the CPU EP (onnxruntime) and the
OpenVINO EP (onnxruntime-openvino, in its own venv: ``make venv-openvino``), batch 1, 2
threads, interleaved per EP.

    python -m benchmarks.bench_eps [--quick] [--out DIR] [--ep-python openvino=PATH]

Results: benchmarks/results/eps.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnx

import onnxq
from benchmarks import common, peers
from onnxq.ep import parse_ep_pythons, run_on_eps
from tests import builders as B


def _models(quick: bool) -> dict:
    return {"ResNet-18-shaped (224x224)": (B.resnet18_shaped(image=112 if quick else 224),
                                           1, 8),
            "BERT-base-shaped (seq 128)": (B.bert_shaped(layers=2 if quick else 12), 1, 8)}


def _quantized(fp32: onnx.ModelProto, calib: list[dict], folder: Path) -> dict[str, str]:
    paths = {"FP32": folder / "fp32.onnx"}
    onnx.save(fp32, str(paths["FP32"]))
    for label, overrides in (("onnxq INT8 (default)", {}),
                             ("onnxq INT8 (every node int8)", {"objective": "size"}),
                             ("onnxq INT8 (--ep openvino)", {"target_ep": "openvino"})):
        paths[label] = folder / f"onnxq_{len(paths)}.onnx"
        onnxq.quantize(fp32, calib, progress=False, **overrides).save(paths[label])
    paths["ORT quantize_static (best)"] = folder / "ort_best.onnx"
    onnx.save(common.ort_quantize_static(fp32, calib, best=True)[0],
              str(paths["ORT quantize_static (best)"]))
    if peers.available("nncf") is None:
        calib_path = folder / "calib.npz"
        peers.save_feeds(calib, calib_path)
        try:
            model, _ = peers.quantize_in_child("nncf", paths["FP32"], calib_path)
            paths["NNCF INT8"] = folder / "nncf.onnx"
            onnx.save(model, str(paths["NNCF INT8"]))
        except RuntimeError as exc:
            print(f"NNCF failed: {exc}", file=sys.stderr)
    return {k: str(v) for k, v in paths.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--ep-python", action="append", default=None, metavar="EP=PYTHON")
    args = parser.parse_args(argv)
    load = common.wait_for_idle(max_wait=5 if args.quick else 60)
    rows = []
    for name, (fp32, batch, n_calib) in _models(args.quick).items():
        calib = B.feeds(fp32, batch=batch, n=n_calib, seed=1)
        evals = B.feeds(fp32, batch=1, n=4, seed=2)
        with tempfile.TemporaryDirectory(prefix="onnxq-eps-") as tmp:
            start = time.perf_counter()
            paths = _quantized(fp32, calib, Path(tmp))
            print(f"{name}: {len(paths) - 1} INT8 models in {time.perf_counter() - start:.0f} s")
            results = run_on_eps(paths, evals, ["cpu", "openvino"], threads=2,
                                 seconds=1.0 if args.quick else 3.0,
                                 pythons=parse_ep_pythons(args.ep_python))
        for r in results:
            for label in paths:
                cos, _ = r.agreement("FP32", label)
                rows.append({"model": name, "ep": r.ep, "method": label,
                             "latency_ms": r.seconds[label] * 1e3,
                             "speedup": r.seconds["FP32"] / r.seconds[label], "cosine": cos,
                             "onnxruntime": r.onnxruntime})
    env = common.environment()
    lines = [f"INT8 speed-up over FP32 on each execution provider ({env['cpu']}, ISA "
             f"{env['isa']}, batch 1, 2 threads, interleaved per EP, {env['date']}, load "
             f"{load:.2f})", "",
             "| model | method | CPU EP ms | CPU EP speed-up | OpenVINO EP ms | "
             "OpenVINO EP speed-up | cosine (OpenVINO EP) |", "|---|---|---|---|---|---|---|"]
    by = {(r["model"], r["ep"], r["method"]): r for r in rows}
    for model, _, method in [k for k in by if k[1] == "cpu"]:
        c, o = by[(model, "cpu", method)], by.get((model, "openvino", method))
        lines.append(f"| {model} | {method} | {c['latency_ms']:.2f} | {c['speedup']:.2f}x | "
                     + (f"{o['latency_ms']:.2f} | {o['speedup']:.2f}x | {o['cosine']:.5f} |"
                        if o else "- | - | - |"))
    versions = sorted({f"{r['ep']}: onnxruntime {r['onnxruntime']}" for r in rows})
    lines += ["", "onnxruntime builds: " + "; ".join(versions)]
    common.publish("eps", args.quick, {"rows": rows, "environment": env, "load": load},
                   "\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
