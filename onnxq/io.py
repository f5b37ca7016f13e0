"""Loading, validating and atomically saving ONNX models (external data for > 2 GB)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxq.errors import ModelError
from onnxq.external import (
    has_kept,
    internalize,
    is_kept,
    keep_external,
    kept_tensors,
    stream_into,
)
from onnxq.graph_import import check_text
from onnxq.observe import expose
from onnxq.outputs import (  # re-exported: io is where callers look for file handling
    Staged,
    check_output,
    check_outputs,
    clean_stale,
    model_files,
    same_file,
    temp_prefix,
    write_text_atomic,
)
from onnxq.scopes import tensor_bytes

__all__ = ["load_model", "save_model", "validate_model", "external_copy", "PROTOBUF_LIMIT",
           "fits_in_protobuf", "self_contained", "check_output", "check_outputs", "same_file", "model_files",
           "write_text_atomic", "temp_prefix", "clean_stale", "Staged"]

logger = logging.getLogger(__name__)

#: Protobuf cannot serialise a message larger than 2 GiB; bigger models use external data.
PROTOBUF_LIMIT = 2**31 - 1


def load_model(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Return a private copy of ``source`` (a path or a ``ModelProto``; never modified)."""
    if isinstance(source, onnx.ModelProto):
        unloaded = sorted({next((e.value for e in t.external_data if e.key == "location"), "?")
                           for t in source.graph.initializer
                           if t.data_location == onnx.TensorProto.EXTERNAL and not is_kept(t)})
        if unloaded:
            raise ModelError(
                f"the model's weights are in external file(s) {unloaded} that were not loaded; "
                "pass the .onnx path instead, or load it with onnx.load(path) (which loads "
                "external data)")
        check_text(source)
        return _copy(source)
    path = Path(source)
    if not path.exists():
        raise ModelError(f"model file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise ModelError(f"{str(path)!r} is a directory, not an .onnx file")
    if path.stat().st_size == 0:
        raise ModelError(f"model file {str(path)!r} is empty; re-export the model")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
        # large external data stays in its files (see onnxq.external); the rest is loaded
        if not keep_external(model, path.parent):
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
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
    check_text(model)
    return model


def validate_model(model: onnx.ModelProto | str | os.PathLike, *, run_session: bool = True) -> None:
    """Full ``onnx.checker`` check, then build an onnxruntime CPU session. Raise ModelError."""
    if isinstance(model, onnx.ModelProto) and has_kept(model):
        import tempfile

        with tempfile.TemporaryDirectory(prefix=temp_prefix(kind="check")) as tmp:
            path, _ = external_copy(model, (), Path(tmp))
            return validate_model(path, run_session=run_session)
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
    """True when ``model`` serializes in one protobuf message (with a 64 MiB margin). Large
    models are judged by their tensor data (``ByteSize()`` would serialize them once just to
    measure); small ones exactly."""
    from onnxq.scopes import all_nodes, proto_subgraphs

    graphs, stack = [], [model.graph]
    while stack:
        graphs.append(stack.pop())
        stack.extend(proto_subgraphs(graphs[-1]))
    data = sum(tensor_bytes(t) for g in graphs for t in g.initializer
               if t.data_location != onnx.TensorProto.EXTERNAL)
    data += sum(tensor_bytes(a.t) for n in all_nodes(model.graph) for a in n.attribute
                if a.type == onnx.AttributeProto.TENSOR)
    if data < 2**30:
        return model.ByteSize() <= PROTOBUF_LIMIT - 64 * 2**20
    return data <= PROTOBUF_LIMIT - 64 * 2**20


def self_contained(model: onnx.ModelProto) -> None:
    """Load the weights ``model`` left in its source's files (``onnxq.external``) into it, in
    place, when the whole model then still fits in one protobuf message."""
    kept = kept_tensors(model)
    if kept and fits_in_protobuf(model) and sum(tensor_bytes(t) for t in model.graph.initializer) \
            <= PROTOBUF_LIMIT - 64 * 2**20:
        internalize(model)


def _needs_external_data(model: onnx.ModelProto) -> bool:
    return not fits_in_protobuf(model)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, validate: bool = True,
               staged: Staged | None = None) -> Path:
    """Write ``model`` to ``path`` atomically: temporary folder, validate, then rename.

    Models near the 2 GiB protobuf limit get their weights in ``<name>.data`` beside the file.
    On any failure nothing is left at ``path``. With ``staged`` the rename waits for
    ``staged.commit()`` (several outputs, all or nothing).
    """
    if staged is None:
        with Staged() as own:
            dest = save_model(model, path, validate=validate, staged=own)
            own.commit()
        logger.info("wrote %s", dest)
        return dest
    dest = check_output(path)
    tmp = staged.folder_for(dest) / dest.name
    if has_kept(model):  # weights still in the source's files: copied file to file
        external_copy(model, (), tmp.parent, data_name=dest.name + ".data",
                      model_name=dest.name)
    elif _needs_external_data(model):
        model = _copy(model)  # conversion to external data edits the proto in place
        onnx.save_model(model, str(tmp), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=dest.name + ".data",
                        size_threshold=1024)
    else:
        onnx.save_model(model, str(tmp))
    if validate:
        validate_model(tmp)
    return dest


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


def external_copy(model: onnx.ModelProto, extra_outputs: Sequence[str], folder: Path,
                  data_name: str = "weights.bin", model_name: str | None = None
                  ) -> tuple[Path, dict[str, str]]:
    """Write ``model`` (plus ``extra_outputs`` as graph outputs) to ``folder`` with every large
    initializer in one external data file, one tensor at a time: no second in-memory copy of
    the weights, and onnxruntime maps the data file instead of copying it. Returns the path
    and, per extra output, the output that carries it (tensors inside If/Loop/Scan bodies are
    threaded out, see ``observe.expose``; those that cannot be are left out)."""
    from onnx import numpy_helper

    light = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain",
                  "model_version"):
        setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.metadata_props.extend(model.metadata_props)
    light.doc_string = model.doc_string
    g, src = light.graph, model.graph
    g.name, g.doc_string = src.name, src.doc_string
    g.sparse_initializer.extend(src.sparse_initializer)
    g.quantization_annotation.extend(src.quantization_annotation)
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    carriers = expose(g, extra_outputs)
    offset = 0
    with open(folder / data_name, "wb") as data:
        for init in src.initializer:
            kept = is_kept(init)
            if not kept and (init.data_location == onnx.TensorProto.EXTERNAL
                             or tensor_bytes(init) < 4096):
                g.initializer.append(init)
                continue
            pad = (-offset) % 64  # aligned for mmap-friendly access
            data.write(b"\0" * pad)
            offset += pad
            if kept:
                length = stream_into(init, data)
            else:
                raw = init.raw_data if init.HasField("raw_data") else \
                    numpy_helper.to_array(init).tobytes()
                data.write(raw)
                length = len(raw)
            t = g.initializer.add()
            t.name, t.data_type = init.name, init.data_type
            t.dims.extend(init.dims)
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)),
                               ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            offset += length
    path = folder / (model_name or f"{Path(data_name).stem}.onnx")
    onnx.save_model(light, str(path))
    return path, carriers
