"""The calibration runner: onnxruntime on a copy of the model with the planned tensors as
extra outputs, one batch at a time, streamed into a calibrator (memory does not grow with
the number of batches)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from onnxq.calibrators.base import Calibrator
from onnxq.errors import CalibrationError
from onnxq.io import PROTOBUF_LIMIT
from onnxq.qtypes import TensorRange

__all__ = ["InputSpec", "input_specs", "check_feed", "collect_ranges", "make_session"]

logger = logging.getLogger(__name__)


class InputSpec:
    """Name, numpy dtype and shape (None for symbolic dims) of one model input."""

    __slots__ = ("name", "dtype", "shape")

    def __init__(self, name: str, dtype: np.dtype, shape: tuple[int | None, ...] | None):
        self.name, self.dtype, self.shape = name, dtype, shape

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join(
            "N" if d is None else str(d) for d in self.shape)
        return f"{self.name} ({self.dtype}, {dims})"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else None
                          for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dtype, shape))
    return specs


def check_feed(feed: Mapping[str, np.ndarray], specs: Sequence[InputSpec], index: int) -> dict:
    """Validate one feed against the model inputs; return it as a dict of numpy arrays."""
    if not isinstance(feed, Mapping):
        raise CalibrationError(
            f"calibration feed #{index} is a {type(feed).__name__}, not a dict of input name "
            "-> numpy array")
    names = {s.name for s in specs}
    missing = sorted(names - set(feed))
    if missing:
        raise CalibrationError(
            f"calibration feed #{index} is missing input(s) {missing}; the model expects "
            f"{', '.join(s.describe() for s in specs)}")
    extra = sorted(set(feed) - names)
    if extra:
        raise CalibrationError(
            f"calibration feed #{index} has unknown input(s) {extra}; the model's inputs are "
            f"{sorted(names)}")
    out = {}
    for spec in specs:
        arr = np.asarray(feed[spec.name])
        if arr.dtype != spec.dtype:
            raise CalibrationError(
                f"calibration feed #{index}: input {spec.name!r} has dtype {arr.dtype}, the "
                f"model expects {spec.dtype}; convert it (e.g. arr.astype(np.{spec.dtype}))")
        if spec.shape is not None:
            if arr.ndim != len(spec.shape):
                raise CalibrationError(
                    f"calibration feed #{index}: input {spec.name!r} has shape {arr.shape} "
                    f"(rank {arr.ndim}), the model expects rank {len(spec.shape)}: "
                    f"{spec.describe()}")
            for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
                if want not in (None, 0) and got != want:
                    raise CalibrationError(
                        f"calibration feed #{index}: input {spec.name!r} has size {got} on "
                        f"axis {axis}, the model expects {want}: {spec.describe()}")
        out[spec.name] = arr
    return out


def _check_finite(feed: Mapping[str, np.ndarray], index: int) -> None:
    for name, arr in feed.items():
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise CalibrationError(
                f"calibration feed #{index}: input {name!r} has {bad} NaN/Inf value(s); clean "
                "the data, or allow them (allow_nonfinite=True / --ignore-nonfinite) to skip "
                "non-finite values")


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    for name in names:
        if name not in existing:
            augmented.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return augmented


def make_session(model: onnx.ModelProto, *, threads: int = 0):
    """An onnxruntime CPU session for an in-memory model (any size)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if model.ByteSize() < PROTOBUF_LIMIT - 2**26:
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="onnxq-calib-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="model.data")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
    from tqdm.auto import tqdm

    names = list(tensors)
    specs = input_specs(model)
    session = make_session(_with_outputs(model, names))
    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
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
                _check_finite(feed, index)
            arrays = session.run(names, feed)
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
