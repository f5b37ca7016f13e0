"""Timing and outputs of models on one onnxruntime execution provider, runnable on its own.

It depends only on the standard library, numpy and onnxruntime, so it runs inside another
interpreter's venv too: the OpenVINO EP ships as its own ``onnxruntime`` build
(``onnxruntime-openvino``), which cannot share a venv with the CPU-only one onnxq is tested
with. ``onnxq bench --ep`` calls ``measure`` in this process when the EP is here, and runs
this file with the other interpreter otherwise (a JSON request on stdin, a JSON answer on
stdout)::

    .venv-openvino/bin/python onnxq/ep_child.py < request.json

Request: ``{"ep": "cpu"|"openvino", "models": {name: path}, "feeds": [npz path, ...],
"threads": 2, "seconds": 2.0, "outputs": folder, "all_outputs": false}``. Answer: the median
seconds per model (timed interleaved, A B A B ..., on the first feed; none when ``seconds`` is
0), the providers each session got, the onnxruntime version, and per model an ``.npz`` in
``outputs`` with its first output on every feed (for agreement), or every output of every feed
(``f{feed}_o{output}``) with ``all_outputs``. Errors come back as ``{"error": message}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["EPS", "measure", "providers", "time_interleaved"]

#: execution provider name → onnxruntime's provider
EPS = {"cpu": "CPUExecutionProvider", "openvino": "OpenVINOExecutionProvider"}


def providers(ep: str, threads: int) -> list:
    """The provider list a session for ``ep`` gets (the CPU EP as the fallback)."""
    if ep == "openvino":
        return [("OpenVINOExecutionProvider", {"device_type": "CPU",
                                               "num_of_threads": str(threads)}),
                "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(ort, path: str, ep: str, threads: int):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=providers(ep, threads))


def time_interleaved(sessions: dict, feed: dict, *, min_seconds: float = 2.0,
                     warmup: int = 3, rounds: int = 5) -> dict[str, float]:
    """Median seconds per ``run`` of each onnxruntime session, in alternating rounds sized so
    each session gets about ``min_seconds`` of work in total (``onnxq.runtime`` uses it too:
    it is here so that this file runs on its own)."""
    rounds, iters = max(rounds, 1), {}
    for name, sess in sessions.items():
        for _ in range(max(warmup, 1)):  # the last warm-up run sizes the rounds
            start = time.perf_counter()
            sess.run(None, feed)
        once = max(time.perf_counter() - start, 1e-5)
        iters[name] = max(3, int(min_seconds / rounds / once))
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            for _ in range(iters[name]):
                start = time.perf_counter()
                sess.run(None, feed)
                samples[name].append(time.perf_counter() - start)
    return {name: float(np.median(s)) for name, s in samples.items()}


def measure(request: dict) -> dict:
    """Answer one request (see the module doc)."""
    import onnxruntime as ort

    ep = request["ep"]
    if EPS.get(ep) not in ort.get_available_providers():
        return {"error": f"this onnxruntime ({ort.__version__}, {sys.executable}) has no "
                         f"{EPS.get(ep, ep)}; it has {ort.get_available_providers()}"}
    threads = int(request.get("threads", 2))
    try:
        sessions = {name: _session(ort, path, ep, threads)
                    for name, path in request["models"].items()}
        feeds = [{k: v for k, v in np.load(p).items()} for p in request["feeds"]]
        out, files, every = Path(request["outputs"]), {}, bool(request.get("all_outputs"))
        for i, (name, sess) in enumerate(sessions.items()):
            wanted = {x.name for x in sess.get_inputs()}
            got = [sess.run(None, {k: v for k, v in f.items() if k in wanted}) for f in feeds]
            files[name] = str(out / f"{ep}_{i}.npz")
            if every:  # every output of every feed: f{feed}_o{output}
                np.savez(files[name], **{f"f{j}_o{k}": o for j, outs in enumerate(got)
                                         for k, o in enumerate(outs)})
            else:
                np.savez(files[name], *[outs[0] for outs in got])
        wanted = {i.name for i in next(iter(sessions.values())).get_inputs()}
        seconds = float(request.get("seconds", 2.0))
        times = time_interleaved(sessions, {k: v for k, v in feeds[0].items() if k in wanted},
                                 min_seconds=seconds) if seconds > 0 else {}
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many private types
        return {"error": f"{ep}: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}"}
    return {"median_seconds": times, "onnxruntime": ort.__version__, "ep": ep,
            "providers": {n: s.get_providers() for n, s in sessions.items()},
            "outputs": files}


if __name__ == "__main__":
    print(json.dumps(measure(json.load(sys.stdin))))
