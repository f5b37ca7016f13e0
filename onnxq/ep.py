"""Models scored on several onnxruntime execution providers side by side (``onnxq bench
--ep cpu,openvino``), each EP in this interpreter when its onnxruntime has it, else in the
interpreter of a venv that has it (``onnxq/ep_child.py`` runs there)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxq import ep_child
from onnxq.errors import ConfigError

__all__ = ["EpResult", "run_on_eps", "outputs_on_ep", "ep_python", "parse_ep_pythons", "EPS"]

EPS = tuple(ep_child.EPS)
#: seconds a child interpreter may take (sessions, warm-up, timing)
CHILD_TIMEOUT = 900


@dataclass(frozen=True, slots=True)
class EpResult:
    """One EP's answer: median seconds and first outputs per model, and what ran them."""

    ep: str
    onnxruntime: str
    seconds: dict[str, float]
    outputs: dict[str, list[np.ndarray]]
    providers: dict[str, list[str]]
    python: str  # "" when this interpreter ran it

    def agreement(self, reference: str, model: str) -> tuple[float, float | None]:
        """(mean cosine, top-1 agreement or None) of ``model``'s first output with
        ``reference``'s, over the feeds (top-1 only for outputs with a class axis)."""
        cos, top = [], []
        for a, b in zip(self.outputs[reference], self.outputs[model], strict=True):
            x = a.reshape(len(a), -1).astype(np.float64)
            y = b.reshape(len(b), -1).astype(np.float64)
            cos.extend((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
                                         + 1e-30))
            if x.shape[1] > 1:
                top.extend(x.argmax(1) == y.argmax(1))
        return float(np.mean(cos)), float(np.mean(top)) if top else None


def parse_ep_pythons(items: Sequence[str] | None) -> dict[str, str]:
    """``["openvino=PATH", ...]`` → ``{"openvino": "PATH"}``, checked."""
    out = {}
    for item in items or ():
        ep, sep, path = item.partition("=")
        if not sep or ep not in EPS or not path:
            raise ConfigError(f"--ep-python {item!r}: give EP=PYTHON with EP one of {EPS}, "
                              "e.g. openvino=.venv-openvino/bin/python")
        out[ep] = path
    return out


def _here(ep: str) -> bool:
    from onnxq.runtime import available_providers

    return ep_child.EPS[ep] in available_providers()


def ep_python(ep: str, given: Mapping[str, str]) -> str | None:
    """The interpreter that runs ``ep``: None for this one (its onnxruntime has the EP), else
    ``--ep-python``, ``$ONNXQ_<EP>_PYTHON`` or ``.venv-<ep>/bin/python`` (``make
    venv-openvino``); a clear error when there is none."""
    if ep not in EPS:
        raise ConfigError(f"unknown execution provider {ep!r}; choose from {EPS}")
    if ep in given:
        path = given[ep]
    elif os.environ.get(f"ONNXQ_{ep.upper()}_PYTHON"):
        path = os.environ[f"ONNXQ_{ep.upper()}_PYTHON"]
    elif _here(ep):
        return None
    else:
        path = f".venv-{ep}/bin/python"
        if not Path(path).is_file():
            raise ConfigError(
                f"this onnxruntime has no {ep_child.EPS[ep]}, and no interpreter for it was "
                f"given: build one with `make venv-{ep}` (a venv with onnxruntime-{ep}), or "
                f"pass --ep-python {ep}=PATH/TO/python")
    if not Path(path).is_file():
        raise ConfigError(f"the {ep} interpreter {path!r} does not exist; build it with "
                          f"`make venv-{ep}` or fix --ep-python")
    return path


def _save_feeds(feeds: Sequence[Mapping[str, np.ndarray]], folder: str) -> list[str]:
    """Each feed as an ``.npz`` in ``folder`` (the child reads them); their paths."""
    paths = []
    for i, feed in enumerate(feeds):
        paths.append(str(Path(folder) / f"feed{i}.npz"))
        arrays: dict[str, Any] = {k: np.asarray(v) for k, v in feed.items()}
        np.savez(paths[-1], **arrays)
    return paths


def run_on_eps(models: Mapping[str, str], feeds: Sequence[Mapping[str, np.ndarray]],
               eps: Sequence[str], *, threads: int = 2, seconds: float = 2.0,
               pythons: Mapping[str, str] | None = None) -> list[EpResult]:
    """Time ``models`` (name → .onnx path) on each EP of ``eps`` (interleaved, on the first
    feed) and keep their first output on every feed. EPs run one after the other, never at
    the same time."""
    where = {ep: ep_python(ep, pythons or {}) for ep in eps}  # every error before any run
    results = []
    with tempfile.TemporaryDirectory(prefix="onnxq-ep-") as tmp:
        paths = _save_feeds(feeds, tmp)
        for ep in eps:
            request = {"ep": ep, "models": {k: str(Path(v).resolve()) for k, v in models.items()},
                       "feeds": paths, "threads": threads, "seconds": seconds, "outputs": tmp}
            answer = _ask(where[ep], request)
            if "error" in answer:
                raise ConfigError(f"{ep}: {answer['error']}")
            outputs = {}
            for name, path in answer["outputs"].items():
                with np.load(path) as data:
                    outputs[name] = [data[f"arr_{i}"] for i in range(len(feeds))]
            results.append(EpResult(ep, answer["onnxruntime"], answer["median_seconds"],
                                    outputs, answer["providers"], where[ep] or ""))
    return results


def outputs_on_ep(models: Mapping[str, str], feeds: Sequence[Mapping[str, np.ndarray]],
                  ep: str, *, threads: int = 2, pythons: Mapping[str, str] | None = None
                  ) -> dict[str, list[list[np.ndarray]]]:
    """Every output of ``models`` (name → .onnx path) on every feed, run on ``ep`` (untimed):
    to score a task metric on that EP."""
    python = ep_python(ep, pythons or {})
    with tempfile.TemporaryDirectory(prefix="onnxq-ep-") as tmp:
        paths = _save_feeds(feeds, tmp)
        answer = _ask(python, {"ep": ep, "threads": threads, "seconds": 0, "outputs": tmp,
                               "all_outputs": True, "feeds": paths,
                               "models": {k: str(Path(v).resolve()) for k, v in models.items()}})
        if "error" in answer:
            raise ConfigError(f"{ep}: {answer['error']}")
        out: dict[str, list[list[np.ndarray]]] = {}
        for name, path in answer["outputs"].items():
            with np.load(path) as data:
                count = 1 + max((int(k.split("_o")[1]) for k in data.files), default=-1)
                out[name] = [[data[f"f{j}_o{k}"] for k in range(count)]
                             for j in range(len(feeds))]
    return out


def _ask(python: str | None, request: dict) -> dict:
    if python is None:
        return ep_child.measure(request)
    try:
        done = subprocess.run([python, ep_child.__file__], input=json.dumps(request),
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"cannot run {python}: {exc}"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = " ".join(done.stderr.split())[-400:]
        return {"error": f"{python} exited {done.returncode} without an answer: {tail}; its "
                         "venv needs numpy and an onnxruntime build (make venv-openvino)"}
