"""Deterministic generated names in tf2onnx's output.

tf2onnx names what it creates (folded constants, inserted Transposes, their outputs) with a
process-wide counter (``const_fold_opt__422``, ``Transpose__32``), and its optimizers visit
sets whose order follows Python's string hashing. So the same ``.tflite`` converted twice gave
the same graph under other names (70 of BlazeFace's 75 initializers), and onnxq's output bytes
changed from run to run. Here every generated name (``<stem>__<n>``, maybe with ``:<k>``) of
a tensor or node is renamed after its first appearance in node order (``<stem>__c<i>``; a
constant's stem is ``const``, as tf2onnx keeps an arbitrary one of equal constants' names),
and the initializers are listed in that order. Graph inputs and outputs keep their names.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import onnx

__all__ = ["canonical_names", "stable_merges", "every_node"]


@contextlib.contextmanager
def stable_merges() -> Iterator[None]:
    """While tf2onnx converts: its merge of duplicated nodes keeps the one with the smallest
    name, not whichever its node order (which follows string hashing) puts first (two equal
    MaxPools of MediaPipe's face mesh came out as ``max_pooling2d_4`` or ``_6``). The
    optimizer's grouping is wrapped for the duration and restored."""
    from tf2onnx.optimizer import merge_duplicated_nodes_optimizer as module

    cls = module.MergeDuplicatedNodesOptimizer
    original = cls.__dict__["_group_nodes_by_type_inputs"]

    def grouped(graph):
        groups = original.__func__(graph)
        for nodes in groups.values():
            nodes.sort(key=lambda node: node.name)
        return groups

    cls._group_nodes_by_type_inputs = staticmethod(grouped)
    try:
        yield
    finally:
        cls._group_nodes_by_type_inputs = original

_GENERATED = re.compile(r"^(.*?)__\d+((?::\d+)?)$")


def every_node(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs, in order."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from every_node(sub)


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The subgraphs (``If`` branches, ``Loop`` / ``Scan`` bodies) nested in ``graph``."""
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield sub
                yield from _subgraphs(sub)


def _renamer(taken: set[str], constants: set[str]):
    count = [0]

    def rename(name: str) -> str:
        match = _GENERATED.match(name)
        # tf2onnx merges equal constants, keeping whichever name its set order gives
        # (``const_starts__7`` or ``const_axes__9``): a constant's stem says nothing
        stem = "const" if name in constants else match.group(1) if match else name
        new = f"{stem}__c{count[0]}{match.group(2) if match else ''}"
        count[0] += 1
        while new in taken:
            new = "_" + new
        taken.add(new)
        return new
    return rename


def canonical_names(model: onnx.ModelProto) -> None:
    """Rename ``model``'s generated tensor and node names by first appearance, in place."""
    graph = model.graph
    fixed = {v.name for v in graph.input} | {v.name for v in graph.output}
    tensors = ({t.name for t in graph.initializer}
               | {o for n in every_node(graph) for o in n.output}) - fixed
    readers: dict[str, int] = {}
    for node in every_node(graph):
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    # a constant several nodes read may be equal constants tf2onnx merged, under whichever
    # name its set order kept (MediaPipe's zero biases): renamed like the generated ones
    shared = {t.name for t in graph.initializer if readers.get(t.name, 0) > 1} - fixed
    generated = {t for t in tensors if _GENERATED.match(t)} | shared
    names = {n.name for n in every_node(graph)}
    taken = (tensors - generated) | fixed | (names - {n for n in names if _GENERATED.match(n)})
    rename = _renamer(taken, {t.name for t in graph.initializer})
    mapping: dict[str, str] = {}
    for node in every_node(graph):
        for name in list(node.input) + list(node.output):  # first appearance
            if name in generated and name not in mapping:
                mapping[name] = rename(name)
        if _GENERATED.match(node.name):
            node.name = rename(node.name)
    for name in sorted(generated - set(mapping)):  # never read (kept by the exporter)
        mapping[name] = rename(name)
    for node in every_node(graph):
        node.input[:] = [mapping.get(i, i) for i in node.input]
        node.output[:] = [mapping.get(o, o) for o in node.output]
    for v in graph.value_info:
        v.name = mapping.get(v.name, v.name)
    for sub in _subgraphs(graph):  # a branch's outputs are its nodes' outputs, renamed
        for v in list(sub.output) + list(sub.value_info):
            v.name = mapping.get(v.name, v.name)
    infos = sorted(v.SerializeToString() for v in graph.value_info)  # any order in
    del graph.value_info[:]
    graph.value_info.extend(onnx.ValueInfoProto.FromString(b) for b in infos)
    order = {new: k for k, new in enumerate(mapping.values())}
    for t in graph.initializer:
        t.name = mapping.get(t.name, t.name)
    ordered = sorted(graph.initializer, key=lambda t: (t.name in order, order.get(t.name, 0)))
    copies = [onnx.TensorProto() for _ in ordered]
    for copy, t in zip(copies, ordered, strict=True):
        copy.CopyFrom(t)
    del graph.initializer[:]
    graph.initializer.extend(copies)
