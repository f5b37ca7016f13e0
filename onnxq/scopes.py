"""Nested graphs (If branches, Loop and Scan bodies) at the protobuf level: iterate them,
rename what they read, and store constants they share once."""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import onnx.numpy_helper

__all__ = ["proto_subgraphs", "renamed_nodes", "all_nodes", "rename_inputs", "hoist_shared_initializers",
           "tensor_bytes"]


def proto_subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The direct subgraphs of ``graph``'s nodes."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
            elif attr.type == onnx.AttributeProto.GRAPHS:
                yield from attr.graphs


def renamed_nodes(model: onnx.ModelProto, prefix: str) -> onnx.ModelProto:
    """A copy of ``model`` whose nodes, subgraphs' included, are named ``prefix0``, ``prefix1``
    … (ONNX allows repeated or empty names; onnxruntime refuses repeated ones)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    stack, count = [copy.graph], 0
    while stack:
        g = stack.pop()
        for node in g.node:
            node.name = f"{prefix}{count}"
            count += 1
        stack.extend(proto_subgraphs(g))
    return copy


def tensor_bytes(t: onnx.TensorProto) -> int:
    """The data size of an initializer, without ``ByteSize()`` (which serializes the whole
    tensor to measure it: a transient copy of every weight)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return next((int(e.value) for e in t.external_data if e.key == "length"), 0)
    count = 1
    for d in t.dims:
        count *= d
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 8
    return count * max(itemsize, 1)


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of ``graph`` and of every subgraph inside it (If branches, loop bodies)."""
    nodes = list(graph.node)
    for sub in proto_subgraphs(graph):
        nodes.extend(all_nodes(sub))
    return nodes


def rename_inputs(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for sub in proto_subgraphs(graph):
        rename_inputs(sub, renames)


def _read_twice(graphs: list[onnx.GraphProto], key) -> set[tuple]:
    """Keys of constants that one node reads in two input slots once merged (a zero bias and
    its zero point are identical bytes). They are never merged: onnxruntime's QDQ optimizer
    aborts the whole process on ``DequantizeLinear(b, scale, b)`` (found by the fuzz suite)."""
    key_of = {t.name: key(t) for g in graphs for t in g.initializer
              if t.data_location != onnx.TensorProto.EXTERNAL}
    conflict: set[tuple] = set()
    for g in graphs:
        for node in g.node:
            keys = [key_of[n] for n in node.input if n in key_of]
            conflict.update(k for k in keys if keys.count(k) > 1)
    return conflict


def hoist_shared_initializers(model: onnx.ModelProto) -> None:
    """graphsurgeon exports an outer-scope constant into every subgraph that reads it (a weight
    shared by both branches of an If is stored twice). Identical initializers of several
    subgraphs, or of a subgraph and the main graph, are stored once, in the main graph."""
    main = model.graph
    nested: list[onnx.GraphProto] = []
    stack = list(proto_subgraphs(main))
    while stack:
        g = stack.pop(0)
        nested.append(g)
        stack.extend(proto_subgraphs(g))
    if not nested:
        return

    def key(t: onnx.TensorProto) -> tuple:
        if t.HasField("raw_data"):
            data: object = t.raw_data
        elif t.data_type == onnx.TensorProto.STRING:
            data = tuple(t.string_data)
        else:
            data = onnx.numpy_helper.to_array(t).tobytes()
        return t.data_type, tuple(t.dims), data

    conflict = _read_twice([main, *nested], key)
    overridable = {i.name for i in main.input}
    owner: dict[tuple, str] = {}
    count: dict[tuple, int] = {}
    shapes = {(t.data_type, tuple(t.dims)) for g in nested for t in g.initializer}
    for t in main.initializer:
        if (t.data_location != onnx.TensorProto.EXTERNAL and t.name not in overridable
                and (t.data_type, tuple(t.dims)) in shapes and key(t) not in conflict):
            owner.setdefault(key(t), t.name)
            count[key(t)] = 2
    for g in nested:
        for t in g.initializer:
            k = key(t)
            count[k] = count.get(k, 0) + 1
    renames: dict[str, str] = {}
    for g in nested:
        moved = []
        for i, t in enumerate(g.initializer):
            k = key(t)
            if count[k] < 2 or k in conflict or t.data_location == onnx.TensorProto.EXTERNAL:
                continue
            moved.append(i)
            if k not in owner:
                owner[k] = t.name
                main.initializer.append(t)  # a copy
            elif owner[k] != t.name:
                renames[t.name] = owner[k]
        for i in reversed(moved):
            del g.initializer[i]
    if renames:
        rename_inputs(main, renames)
