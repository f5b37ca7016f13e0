"""Shared benchmark helpers: sessions at fixed threads, interleaved timing, peers, results.

Protocol (../shared/BENCHMARKS.md): onnxruntime CPU EP, intra_op_num_threads fixed,
inter_op_num_threads=1, default graph optimizations; warm-up, then models timed A B A B … so
drift hits all of them; medians; every speed claim is a ratio measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

RESULTS = Path(__file__).resolve().parent / "results"


def session(model: onnx.ModelProto | str, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    arg = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(arg, so, providers=["CPUExecutionProvider"])


def time_interleaved(sessions: dict[str, object], feed: dict, *, min_seconds: float = 2.0,
                     warmup: int = 3, rounds: int = 5) -> dict[str, float]:
    """Median seconds per run of each session, run in alternating rounds (onnxq.score's)."""
    from onnxq.score import time_interleaved as timed

    return timed(sessions, feed, min_seconds=min_seconds, warmup=warmup, rounds=rounds)


def model_size_mb(model: onnx.ModelProto) -> float:
    return model.ByteSize() / 2**20


def ort_quantize_static(model: onnx.ModelProto, feeds: Sequence[dict], *, best: bool = False,
                        qoperator: bool = False):
    """onnxruntime's quantize_static as a peer: defaults, or its best settings for this CPU
    (u8 activations, per-channel s8 weights), in QDQ or QOperator format.
    Returns (model, seconds)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        kwargs = {"quant_format": QuantFormat.QOperator if qoperator else QuantFormat.QDQ}
        if best:
            kwargs.update(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                          per_channel=True)
        start = time.perf_counter()
        quantize_static(str(src), str(dst), Reader(), **kwargs)
        seconds = time.perf_counter() - start
        return onnx.load(str(dst)), seconds


def compare_models(models: dict[str, tuple], feed_b1: dict, feed_b8: dict,
                   evals: Sequence[dict], *, threads: int = 2, min_seconds: float = 2.0,
                   reference: str = "fp32") -> list[dict]:
    """One row per model: batch-1 latency, batch-8 throughput, speed-ups over ``reference``,
    output agreement with it on ``evals``, size and quantization time. ``models`` maps a name
    to ``(ModelProto, quantize seconds or None)``; all timings are interleaved."""
    sessions = {name: session(m, threads) for name, (m, _) in models.items()}
    lat = time_interleaved(sessions, feed_b1, min_seconds=min_seconds)
    thr = time_interleaved(sessions, feed_b8, min_seconds=min_seconds)
    batch = len(next(iter(feed_b8.values())))
    refs = np.concatenate([sessions[reference].run(None, f)[0] for f in evals])
    rows = []
    for name, (model, seconds) in models.items():
        outs = np.concatenate([sessions[name].run(None, f)[0] for f in evals])
        rows.append({"model": name, "latency_ms": lat[name] * 1e3,
                     "throughput": batch / thr[name],
                     "speedup_b1": lat[reference] / lat[name],
                     "speedup_b8": thr[reference] / thr[name], **agreement(refs, outs),
                     "size_mb": model_size_mb(model), "quantize_s": seconds})
    return rows


def _fmt(digits: int):
    return lambda v: "-" if v is None else f"{v:.{digits}f}"


MODEL_COLUMNS = [("model", "model", str), ("batch-1 latency ms", "latency_ms", _fmt(2)),
                 ("batch-8 img/s", "throughput", _fmt(1)),
                 ("speed-up b1", "speedup_b1", _fmt(2)), ("speed-up b8", "speedup_b8", _fmt(2)),
                 ("top-1 agree", "top1_agreement", _fmt(3)), ("cosine", "cosine", _fmt(5)),
                 ("size MB", "size_mb", _fmt(1)), ("quantize s", "quantize_s", _fmt(1))]


def agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    a, b = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    cos = float((a.ravel() @ b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    return {"top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))), "cosine": cos}


def environment() -> dict:
    import onnxruntime as ort

    from onnxq.kernels.isa import detect, host_target

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        rev = ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "onnxq_revision": rev or "unknown",
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu": detect().summary(),
        "isa": host_target(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def parser(doc: str):
    """The benchmarks' shared command line: ``--quick``, ``--threads`` (2) and ``--out``."""
    import argparse

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    return p


def wait_for_idle(max_wait: float = 60.0, threshold: float = 0.5) -> float:
    """Wait (up to ``max_wait`` s) until the 1-minute load average drops below ``threshold``
    per core; other processes on a 2-core machine distort int8 timings more than fp32 ones.
    Returns the load average when timing starts (recorded with the results)."""
    cores = os.cpu_count() or 1
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] / cores > threshold and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def markdown_table(rows: list[dict], columns: list[tuple[str, str, Callable]]) -> str:
    head = "| " + " | ".join(title for title, _, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(row.get(key)) for _, key, fmt in columns) + " |"
            for row in rows]
    return "\n".join([head, sep, *body])


def write_results(name: str, payload: dict, table: str, out_dir: Path | None = None) -> Path:
    out = Path(out_dir or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    (out / f"{name}.md").write_text(table + "\n")
    return path


def publish(stem: str, quick: bool, payload: dict, text: str, out: str | Path | None) -> Path:
    """Print ``text`` and write the results (``stem`` or ``stem_quick``: JSON + markdown)."""
    print(text)
    path = write_results(stem + ("_quick" if quick else ""), payload, text, out)
    print(f"wrote {path}")
    return path
