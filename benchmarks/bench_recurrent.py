"""Recurrent layers: onnxq's default output against onnxruntime's quantizers on LSTM, GRU and
a MatMul RNN cell inside a Loop, models built in code at speech/OCR sizes (80 features,
hidden 256, 100 steps, batch 1).

Peers, same run: onnxruntime ``quantize_dynamic`` (its recurrent path: LSTM becomes
DynamicQuantizeLSTM) and ``quantize_static`` with its best settings (u8/s8 per-channel) in
QDQ and QOperator form. Latency is interleaved (A B A B ...), batch 1, fixed threads.

    python -m benchmarks.bench_recurrent [--quick] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import onnxq
from benchmarks import common
from tests import builders_flow as F

FEATURES, HIDDEN = 80, 256
MODELS = {
    "lstm": lambda: F.recurrent("LSTM", features=FEATURES, hidden=HIDDEN),
    "bilstm": lambda: F.recurrent("LSTM", features=FEATURES, hidden=HIDDEN, bidirectional=True),
    "gru": lambda: F.recurrent("GRU", features=FEATURES, hidden=HIDDEN),
    "loop_rnn": lambda: F.loop_rnn(features=FEATURES, hidden=HIDDEN),
}


def ort_dynamic(model: onnx.ModelProto) -> tuple[onnx.ModelProto, float]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        start = time.perf_counter()
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        return onnx.load(str(dst)), time.perf_counter() - start


def _int8_weight_fraction(model: onnx.ModelProto) -> float:
    """Share of weight bytes stored as 8-bit integers (all scopes)."""
    from onnxq.scopes import proto_subgraphs

    def graphs(g):
        yield g
        for s in proto_subgraphs(g):
            yield from graphs(s)

    inits = [t for g in graphs(model.graph) for t in g.initializer if len(t.dims) > 1]
    total = sum(t.ByteSize() for t in inits)
    small = sum(t.ByteSize() for t in inits if t.data_type in (onnx.TensorProto.INT8,
                                                                onnx.TensorProto.UINT8))
    return small / total if total else 0.0


def run_one(name: str, threads: int, steps: int, seconds: float) -> dict:
    fp32 = MODELS[name]()
    calib = F.sequence_feeds(fp32, 16, batch=1, steps=steps, seed=1)
    evals = F.sequence_feeds(fp32, 8, batch=1, steps=steps, seed=7)
    models: dict[str, tuple] = {"fp32": (fp32, None)}
    start = time.perf_counter()
    models["onnxq (default)"] = (onnxq.quantize(fp32, calib, progress=False).model,
                                 time.perf_counter() - start)
    models["ort dynamic"] = ort_dynamic(fp32)
    models["ort static qdq (best)"] = common.ort_quantize_static(fp32, calib, best=True)
    models["ort static qoperator (best)"] = common.ort_quantize_static(fp32, calib, best=True,
                                                                       qoperator=True)
    sessions = {k: common.session(m, threads) for k, (m, _) in models.items()}
    lat = common.time_interleaved(sessions, evals[0], min_seconds=seconds)
    refs = np.concatenate([sessions["fp32"].run(None, f)[0] for f in evals])
    rows = []
    for key, (model, secs) in models.items():
        outs = np.concatenate([sessions[key].run(None, f)[0] for f in evals])
        rows.append({"model": key, "latency_ms": lat[key] * 1e3,
                     "speedup_b1": lat["fp32"] / lat[key], **common.agreement(refs, outs),
                     "int8_weights": _int8_weight_fraction(model),
                     "size_mb": common.model_size_mb(model), "quantize_s": secs})
    by = {r["model"]: r for r in rows}
    peers = [r for r in rows if r["model"].startswith("ort")]
    best = max(peers, key=lambda r: r["speedup_b1"])
    ours = by["onnxq (default)"]
    targets = {"as_fast_as_best_peer": ours["latency_ms"] <= best["latency_ms"] * 1.03,
               "cosine_ge_0.999": ours["cosine"] >= 0.999,
               "not_slower_than_fp32": ours["speedup_b1"] >= 0.97}
    return {"model": name, "steps": steps, "rows": rows, "best_peer": best["model"],
            "targets": targets}


COLUMNS = [("model", "model", str), ("batch-1 latency ms", "latency_ms", common._fmt(3)),
           ("speed-up", "speedup_b1", common._fmt(2)), ("cosine", "cosine", common._fmt(5)),
           ("int8 weight share", "int8_weights", common._fmt(2)),
           ("size MB", "size_mb", common._fmt(2)), ("quantize s", "quantize_s", common._fmt(1))]


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    steps, seconds = (30, 0.3) if args.quick else (100, 2.0)
    load = common.wait_for_idle(max_wait=5 if args.quick else 60)
    results = [run_one(name, args.threads, steps, seconds) for name in MODELS]
    env = common.environment()
    parts = [f"Recurrent layers, {steps} steps, batch 1, {args.threads} threads, onnxruntime "
             f"{env['onnxruntime']}, {env['cpu']} (ISA {env['isa']}), {env['date']}, "
             f"load {load:.2f}"]
    for res in results:
        parts.append(f"\n### {res['model']}\n\n{common.markdown_table(res['rows'], COLUMNS)}"
                     f"\n\nbest peer: {res['best_peer']}; targets: {res['targets']}")
    common.publish("recurrent", args.quick, {"results": results, "environment": env,
                                          "load_average_at_start": load},
                   "\n".join(parts), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
