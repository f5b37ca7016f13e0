"""Checks and repairs on a model as graphsurgeon imports it (``graph.import_graph``)."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

__all__ = ["check_tensor_types", "check_text", "declared_shapes"]


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


_NAMED = ("name", "doc_string")
_NODE = ("name", "op_type", "domain", "doc_string", "input", "output")


def _texts(message, fields: tuple[str, ...], where: str) -> None:
    from onnxq.errors import ModelError

    for field in fields:
        try:
            value = getattr(message, field)
            values = [value] if isinstance(value, (str, bytes)) else list(value)
        except UnicodeDecodeError:
            values = [b""]
        if any(not isinstance(v, str) for v in values):
            raise ModelError(f"the model file is corrupt: the {field.replace('_', ' ')} of "
                             f"{where} is not valid UTF-8 text; re-export the model, or copy "
                             "the file again")


def check_text(model: onnx.ModelProto) -> None:
    """Every name, op type, domain and key is valid UTF-8 text. protobuf parses a corrupt one
    and hands it back as bytes (or raises when it is read), which later code cannot compare:
    a traceback instead of a clear refusal (found by the fuzz suite's bit flips)."""
    from onnxq.scopes import proto_subgraphs

    _texts(model, ("producer_name", "producer_version", "domain", "doc_string"), "the model")
    for o in model.opset_import:
        _texts(o, ("domain",), "an opset import")
    for p in model.metadata_props:
        _texts(p, ("key", "value"), "the metadata")
    stack = [model.graph, *(f for f in model.functions)]
    while stack:
        g = stack.pop()
        _texts(g, _NAMED, "a graph")
        for node in g.node:
            _texts(node, _NODE, "a node")
            for a in node.attribute:
                _texts(a, ("name", "ref_attr_name", "doc_string"), f"node {node.name!r}")
        for t in getattr(g, "initializer", ()):
            _texts(t, _NAMED, "an initializer")
            for e in t.external_data:
                _texts(e, ("key", "value"), f"initializer {t.name!r}")
        for vi in [*getattr(g, "value_info", ()), *g.input, *g.output]:
            if isinstance(vi, str):  # a function's inputs/outputs are names
                continue
            _texts(vi, _NAMED, "a graph input, output or value_info")
            for d in vi.type.tensor_type.shape.dim:
                _texts(d, ("dim_param", "denotation"), f"tensor {vi.name!r}")
        if isinstance(g, onnx.FunctionProto):
            _texts(g, ("domain", "input", "output"), f"function {g.name!r}")
        else:
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
