"""Zoo runs: quantize and score a list of models (``onnxq zoo zoo.toml``), in parallel on Ray
workers when asked, into one table (markdown, JSON, PNG).

``zoo.toml`` (paths relative to it)::

    [defaults]                 # optional; every key below may be set here for all models
    metric = "cosine"          # cosine (outputs vs FP32) | top1 (labels in the eval data)
    max_drop = 0.01            # the accuracy target of a pass
    [defaults.config]          # QuantConfig overrides (flat names, as quantize(**overrides))
    format = "qdq"

    [[models]]
    name = "mobilenet"
    model = "models/mobilenet.onnx"
    calib_data = "data/mobilenet_calib"    # a folder of .npz feeds, or one .npz
    eval_data = "data/mobilenet_eval"
    metric = "top1"
    labels_key = "labels"
    [models.config]
    per_channel = false

A model passes when its INT8 model loads, runs at least as fast as FP32 (batch-1 latency,
interleaved) and meets ``max_drop``. A failing model is reported in its row; the others go
on. A rerun skips every model whose inputs (model, data, settings, onnxq and onnxruntime
versions, target) hash as before and whose INT8 model is still there.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxq.errors import ConfigError, OnnxqError

__all__ = ["ZooEntry", "read_zoo", "ZooWorker", "entry_key", "ROW_KEYS"]

METRICS = ("cosine", "top1")
_KEYS = {"name", "model", "calib_data", "eval_data", "metric", "labels_key", "max_drop",
         "batch", "config"}
ROW_KEYS = ("name", "status", "fp32_metric", "int8_metric", "drop", "speedup", "fp32_mb",
            "int8_mb", "quantize_s", "passed", "cached", "error")


@dataclass(frozen=True, slots=True)
class ZooEntry:
    """One model of a zoo file, its paths made absolute."""

    name: str
    model: str
    calib_data: str
    eval_data: str
    metric: str = "cosine"
    labels_key: str = "labels"
    max_drop: float = 0.01
    batch: int = 1
    config: dict[str, Any] = field(default_factory=dict)


def read_zoo(path: str | Path) -> list[ZooEntry]:
    """The entries of a zoo file, checked (unknown keys, missing files, duplicate names)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read zoo file {str(p)!r}: {exc}") from None
    unknown = sorted(set(data) - {"defaults", "models"})
    if unknown or not isinstance(data.get("models"), list) or not data["models"]:
        raise ConfigError(f"zoo file {str(p)!r} needs [[models]] tables (and optionally "
                          f"[defaults]); unexpected: {unknown or 'no [[models]]'}")
    defaults = data.get("defaults", {})
    entries, names = [], set()
    for i, raw in enumerate(data["models"]):
        merged = {**defaults, **raw, "config": {**defaults.get("config", {}),
                                                **raw.get("config", {})}}
        entry = _entry(merged, p.parent, f"{p.name}: models[{i}]")
        if entry.name in names:
            raise ConfigError(f"{p.name}: two models are named {entry.name!r}; names must "
                              "be unique (they name the output files)")
        names.add(entry.name)
        entries.append(entry)
    return entries


def _entry(raw: dict, base: Path, where: str) -> ZooEntry:
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(_KEYS)}")
    missing = [k for k in ("name", "model", "calib_data", "eval_data") if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing {missing}")
    name = str(raw["name"])
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"{where}: name {name!r} must be a plain file name")
    if raw.get("metric", "cosine") not in METRICS:
        raise ConfigError(f"{where}: metric {raw['metric']!r}; choose one of {METRICS}")
    paths = {}
    for key in ("model", "calib_data", "eval_data"):
        full = (base / str(raw[key])).resolve()
        if not full.exists():
            raise ConfigError(f"{where} ({name}): {key} {str(full)!r} does not exist")
        paths[key] = str(full)
    from onnxq.config import QuantConfig

    QuantConfig().with_overrides(**raw["config"])  # unknown options fail here, named
    return ZooEntry(name=name, **paths, metric=raw.get("metric", "cosine"),
                    labels_key=str(raw.get("labels_key", "labels")),
                    max_drop=float(raw.get("max_drop", 0.01)), batch=int(raw.get("batch", 1)),
                    config=dict(raw["config"]))


def _files(path: str) -> Iterator[Path]:
    p = Path(path)
    if p.is_dir():
        yield from sorted(f for f in p.rglob("*") if f.is_file())
    else:
        from onnxq.outputs import model_files

        yield from (model_files(p) if p.suffix.lower() == ".onnx" else [p])


def entry_key(entry: ZooEntry, stamp: str) -> str:
    """The content hash a rerun compares: every input file's bytes, the settings, ``stamp``
    (versions and target)."""
    h = hashlib.sha256(json.dumps([asdict(entry), stamp], sort_keys=True)
                       .encode())
    for key in (entry.model, entry.calib_data, entry.eval_data):
        for f in _files(key):
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023 - same fh
                    h.update(chunk)
    return h.hexdigest()


class ZooWorker:
    """Quantizes and scores one entry (in this process or a Ray worker); never raises: a
    failure is the row's status."""

    def run(self, entry: ZooEntry) -> tuple[dict, bytes | None]:
        row: dict[str, Any] = {"name": entry.name, "status": "ok", "cached": False}
        t0 = time.monotonic()
        try:
            int8 = self._quantize(entry, row)
        except (OnnxqError, OSError, ValueError) as exc:
            row.update(status="failed", error=" ".join(str(exc).split())[:300])
            return row, None
        except Exception as exc:  # noqa: BLE001 - a bug on one model must not stop the rest
            row.update(status="failed", error=f"internal error: {type(exc).__name__}: {exc}")
            return row, None
        row["quantize_s"] = round(time.monotonic() - t0, 2)
        return row, int8

    def _quantize(self, entry: ZooEntry, row: dict) -> bytes:
        from onnxq.api import quantize
        from onnxq.data import load_feeds
        from onnxq.io import load_model
        from onnxq.tune_types import cosine_metric, top1_metric

        fp32 = load_model(entry.model)
        calib = load_feeds(entry.calib_data, batch=entry.batch)
        result = quantize(fp32, calib, progress=False, **entry.config)
        evals = [dict(f) for f in load_feeds(entry.eval_data, batch=entry.batch)]
        metric: Callable[[onnx.ModelProto], float]
        if entry.metric == "top1":
            if any(entry.labels_key not in f for f in evals):
                raise ConfigError(f"metric top1 needs an array {entry.labels_key!r} (labels) "
                                  "in every eval feed")
            labels = [f.pop(entry.labels_key) for f in evals]
            metric = top1_metric(evals, labels)
        else:
            metric = cosine_metric(fp32, evals)
        row["fp32_metric"] = metric(fp32)
        row["int8_metric"] = metric(result.model)
        row["drop"] = row["fp32_metric"] - row["int8_metric"]
        blob = result.model.SerializeToString()
        row["fp32_mb"] = round(sum(f.stat().st_size for f in _files(entry.model)) / 1e6, 3)
        row["int8_mb"] = round(len(blob) / 1e6, 3)
        return blob


def verdict(row: dict, entry: ZooEntry) -> dict:
    """``row`` with ``passed`` set: ran, at least as fast as FP32, within ``max_drop``."""
    speed = row.get("speedup")
    drop = row.get("drop")
    row["passed"] = bool(row.get("status") == "ok" and speed is not None and speed >= 1.0
                         and drop is not None and math.isfinite(drop)
                         and drop <= entry.max_drop)
    return row
