"""Tensor shapes at batch 1 for the cost model: onnx shape inference on a weightless copy."""

from __future__ import annotations

from collections.abc import Mapping

import onnx
from onnx import TensorProto

from onnxq.placement.values import fold_values
from onnxq.scopes import tensor_bytes

__all__ = ["batch1_shapes"]

#: rounds of folding shape arithmetic into constants and inferring again
_ROUNDS = 32

_SMALL = 4096  # initializers up to this many elements keep their values (Reshape targets …)


def _weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large initializers keep only their dims (shape inference needs no more)."""
    light = onnx.ModelProto()
    small = sum(tensor_bytes(t) for t in model.graph.initializer) < 2**24
    light.CopyFrom(model) if small else _copy_without_data(model, light)
    for t in light.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if n > _SMALL:
            _strip(t)
    return light


def _copy_without_data(model: onnx.ModelProto, light: onnx.ModelProto) -> None:
    """Fill ``light`` with ``model`` minus the large initializers' data, without touching
    ``model`` (re-adding removed initializers would copy every weight into its arena)."""
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(light, name, getattr(model, name))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph, src = light.graph, model.graph
    graph.name = src.name
    for name in ("node", "input", "output", "value_info"):
        getattr(graph, name).extend(getattr(src, name))
    for t in src.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if n <= _SMALL:
            graph.initializer.add().CopyFrom(t)
            continue
        slim = graph.initializer.add()
        slim.name, slim.data_type = t.name, t.data_type
        slim.dims.extend(t.dims)


def _strip(t: TensorProto) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
        t.ClearField(field)
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    entry = t.external_data.add()
    entry.key, entry.value = "location", "onnxq-shape-only"


def batch1_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, tuple] | None = None
                  ) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the main graph whose shape inference could fix → its shape, with
    the inputs at their declared dims; a free dim takes its size from ``input_shapes`` (a
    calibration feed), except the leading (batch) dim, which is 1, as are unknown ones.
    Where batch 1 gives some tensor a negative dim (the leading dim is not a batch: a
    spectrogram's frames, convolved without padding), the feed's leading dims are used, and a
    shape that stays impossible is left out (unknown). Tensors of Loop and Scan bodies: their
    shape in one iteration (``_body_shapes``)."""
    shapes = _inferred(model, input_shapes, batch_one=True)
    if input_shapes and any(d < 0 for dims in shapes.values() for d in dims):
        shapes = _inferred(model, input_shapes, batch_one=False)
    return {name: dims for name, dims in shapes.items() if all(d >= 0 for d in dims)}


def _inferred(model: onnx.ModelProto, input_shapes: Mapping[str, tuple] | None,
              batch_one: bool) -> dict[str, tuple[int, ...]]:
    light = _weightless(model)
    inits = {t.name for t in light.graph.initializer}
    for inp in light.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        given = (input_shapes or {}).get(inp.name)
        first = 1 if batch_one else 0  # the first dim a feed may fix
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                value = d.dim_value
            elif i >= first and given is not None and i < len(given):
                value = given[i]  # a free dim the feed fixes; the batch (dim 0) stays 1
            else:
                value = 1
            d.Clear()
            d.dim_value = int(value)
    del light.graph.value_info[:]
    for out in light.graph.output:
        out.type.tensor_type.ClearField("shape")
    inferred = _infer(light)
    for _ in range(_ROUNDS):  # each round can fix the shapes the next one's values need
        if inferred is None or not fold_values(light, _known(inferred)):
            break
        inferred = _infer(light) or inferred
    if inferred is None:
        return {}
    return _known(inferred)


def _infer(light: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        return onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference is best effort here
        return None


def _known(inferred: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for t in g.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    for body in _loop_bodies(g):
        _body_shapes(body, shapes)
    return shapes


def _loop_bodies(graph: onnx.GraphProto):
    """The bodies of ``graph``'s Loop and Scan nodes, and of theirs, depth first."""
    for node in graph.node:
        if node.op_type in ("Loop", "Scan"):
            for attr in node.attribute:
                if attr.name == "body" and attr.type == onnx.AttributeProto.GRAPH:
                    yield attr.g
                    yield from _loop_bodies(attr.g)


def _body_shapes(body: onnx.GraphProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """One iteration's shapes: a body declares its own inputs, often with a free batch dim
    that inference cannot tie to the outer one, so a free dim is 1 there too (batch 1)."""
    for vi in list(body.input) + list(body.value_info) + list(body.output):
        tt = vi.type.tensor_type
        if vi.name not in shapes and tt.HasField("shape"):
            shapes[vi.name] = tuple(int(d.dim_value) if d.HasField("dim_value")
                                    and d.dim_value > 0 else 1 for d in tt.shape.dim)
    for t in body.initializer:
        shapes.setdefault(t.name, tuple(int(d) for d in t.dims))
