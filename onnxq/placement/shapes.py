"""Tensor shapes at batch 1 for the cost model: onnx shape inference on a weightless copy."""

from __future__ import annotations

from collections.abc import Mapping

import onnx
from onnx import TensorProto

from onnxq.placement.values import fold_values
from onnxq.scopes import tensor_bytes

__all__ = ["batch1_shapes", "feed_shapes"]

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
    calibration feed), except a leading dim that is a batch, which is 1, as are unknown ones.
    A free leading dim that shape inference carries to another axis is not a batch (a
    spectrogram's frames, unsqueezed into an image): it takes the feed's size, or stays unknown.
    Sizing it 1 there gave unpadded convolutions negative dims (onnxq's placement crashed, and
    onnx's Slice inference aborts the process on them). A shape with a negative dim is left
    out. Tensors of Loop and Scan bodies: their shape in one iteration (``_body_shapes``)."""
    shapes = _inferred(model, input_shapes, batch_one=_leading_is_batch(model, input_shapes))
    return {name: dims for name, dims in shapes.items() if all(d >= 0 for d in dims)}


def feed_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, tuple]
                ) -> dict[str, tuple[int, ...]]:
    """Like ``batch1_shapes``, at the feed's own sizes, leading dims included (the work of
    running that feed); an input the feed does not size leaves its shapes unknown."""
    shapes = _inferred(model, input_shapes, batch_one=False)
    return {name: dims for name, dims in shapes.items() if all(d >= 0 for d in dims)}


_LEADING = "onnxq_leading"  # the symbol a free leading dim gets while it is traced


def _free_leading(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    found = []
    for inp in model.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            found.append(inp)
    return found


def _leading_is_batch(model: onnx.ModelProto, input_shapes: Mapping[str, tuple] | None
                      ) -> bool:
    """Whether the inputs' free leading dims stay on axis 0 of every tensor they reach
    (symbolic shape inference, no sizes invented: nothing can go negative)."""
    free = _free_leading(model)
    given = input_shapes or {}
    if all(len(given.get(i.name, ())) > 0 and given[i.name][0] == 1 for i in free):
        return True  # nothing free, or batch-1 feeds: both readings are the same
    light = _weightless(model)
    names = {i.name for i in free}
    for inp in light.graph.input:
        if inp.name in names:
            dims = inp.type.tensor_type.shape.dim
            dims[0].Clear()
            dims[0].dim_param = _LEADING
            feed = given.get(inp.name)
            for i, d in enumerate(dims[1:], start=1):
                if not (d.HasField("dim_value") and d.dim_value > 0):
                    d.Clear()
                    d.dim_value = int(feed[i]) if feed is not None and i < len(feed) else 1
    del light.graph.value_info[:]
    inferred = _infer(light)
    if inferred is None:
        return True
    g = inferred.graph
    return not any(d.dim_param == _LEADING for vi in list(g.value_info) + list(g.output)
                   for d in vi.type.tensor_type.shape.dim[1:])


def _inferred(model: onnx.ModelProto, input_shapes: Mapping[str, tuple] | None,
              batch_one: bool) -> dict[str, tuple[int, ...]]:
    light = _weightless(model)
    inits = {t.name for t in light.graph.initializer}
    for inp in light.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        given = (input_shapes or {}).get(inp.name)
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            d.Clear()
            if i > 0 or batch_one:  # (a free dim the feed does not fix is 1)
                d.dim_value = int(given[i]) if i > 0 and given is not None and i < len(given) \
                    else 1
            elif given is not None and len(given) > 0:
                d.dim_value = int(given[0])  # a leading dim that is not a batch: the feed's
            else:
                d.dim_param = _LEADING  # unknown: the shapes it reaches stay unknown
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
