"""The calibration runner: onnxruntime on a copy of the model with the planned tensors as
extra outputs, one batch at a time, streamed into a calibrator (memory does not grow with
the number of batches)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxq.calibrators.base import Calibrator
from onnxq.errors import CalibrationError
from onnxq.io import clean_stale, external_copy, temp_prefix
from onnxq.qtypes import TensorRange
from onnxq.runtime import (
    InputSpec,
    check_feed,
    check_finite,
    feed_label,
    input_specs,
    make_session,
)

__all__ = ["collect_ranges"]

logger = logging.getLogger(__name__)


def collect_ranges(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    data: Iterable[Mapping[str, np.ndarray]],
    calibrator: Calibrator,
    *,
    max_samples: int | None = None,
    progress: bool = True,
    allow_nonfinite: bool = False,
) -> dict[str, TensorRange]:
    """Run ``model`` on every feed of ``data`` and return the calibrator's range per tensor."""
    if isinstance(data, Mapping):
        raise CalibrationError("calibration data must be an iterable of feeds (dicts), not a "
                               "single dict; wrap it in a list: [feed]")
    names = list(tensors)
    specs = input_specs(model)
    clean_stale(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix=temp_prefix(kind="calib")) as tmp:
        # Basic optimizations only: values exactly as the graph defines them, no pre-packed
        # weight copies (the session lives only for this run).
        try:
            session = make_session(str(external_copy(model, names, Path(tmp))),
                                   optimize=False)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many private types
            raise CalibrationError(
                f"onnxruntime cannot run this model for calibration: {_first_line(exc)}; "
                "check that onnxruntime supports every op (custom domains need their "
                "library) and that the model is valid (onnx.checker)") from None
        return _stream(session, names, specs, data, calibrator, max_samples=max_samples,
                       progress=progress, allow_nonfinite=allow_nonfinite)


def _stream(session, names: list[str], specs: list[InputSpec], data, calibrator: Calibrator,
            *, max_samples: int | None, progress: bool, allow_nonfinite: bool
            ) -> dict[str, TensorRange]:
    from tqdm.auto import tqdm

    total = len(data) if hasattr(data, "__len__") else None
    if max_samples is not None and total is not None:
        total = min(total, max_samples)
    count = 0
    with tqdm(total=total, desc="calibrating", unit="feed", disable=not progress,
              leave=False) as bar:
        for index, feed in enumerate(data):
            if max_samples is not None and index >= max_samples:
                break
            feed = check_feed(feed, specs, index)
            if not allow_nonfinite:
                check_finite(feed, index)
            try:
                arrays = session.run(names, feed)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises many private types
                raise CalibrationError(
                    f"onnxruntime failed on {feed_label(feed, index)}: {_first_line(exc)}; "
                    "check that this feed matches the model (shapes, batch size, value "
                    "ranges such as token ids)") from None
            for name, array in zip(names, arrays, strict=True):
                calibrator.observe(name, array, index=index)
            count += 1
            bar.update(1)
    if count == 0:
        raise CalibrationError("calibration data is empty: give at least one feed (a dict of "
                               "input name -> numpy array)")
    ranges = calibrator.compute()
    absent = [n for n in names if n not in ranges]
    if absent:
        raise CalibrationError(f"no values were observed for tensor(s) {absent[:5]}")
    logger.info("calibrated %d tensors on %d feeds", len(names), count)
    return ranges


def _first_line(exc: BaseException) -> str:
    """onnxruntime's message without its multi-line stack (one line for the CLI)."""
    text = " ".join(str(exc).split())
    return text[:400] + ("…" if len(text) > 400 else "")
