"""Shape arithmetic folded into constants, so that shape inference sees through it.

Exporters compute sizes at run time: torch's ``chunk``/``split`` and head reshapes become
``Shape → Gather → Div → Slice/Reshape``, ``Range`` over a sequence length, ``Expand`` to a
computed shape. onnx's data propagation stops at several of these ops, and every tensor after
them has no shape, so the cost model cannot price it (a ShuffleNet-style model: 103 of 190
nodes). With the inputs' dims fixed (``batch1_shapes``), those values are constants: each such
node whose inputs are known small values is evaluated (onnx's reference evaluator) and replaced
by an initializer in the weightless copy, and inference runs again."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

__all__ = ["fold_values"]

#: ops of shape arithmetic (pure, cheap on small integer tensors)
OPS = frozenset({
    "Shape", "Size", "Gather", "GatherElements", "Unsqueeze", "Squeeze", "Concat", "Slice",
    "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Floor", "Ceil", "Sqrt", "Cast", "Range",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Where",
    "ConstantOfShape", "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "Min", "Max",
    "Identity", "Constant", "Reshape", "Expand", "Tile", "Transpose", "Split"})
#: the largest value (elements) folded; shape vectors are tiny, masks can be larger
MAX_ELEMENTS = 4096


def fold_values(light: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Replace the main-graph nodes of ``OPS`` whose inputs are known values (initializers
    with data, earlier folded outputs, ``Shape`` of a tensor in ``shapes``) by initializers
    holding their outputs. ``light`` is the private weightless copy. True when any changed."""
    graph = light.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer if _has_data(t)}
    outputs = {o.name for o in graph.output}
    opset = next((o.version for o in light.opset_import if o.domain in ("", "ai.onnx")), 13)
    folded: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type not in OPS or node.domain not in ("", "ai.onnx") \
                or any(o in outputs for o in node.output):
            continue
        found = _evaluate(node, values, shapes, opset)
        if found is None:
            continue
        values.update(found)
        folded.append(node)
    if not folded:
        return False
    gone = {id(n) for n in folded}
    kept = [n for n in graph.node if id(n) not in gone]
    del graph.node[:]
    graph.node.extend(kept)
    have = {t.name for t in graph.initializer}
    for node in folded:
        for name in node.output:
            if name and name not in have:
                graph.initializer.append(numpy_helper.from_array(values[name], name))
    return True


_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _has_data(t: onnx.TensorProto) -> bool:
    """Its values are in the message (not in an external file, nor dropped as in a
    ``self_check.skeleton``)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return False
    return any(len(getattr(t, f)) for f in _FIELDS) or math.prod(t.dims) == 0


def _evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray],
              shapes: dict[str, tuple[int, ...]], opset: int) -> dict[str, np.ndarray] | None:
    """``node``'s outputs when they follow from known values, else None."""
    if node.op_type in ("Shape", "Size"):
        dims = shapes.get(node.input[0])
        if dims is None:
            return None
        if node.op_type == "Size":
            return {node.output[0]: np.array(int(np.prod(dims)), np.int64)}
        attrs = {a.name: a.i for a in node.attribute}
        picked = dims[attrs.get("start", 0):attrs.get("end", len(dims))]
        return {node.output[0]: np.array(picked, np.int64)}
    inputs = [i for i in node.input if i]
    if any(i not in values or values[i].size > MAX_ELEMENTS for i in inputs):
        return None
    try:
        results = ReferenceEvaluator(node, opsets={"": opset}).run(
            None, {i: values[i] for i in inputs})
    except Exception:  # noqa: BLE001 - a value that cannot be computed stays unknown
        return None
    found = {}
    for name, value in zip(node.output, results, strict=False):
        array = np.asarray(value)
        if not name or array.size > MAX_ELEMENTS or array.dtype == object:
            return None
        found[name] = array
    return found
