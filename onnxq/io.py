"""Loading, validating and atomically saving ONNX models (external data for > 2 GB)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxq.errors import ModelError, OutputPathError

__all__ = ["load_model", "save_model", "validate_model", "external_copy", "PROTOBUF_LIMIT",
           "fits_in_protobuf", "check_output", "check_outputs", "same_file", "model_files",
           "write_text_atomic", "temp_prefix", "clean_stale"]

logger = logging.getLogger(__name__)

#: Protobuf cannot serialise a message larger than 2 GiB; bigger models use external data.
PROTOBUF_LIMIT = 2**31 - 1


def load_model(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Return a private copy of ``source`` (a path or a ``ModelProto``; never modified)."""
    if isinstance(source, onnx.ModelProto):
        unloaded = sorted({next((e.value for e in t.external_data if e.key == "location"), "?")
                           for t in source.graph.initializer
                           if t.data_location == onnx.TensorProto.EXTERNAL})
        if unloaded:
            raise ModelError(
                f"the model's weights are in external file(s) {unloaded} that were not loaded; "
                "pass the .onnx path instead, or load it with onnx.load(path) (which loads "
                "external data)")
        return _copy(source)
    path = Path(source)
    if not path.exists():
        raise ModelError(f"model file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise ModelError(f"{str(path)!r} is a directory, not an .onnx file")
    if path.stat().st_size == 0:
        raise ModelError(f"model file {str(path)!r} is empty; re-export the model")
    try:
        model = onnx.load_model(str(path), load_external_data=True)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise ModelError(
            f"{str(path)!r} is not a valid ONNX model (truncated or not ONNX: {exc}); "
            "re-export it or check that the file was copied completely"
        ) from None
    except (OSError, onnx.checker.ValidationError) as exc:
        raise ModelError(f"cannot read model {str(path)!r}: {exc}") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ModelError(
            f"{str(path)!r} parsed but holds no ONNX graph (not an ONNX model, or truncated); "
            "re-export it"
        )
    return model


def validate_model(model: onnx.ModelProto | str | os.PathLike, *, run_session: bool = True) -> None:
    """Full ``onnx.checker`` check, then build an onnxruntime CPU session. Raise ModelError."""
    target = str(model) if not isinstance(model, onnx.ModelProto) else model
    try:
        onnx.checker.check_model(target, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"model fails the ONNX checker: {exc}") from None
    if not run_session:
        return
    from onnxq.runtime import make_session  # io and runtime are one layer; runtime needs io

    try:
        arg = target.SerializeToString() if isinstance(target, onnx.ModelProto) else target
        make_session(arg, optimize=None)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many private types
        raise ModelError(f"onnxruntime cannot load the model: {exc}") from None


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def fits_in_protobuf(model: onnx.ModelProto) -> bool:
    """True when ``model`` serializes in one protobuf message (with a 64 MiB margin)."""
    return model.ByteSize() <= PROTOBUF_LIMIT - 64 * 2**20


def _needs_external_data(model: onnx.ModelProto) -> bool:
    return not fits_in_protobuf(model)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, validate: bool = True) -> Path:
    """Write ``model`` to ``path`` atomically: temporary folder, validate, then rename.

    Models near the 2 GiB protobuf limit get their weights in ``<name>.data`` beside the file.
    On any failure nothing is left at ``path``.
    """
    dest = check_output(path)
    parent = dest.parent
    clean_stale(parent)
    tmpdir = Path(tempfile.mkdtemp(prefix=temp_prefix("."), dir=parent))
    try:
        tmp = tmpdir / dest.name
        if _needs_external_data(model):
            data_name = dest.name + ".data"
            model = _copy(model)  # conversion to external data edits the proto in place
            onnx.save_model(model, str(tmp), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name,
                            size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp))
        if validate:
            validate_model(tmp)
        for item in sorted(tmpdir.iterdir()):
            os.replace(item, parent / item.name)
        logger.info("wrote %s", dest)
        return dest
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def save_ranges(ranges: dict, path: str | os.PathLike, *, meta: dict | None = None) -> Path:
    """Write calibrated ranges as JSON (``{"ranges": {tensor: {"min", "max"}}, ...meta}``)."""
    import json

    payload = dict(meta or {})
    payload["ranges"] = {name: r.to_dict() for name, r in ranges.items()}
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load_ranges(path: str | os.PathLike) -> dict:
    """Read ranges written by ``save_ranges`` (or ``onnxq calibrate``)."""
    import json

    from onnxq.errors import CalibrationError
    from onnxq.qtypes import TensorRange

    src = Path(path)
    if not src.is_file():
        raise CalibrationError(f"ranges file {str(src)!r} does not exist; run onnxq calibrate "
                               "first")
    try:
        data = json.loads(src.read_text())
        ranges = {str(name): TensorRange.from_dict(r) for name, r in data["ranges"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CalibrationError(f"{str(src)!r} is not an onnxq ranges file ({exc}); write it "
                               "with onnxq calibrate -o FILE.json") from None
    for name, r in ranges.items():
        if max(abs(r.lo), abs(r.hi)) > _RANGE_LIMIT:
            raise CalibrationError(
                f"{str(src)!r}: tensor {name!r} has range [{r.lo:g}, {r.hi:g}], beyond what "
                "float32 activations can usefully take (|x| <= 1e30): the file is corrupt or "
                "was measured on broken data; recalibrate")
    return ranges


#: Largest magnitude accepted in a ranges file (float32 overflows at ~3.4e38; anything near it
#: makes every quantized value zero).
_RANGE_LIMIT = 1e30


def external_copy(model: onnx.ModelProto, extra_outputs: Sequence[str], folder: Path
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


# -- output paths: every file onnxq writes is checked here ---------------------------------------
def check_output(path: str | os.PathLike, *, what: str = "output") -> Path:
    """``path`` as a file onnxq may write: its folder exists, it is not a folder, and if it
    exists it is a regular file (never a device, FIFO or socket such as /dev/null)."""
    dest = Path(path)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{what} folder {str(parent)!r} does not exist; create it first "
                         "(mkdir -p)")
    if dest.is_dir():
        raise OutputPathError(f"{what} path {str(dest)!r} is a directory; give a file name")
    if dest.exists() and not dest.is_file():
        raise OutputPathError(f"{what} path {str(dest)!r} exists and is not a regular file (a "
                         "device, FIFO or socket); onnxq only writes regular files: choose "
                         "another path")
    return dest


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same file (symlinks and hard links included)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def model_files(path: str | os.PathLike) -> list[Path]:
    """The files reading model ``path`` touches: the file (or folder) itself and, for ONNX,
    its external-data files."""
    src = Path(path)
    files = [src]
    if src.is_file() and src.suffix.lower() == ".onnx":
        try:
            light = onnx.load_model(str(src), load_external_data=False)
        except Exception:  # noqa: BLE001 - unreadable: load_model reports it properly later
            return files
        for t in light.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                loc = next((e.value for e in t.external_data if e.key == "location"), None)
                if loc and (src.parent / loc) not in files:
                    files.append(src.parent / loc)
    return files


def check_outputs(outputs: dict[str, str | os.PathLike | None],
                  inputs: Sequence[str | os.PathLike | None]) -> dict[str, Path]:
    """Check every output path (``check_output``) against every input and every other output:
    onnxq never writes over a file it reads, nor writes two outputs to one file."""
    checked: dict[str, Path] = {}
    for what, path in outputs.items():
        if path is None:
            continue
        dest = check_output(path, what=what)
        for src in inputs:
            if src is not None and same_file(dest, src):
                raise OutputPathError(f"{what} {str(dest)!r} is a file onnxq reads ({str(src)!r}); "
                                 "it never overwrites its inputs: choose another file name")
        for other, earlier in checked.items():
            if same_file(dest, earlier):
                raise OutputPathError(f"{what} and {other} are the same file {str(dest)!r}; give "
                                 "each output its own path")
        checked[what] = dest
    return checked


def write_text_atomic(path: str | os.PathLike, text: str | bytes) -> Path:
    """Write ``text`` to ``path`` through a private temporary file in the same folder
    (``mkstemp``: unpredictable name, created exclusively), then rename; on failure nothing is
    left behind and an existing file is unchanged."""
    dest = check_output(path)
    clean_stale(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix("."), suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


# -- temporaries: named after their process, so a killed run's leftovers can be recognised ------
_TEMP = re.compile(r"^\.?onnxq-(?:[a-z]+-)?(\d+)-")


def temp_prefix(dot: str = "", kind: str = "") -> str:
    """``.onnxq-<pid>-`` (or ``onnxq-<kind>-<pid>-``): the owner of a temporary is visible."""
    return f"{dot}onnxq-{kind + '-' if kind else ''}{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its files alone
    return True


def clean_stale(folder: str | os.PathLike, *, min_age: float = 3600.0) -> list[Path]:
    """Remove onnxq temporaries in ``folder`` whose process is gone (a run killed with -9)
    and that are older than ``min_age`` seconds (a process of another PID namespace sharing
    the folder looks dead too); returns what was removed. Other names are never touched."""
    import time

    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or entry.is_symlink() or _alive(int(m.group(1))):
            continue
        try:
            if time.time() - entry.stat().st_mtime < min_age:
                continue
        except OSError:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
