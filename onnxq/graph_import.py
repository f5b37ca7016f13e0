"""Checks and repairs on a model as graphsurgeon imports it (``graph.import_graph``)."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

__all__ = ["check_tensor_types", "declared_shapes"]


def check_tensor_types(graph: onnx.GraphProto) -> None:
    """Every constant tensor (initializers, Constant values; subgraphs too) has an element type
    ONNX defines: type 0 (undefined) or an unknown number is a corrupt file, refused with its
    name (graphsurgeon would stop with an internal error)."""
    from onnxq.errors import ModelError
    from onnxq.scopes import proto_subgraphs

    known = set(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}
    stack = [graph]
    while stack:
        g = stack.pop()
        tensors = [*g.initializer, *(a.t for n in g.node for a in n.attribute
                                     if a.type == onnx.AttributeProto.TENSOR)]
        for t in tensors:
            if t.data_type not in known:
                raise ModelError(f"tensor {t.name!r} has element type {t.data_type}, which ONNX "
                                 "does not define (0 means undefined): the file is corrupt or "
                                 "was written wrongly; re-export the model")
        stack.extend(proto_subgraphs(g))


def declared_shapes(graph: gs.Graph, proto: onnx.GraphProto) -> None:
    """A graph input or output also listed in ``value_info`` without a shape loses its
    declared shape in graphsurgeon's import (the later entry wins); the declaration stands."""
    for tensors, declared in ((graph.inputs, proto.input), (graph.outputs, proto.output)):
        by_name = {vi.name: vi for vi in declared}
        for t in tensors:
            vi = by_name.get(t.name)
            if t.shape is None and vi is not None and vi.type.tensor_type.HasField("shape"):
                t.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                           for d in vi.type.tensor_type.shape.dim]
