"""Large weights that stay in their external-data files while onnxq works.

A model whose external data is large (``KEEP_BYTES`` in all) is loaded without it: each large
tensor keeps its external reference, with the location made absolute (resolved once, after
the same checks onnx makes: relative, inside the model's folder, within the file). Such a
*kept* tensor is read through a copy-on-write memory map when a pass needs its values, and is
written back as the same reference when the graph is exported, so the float weights are never
held twice in memory (protobuf frees a tensor only with its whole message). Anything that
hands a model to onnxruntime or to a file copies the kept data file to file
(``stream_into``); ``internalize`` loads them when a model is small enough to be one message.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from onnxq.errors import ModelError
from onnxq.scopes import proto_subgraphs

__all__ = ["KEEP_BYTES", "KEEP_TENSOR_BYTES", "keep_external", "is_kept", "has_kept",
           "read_kept", "kept_tensors", "stream_into", "internalize", "as_inputs"]

#: marks the references onnxq itself resolved (a per-process secret: a model file or a proto
#: built elsewhere cannot claim an absolute location onnxq would then trust)
_MARK = ("onnxq_kept", secrets.token_hex(16))

#: a model with at least this much external data keeps its large tensors on disk
KEEP_BYTES = 1 << 28
#: ... each at least this large (smaller ones are loaded: shape logic may read them)
KEEP_TENSOR_BYTES = 1 << 20

_MAPPABLE = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
             onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
             onnx.TensorProto.UINT16, onnx.TensorProto.INT32, onnx.TensorProto.UINT32,
             onnx.TensorProto.INT64, onnx.TensorProto.UINT64}


def _entries(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The main graph's initializers first, then every other tensor (attributes, subgraphs)."""
    yield from graph.initializer
    stack = [graph]
    while stack:
        g = stack.pop()
        if g is not graph:
            yield from g.initializer
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t
                elif a.type == onnx.AttributeProto.TENSORS:
                    yield from a.tensors
        stack.extend(proto_subgraphs(g))


def _expected_bytes(t: onnx.TensorProto) -> int:
    count = 1
    for d in t.dims:
        count *= d
    return count * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _resolve(t: onnx.TensorProto, base: Path) -> tuple[Path, int, int]:
    """The checked absolute file, offset and length of ``t``'s external data."""
    info = _entries(t)
    location = info.get("location", "")
    if not location or os.path.isabs(location) or ".." in Path(location).parts:
        raise ModelError(f"tensor {t.name!r}: external data location {location!r} must be a "
                         "relative path inside the model's folder; re-save the model")
    path = (base / location).resolve()
    if not path.is_relative_to(base.resolve()) or not path.is_file():
        raise ModelError(f"tensor {t.name!r}: external data file {location!r} is missing or "
                         "outside the model's folder; copy it next to the model")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else path.stat().st_size - offset
    except ValueError:
        raise ModelError(f"tensor {t.name!r}: its external data offset/length are not "
                         "integers; re-save the model") from None
    if offset < 0 or length < 0 or offset + length > path.stat().st_size:
        raise ModelError(f"tensor {t.name!r}: its external data (offset {offset}, length "
                         f"{length}) runs past the end of {location!r}; the file is truncated")
    return path, offset, length


def keep_external(model: onnx.ModelProto, base: Path) -> bool:
    """For ``model`` loaded without its external data from folder ``base``: keep the large
    tensors as checked absolute references and load the rest. False (nothing changed) when
    there is too little external data to be worth it; the caller then loads it all."""
    main = len(model.graph.initializer)  # only these are kept (see io.external_copy)
    resolved = [(i < main, t, *_resolve(t, base)) for i, t in enumerate(_all_tensors(model.graph))
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if sum(length for *_, length in resolved) < KEEP_BYTES:
        return False
    for in_main, t, path, offset, length in resolved:
        if (in_main and length >= KEEP_TENSOR_BYTES and t.data_type in _MAPPABLE
                and length == _expected_bytes(t) and not t.HasField("raw_data")):
            del t.external_data[:]
            for key, value in (("location", str(path)), ("offset", str(offset)),
                               ("length", str(length)), _MARK):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
        else:
            with open(path, "rb") as f:
                f.seek(offset)
                t.raw_data = f.read(length)
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
    return True


def is_kept(t: onnx.TensorProto) -> bool:
    """True for a tensor ``keep_external`` left in its file (an absolute reference carrying
    this process's mark)."""
    info = _entries(t) if t.data_location == onnx.TensorProto.EXTERNAL else {}
    return os.path.isabs(info.get("location", "")) and info.get(_MARK[0]) == _MARK[1]


def kept_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in _all_tensors(model.graph) if is_kept(t)]


def has_kept(model: onnx.ModelProto) -> bool:
    return any(is_kept(t) for t in _all_tensors(model.graph))


def read_kept(t: onnx.TensorProto) -> np.ndarray:
    """A kept tensor's values: a copy-on-write map of its file (no read until touched; a write
    changes only this process's pages, never the file)."""
    info = _entries(t)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).newbyteorder("<")
    shape = tuple(int(d) for d in t.dims)
    return np.memmap(info["location"], dtype=dtype, mode="c", offset=int(info["offset"]),
                     shape=shape)


def stream_into(t: onnx.TensorProto, out, chunk: int = 1 << 26) -> int:
    """Copy a kept tensor's bytes into the open file ``out``, file to file; returns the count."""
    info = _entries(t)
    length = int(info["length"])
    with open(info["location"], "rb") as src:
        src.seek(int(info["offset"]))
        left = length
        while left:
            block = src.read(min(chunk, left))
            if not block:
                raise ModelError(f"tensor {t.name!r}: its external data file "
                                 f"{info['location']!r} changed while onnxq was using it")
            out.write(block)
            left -= len(block)
    return length


def internalize(model: onnx.ModelProto) -> None:
    """Load every kept tensor of ``model`` into it (in place)."""
    for t in kept_tensors(model):
        with open(_entries(t)["location"], "rb") as f:
            f.seek(int(_entries(t)["offset"]))
            t.raw_data = f.read(int(_entries(t)["length"]))
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def as_inputs(model: onnx.ModelProto, larger_than: int | None = None) -> None:
    """Turn ``model``'s kept initializers (and, with ``larger_than``, those holding more bytes)
    into typed graph inputs, in place (for a structural check of a throwaway copy:
    ``onnx.checker`` refuses absolute data locations, and its full check serializes the model,
    weights included)."""
    graph = model.graph
    listed = {i.name for i in graph.input}
    for i in reversed(range(len(graph.initializer))):  # in place: no copy of the others
        t = graph.initializer[i]
        if is_kept(t) or (larger_than is not None and len(t.raw_data) > larger_than):
            if t.name not in listed:
                graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type,
                                                                      list(t.dims)))
            del graph.initializer[i]
