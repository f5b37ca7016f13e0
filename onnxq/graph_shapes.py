"""Shape inference for a graphsurgeon graph without copying its weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.scopes import proto_subgraphs

__all__ = ["infer_shapes"]

_SMALL = 4096  # initializers with more elements become typed inputs (their values unread)


def infer_shapes(graph: gs.Graph) -> None:
    """ONNX shape inference (with data propagation) on a weight-free copy of ``graph``: large
    initializers are declared as typed inputs instead of copied, so memory does not double.
    The inferred element types and shapes are written onto ``graph``'s tensors, subgraphs
    included."""
    big = {name: t for name, t in graph.tensors().items()
           if isinstance(t, gs.Constant) and int(np.prod(t.shape, dtype=np.int64)) > _SMALL}
    placeholders = {name: gs.Variable(name, dtype=t.dtype, shape=list(t.shape))
                    for name, t in big.items()}
    swapped: list[tuple[gs.Node, int, gs.Tensor]] = []
    for node in graph.nodes:
        for i, t in enumerate(node.inputs):
            if t.name in placeholders and isinstance(t, gs.Constant):
                swapped.append((node, i, t))
    original_inputs = list(graph.inputs)
    try:
        for node, i, _ in swapped:  # gs rewires producers/consumers as inputs change
            node.inputs[i] = placeholders[node.inputs[i].name]
        graph.inputs = original_inputs + list(placeholders.values())
        light = G.export_graph(graph)
    finally:
        graph.inputs = original_inputs
        for node, i, const in swapped:
            node.inputs[i] = const
    inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False,
                                                 data_prop=True)
    tensors = {name: t for g in G.iter_graphs(graph) for name, t in g.tensors().items()}
    for vi in _value_infos(inferred.graph):
        var = tensors.get(vi.name)
        if not isinstance(var, gs.Variable) or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if tt.elem_type:
            var.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if tt.HasField("shape"):
            var.shape = [d.dim_value if d.HasField("dim_value") else
                         (d.dim_param or None) for d in tt.shape.dim]


def _value_infos(graph: onnx.GraphProto):
    """Inferred types of ``graph`` and of its subgraphs (If branches, loop bodies)."""
    yield from graph.value_info
    yield from graph.output
    for sub in proto_subgraphs(graph):
        yield from _value_infos(sub)
