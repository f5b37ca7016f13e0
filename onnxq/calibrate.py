"""The calibration runner: onnxruntime on a copy of the model with the planned tensors as
extra outputs, one batch at a time, streamed into a calibrator (memory does not grow with
the number of batches)."""

from __future__ import annotations

import contextlib
import gc
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
from onnxq.scopes import tensor_bytes

__all__ = ["collect_ranges", "collect_ranges_spilling", "SPILL_BYTES"]

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
    partial: bool = False,
    folder: Path | None = None,
) -> dict[str, TensorRange]:
    """Run ``model`` on every feed of ``data`` and return the calibrator's range per tensor.

    Tensors inside If/Loop/Scan bodies are observed too. A tensor that no feed reached (an If
    branch the data never takes, a body that never ran, a body onnxq cannot observe) is an
    error, or, with ``partial=True``, simply absent from the result."""
    if isinstance(data, Mapping):
        raise CalibrationError("calibration data must be an iterable of feeds (dicts), not a "
                               "single dict; wrap it in a list: [feed]")
    names = list(tensors)
    specs = input_specs(model)
    clean_stale(tempfile.gettempdir())
    with contextlib.ExitStack() as stack:
        tmp = folder or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix=temp_prefix(kind="calib"))))
        # Basic optimizations only: values exactly as the graph defines them, no pre-packed
        # weight copies (the session lives only for this run).
        path, carriers = external_copy(model, names, Path(tmp), data_name="calibration.bin")
        try:
            session = make_session(str(path), optimize=False)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many private types
            raise CalibrationError(
                f"onnxruntime cannot run this model for calibration: {_first_line(exc)}; "
                "check that onnxruntime supports every op (custom domains need their "
                "library) and that the model is valid (onnx.checker)") from None
        return _stream(session, carriers, specs, data, calibrator, max_samples=max_samples,
                       progress=progress, allow_nonfinite=allow_nonfinite,
                       partial=partial, wanted=names)


#: prepared models at least this large wait on disk while onnxruntime calibrates them
SPILL_BYTES = 1 << 28


def collect_ranges_spilling(box: list[onnx.ModelProto], tensors: Sequence[str], data,
                            calibrator: Calibrator, **options) -> tuple[dict[str, TensorRange],
                                                                        onnx.ModelProto]:
    """``collect_ranges`` for the model in ``box``, which the caller hands over (the list is
    emptied). A large model is written to a temporary folder and dropped from memory while
    onnxruntime runs it (its weights are then held once, by onnxruntime, not twice), and is
    loaded back afterwards; the model returned is the one to go on with."""
    model = box.pop()
    if sum(tensor_bytes(t) for t in model.graph.initializer
           if t.data_location != onnx.TensorProto.EXTERNAL) < SPILL_BYTES:
        return collect_ranges(model, tensors, data, calibrator, **options), model
    clean_stale(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix=temp_prefix(kind="calib")) as tmp:
        path = Path(tmp) / "prepared.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="prepared.bin",
                        size_threshold=4096)
        del model
        gc.collect()  # the IR of the planning step held references to the weights
        light = onnx.load(str(path), load_external_data=False)
        ranges = collect_ranges(light, tensors, data, calibrator, folder=Path(tmp), **options)
        del light
        # loaded whole: its folder goes away (load_model could leave weights in that file)
        return ranges, onnx.load_model(str(path), load_external_data=True)


def _stream(session, carriers: dict[str, str], specs: list[InputSpec], data,
            calibrator: Calibrator, *, max_samples: int | None, progress: bool,
            allow_nonfinite: bool, partial: bool, wanted: list[str]
            ) -> dict[str, TensorRange]:
    from tqdm.auto import tqdm

    names = sorted(carriers, key=wanted.index)
    outputs = [carriers[n] for n in names]
    total = len(data) if hasattr(data, "__len__") else None
    if max_samples is not None and total is not None:
        total = min(total, max_samples)
    count = 0
    seen: set[str] = set()
    with tqdm(total=total, desc="calibrating", unit="feed", disable=not progress,
              leave=False) as bar:
        for index, feed in enumerate(data):
            if max_samples is not None and index >= max_samples:
                break
            feed = check_feed(feed, specs, index)
            if not allow_nonfinite:
                check_finite(feed, index)
            try:
                arrays = session.run(outputs, feed)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises many private types
                raise CalibrationError(
                    f"onnxruntime failed on {feed_label(feed, index)}: {_first_line(exc)}; "
                    "check that this feed matches the model (shapes, batch size, value "
                    "ranges such as token ids)") from None
            for name, array in zip(names, arrays if names else [], strict=True):
                if array.size:  # empty: the branch holding it did not run on this feed
                    calibrator.observe(name, array, index=index)
                    seen.add(name)
            count += 1
            bar.update(1)
    if count == 0:
        raise CalibrationError("calibration data is empty: give at least one feed (a dict of "
                               "input name -> numpy array)")
    absent = [n for n in wanted if n not in seen]
    ranges = calibrator.compute() if seen else {}
    if absent and not partial:
        raise CalibrationError(
            f"no values were observed for tensor(s) {absent[:5]}: they are inside an If "
            "branch or a loop body that no calibration feed ran; add feeds that take it, or "
            "keep its nodes in float (exclude_nodes)")
    logger.info("calibrated %d tensors on %d feeds", len(ranges), count)
    return ranges


def _first_line(exc: BaseException) -> str:
    """onnxruntime's message without its multi-line stack (one line for the CLI)."""
    text = " ".join(str(exc).split())
    return text[:400] + ("…" if len(text) > 400 else "")
