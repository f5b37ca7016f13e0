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


def _external_copy(model: onnx.ModelProto, extra_outputs: Sequence[str], folder: Path
                   ) -> Path:
    """Write ``model`` (plus ``extra_outputs`` as graph outputs) to ``folder`` with every large
    initializer in one external data file, one tensor at a time: no second in-memory copy of
    the weights, and onnxruntime maps the data file instead of copying it."""
    from onnx import numpy_helper

    light = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain",
                  "model_version"):
        setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g, src = light.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    existing = {o.name for o in src.output}
    g.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                    for n in extra_outputs if n not in existing)
    data_name = "weights.bin"
    offset = 0
    with open(folder / data_name, "wb") as data:
        for init in src.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL or init.ByteSize() < 4096:
                g.initializer.append(init)
                continue
            raw = init.raw_data if init.HasField("raw_data") else \
                numpy_helper.to_array(init).tobytes()
            pad = (-offset) % 64  # aligned for mmap-friendly access
            data.write(b"\0" * pad)
            offset += pad
            data.write(raw)
            t = g.initializer.add()
            t.name, t.data_type = init.name, init.data_type
            t.dims.extend(init.dims)
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)),
                               ("length", str(len(raw)))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            offset += len(raw)
    path = folder / "model.onnx"
    onnx.save_model(light, str(path))
    return path


def make_session(model: onnx.ModelProto | str, *, threads: int = 0, optimize: bool = True):
    """An onnxruntime CPU session for an in-memory model or a path (any size)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if isinstance(model, onnx.ModelProto):
        if model.ByteSize() >= PROTOBUF_LIMIT - 2**26:
            raise CalibrationError("model too large for an in-memory session; pass a path")
        model = model.SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


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
    with tempfile.TemporaryDirectory(prefix="onnxq-calib-") as tmp:
        # Basic optimizations only: values exactly as the graph defines them, no pre-packed
        # weight copies (the session lives only for this run).
        session = make_session(str(_external_copy(model, names, Path(tmp))), optimize=False)
        return _stream(session, names, specs, data, calibrator, max_samples=max_samples,
                       progress=progress, allow_nonfinite=allow_nonfinite)


def _stream(session, names: list[str], specs: list[InputSpec], data, calibrator: Calibrator,
            *, max_samples: int | None, progress: bool, allow_nonfinite: bool
            ) -> dict[str, TensorRange]:
    from tqdm.auto import tqdm

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
