"""A model made for the OpenVINO EP (``target_ep = "openvino"``) checked on the OpenVINO EP.

Its activations have zero point 0 (u8 where a tensor is non-negative, s8 symmetric where it is
signed): OpenVINO then fuses each int8 conv with its activation and the next quantizer, and
skips the zero-point compensation (measured, docs/execution-providers.md). But OpenVINO 2025.4's
CPU plugin (onnxruntime-openvino 1.24.1) was seen to compute a PP-OCR text detector with signed
int8 activations wrongly: cosine 0.03 against FP32, where onnxruntime's CPU EP runs the same
file at 0.98, and NNCF's own model of it fails the same way. So, when an OpenVINO interpreter
is at hand (``onnxq.ep``: this one, ``$ONNXQ_OPENVINO_PYTHON`` or ``.venv-openvino``), the INT8
model runs on the OpenVINO EP against FP32 on the kept calibration feeds (without one, on the
CPU EP: the quantization's own error — s8 symmetric on a text recognizer's attention gave
0.92 where u8 gave 0.9999); a model below ``KEEP`` is rebuilt with u8 asymmetric activations
and that one is kept when it at least halves the error (slower, but right); the report says
which, measured where.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx

from onnxq.errors import OnnxqError

__all__ = ["guard"]

R = TypeVar("R")


def _worst_cosine(fp32: onnx.ModelProto | str | os.PathLike, int8: onnx.ModelProto,
                  feeds: Sequence[Mapping[str, np.ndarray]]
                  ) -> tuple[float | None, str, float | None]:
    """(worst per-sample cosine of the first output on the OpenVINO EP, "", INT8's speed-up
    over FP32 there from a short interleaved timing) or (None, why, None)."""
    from onnxq.ep import ep_python, run_on_eps
    from onnxq.io import save_model

    try:
        ep_python("openvino", {})
    except OnnxqError as exc:
        return None, str(exc), None
    with tempfile.TemporaryDirectory(prefix="onnxq-ovcheck-") as tmp:
        a, b = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        if isinstance(fp32, onnx.ModelProto):
            save_model(fp32, a)
        else:
            a = Path(fp32)
        save_model(int8, b)
        try:
            [res] = run_on_eps({"fp32": str(a), "int8": str(b)}, list(feeds), ["openvino"],
                               seconds=SECONDS)
        except OnnxqError as exc:
            return None, FAILED + str(exc), None
    pairs = list(zip(res.outputs["fp32"], res.outputs["int8"], strict=True))
    if all(x.size == len(np.atleast_1d(x)) for x, _ in pairs):  # one score per sample: all feeds
        pairs = [(np.concatenate([x.ravel() for x, _ in pairs])[None],
                  np.concatenate([y.ravel() for _, y in pairs])[None])]
    worst = 1.0
    for x, y in pairs:
        x2 = x.reshape(len(x), -1).astype(np.float64)
        y2 = y.reshape(len(y), -1).astype(np.float64)
        cos = (x2 * y2).sum(1) / (np.linalg.norm(x2, axis=1) * np.linalg.norm(y2, axis=1)
                                  + 1e-30)
        worst = min(worst, float(cos.min()))
    return worst, "", res.seconds["fp32"] / res.seconds["int8"]


#: how a failure of the OpenVINO EP itself (not the lack of one) is told apart
FAILED = "the OpenVINO EP failed to run it: "
#: seconds of interleaved timing per model in the check: a rough speed-up, reported
SECONDS = 0.3
#: a speed-up under this is reported as int8 not paying on the OpenVINO EP of this machine
SLOWER = 0.97
#: a zero-point-0 model this close to FP32 (worst cosine) is kept without trying u8
KEEP = 0.99
#: the u8 asymmetric model replaces it only when it at least halves the error (1 - cosine):
#: it is slower on the OpenVINO EP (MiniLM: 1.9x against 2.6x FP32), so a marginal gain
#: (MiniLM: 0.9893 → 0.9898) does not pay; a broken one (PP-OCR det 0.03 → 0.98) does
GAIN = 0.5


def _score(fp32, model: onnx.ModelProto, feeds) -> tuple[float | None, str, float | None]:
    """(worst cosine against FP32, where measured, INT8's speed-up on the OpenVINO EP): on
    the OpenVINO EP when an interpreter for it is at hand, else on this onnxruntime's CPU EP
    (the quantization's own error; no speed-up)."""
    worst, why, speedup = _worst_cosine(fp32, model, feeds)
    if worst is not None:
        return worst, "the OpenVINO EP", speedup
    from onnxq.self_check import check

    if why.startswith(FAILED):  # an OpenVINO EP is here and cannot run this model
        logging.getLogger("onnxq.api").warning(
            "the OpenVINO EP could not run the model made for it: %s", why[:400])
    found = check(fp32, model, feeds)
    if "outputs" not in found or not found["outputs"]:
        return None, why, None
    return min(v.get("worst_cosine", 0.0) for v in found["outputs"].values()), (
        f"the CPU EP (not on OpenVINO: {why.split(';')[0]})"), None


def guard(result: R, fp32: onnx.ModelProto | str | os.PathLike,
          feeds: Sequence[Mapping[str, np.ndarray]], rebuild: Callable[[], R]) -> R:
    """``result`` (zero-point-0 activations) if it agrees with FP32 to ``KEEP``, else
    ``rebuild()`` (u8 asymmetric activations) if that at least halves the error (``GAIN``),
    else ``result``; the report says which, and how fast the kept one ran on the EP."""
    if not feeds:
        return _noted(result, "OpenVINO EP check: no calibration feed was kept; not checked")
    worst, where, speedup = _score(fp32, result.model, feeds)  # type: ignore[attr-defined]
    if worst is not None and worst >= KEEP:
        return _speed(_noted(result, f"zero-point-0 activations checked on {where}: worst "
                             f"cosine {worst:.4f} against FP32 on the calibration feeds"),
                      speedup)
    other = rebuild()
    again, where2, speedup2 = _score(fp32, other.model, feeds)  # type: ignore[attr-defined]
    if again is not None and (worst is None or 1.0 - again <= GAIN * (1.0 - worst)):
        return _speed(_noted(other, f"zero-point-0 activations gave worst cosine {worst} "
                             f"against FP32 on {where} (below {KEEP}): u8 asymmetric "
                             f"activations instead, {again:.4f} on {where2}"), speedup2)
    return _speed(_noted(result, f"zero-point-0 activations: worst cosine {worst} against FP32 "
                         f"on {where} (u8 asymmetric: {again}); kept the zero-point-0 model"),
                  speedup)


def _speed(result: R, speedup: float | None) -> R:
    """The kept model's speed-up on the OpenVINO EP, and a warning when it is not faster."""
    if speedup is None:
        return result
    note = (f"OpenVINO EP check: the INT8 model ran at {speedup:.2f}x FP32 there (a "
            f"{SECONDS:g}-s interleaved timing on one calibration feed; `onnxq bench FP32 INT8 "
            "--ep openvino` measures it properly)")
    if speedup < SLOWER:
        note = ("warning: " + note + ": int8 does not pay for this model on the OpenVINO EP of "
                "this machine; the FP32 model is as fast there")
        logging.getLogger("onnxq.api").warning("%s", note)
    return _noted(result, note)


def _noted(result: R, note: str) -> R:
    if FAILED in note and not note.startswith("warning"):  # the kept model, not run there
        note = "warning: " + note
    report = result.report  # type: ignore[attr-defined]
    return dataclasses.replace(  # type: ignore[type-var]
        result, report=dataclasses.replace(report, notes=report.notes + (note,)))
