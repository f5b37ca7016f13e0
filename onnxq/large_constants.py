"""Exporting large constants once: graphsurgeon copies every initializer into the graph proto
and the graph into the model, so a 2 GB model briefly needs 6 GB. ``graph.export_graph`` swaps
large constants for empty stubs while graphsurgeon exports, then writes each real tensor once."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxq.external import is_kept, read_kept
from onnxq.scopes import tensor_bytes

__all__ = ["stub_large_constants", "fill_stubs", "map_kept"]

_LARGE = 1 << 20  # bytes: a constant this large is exported once, not copied three times


def stub_large_constants(graph: gs.Graph) -> list:
    """graphsurgeon's export copies every initializer into the graph and the graph into the
    model (three copies of the weights at once: 3x the model size in memory). Large constants
    are swapped for empty stubs of the same name, type and shape while it exports;
    ``fill_stubs`` then writes each real tensor once."""
    from onnx_graphsurgeon.ir.tensor import LazyValues

    found = []
    seen: set[int] = set()
    for g in [graph, *graph.subgraphs(recursive=True)]:
        for t in g.tensors().values():
            if not isinstance(t, gs.Constant) or id(t) in seen:
                continue
            seen.add(id(t))
            values = vars(t).get("_values")
            nbytes = tensor_bytes(values.tensor) if isinstance(values, LazyValues) else \
                getattr(values, "nbytes", 0)
            if nbytes < _LARGE or np.dtype(t.dtype) == np.dtype(object):
                continue
            stub = onnx.TensorProto(name=t.name, dims=list(t.shape),
                                    data_type=onnx.helper.np_dtype_to_tensor_dtype(t.dtype))
            found.append((t, values, stub))
            t._values = LazyValues(stub)
    return found


def fill_stubs(model: onnx.ModelProto, real: dict) -> None:
    """Replace each stub initializer (by name, in every scope) by its real data, one copy."""
    if not real:
        return
    from onnx import numpy_helper
    from onnx_graphsurgeon.ir.tensor import LazyValues

    from onnxq.scopes import proto_subgraphs

    stack = [model.graph]
    while stack:
        g = stack.pop()
        for t in g.initializer:
            if t.name in real and not t.raw_data and t.data_location != onnx.TensorProto.EXTERNAL:
                const, values = real[t.name]
                if isinstance(values, LazyValues):
                    t.CopyFrom(values.tensor)
                else:
                    t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(values)))
                t.name = const.name
        stack.extend(proto_subgraphs(g))


class MappedValues(LazyValues):
    """The values of a tensor kept in its external file: a memory map, read when touched."""

    def load(self) -> np.ndarray:
        return read_kept(self.tensor)


def map_kept(graph: gs.Graph) -> int:
    """Constants of ``graph`` whose data stayed in its file (``onnxq.external``) read it
    through a memory map, and export as the same reference; returns how many."""
    count = 0
    for t in graph.tensors().values():
        values = vars(t).get("_values") if isinstance(t, gs.Constant) else None
        if isinstance(values, LazyValues) and not isinstance(values, MappedValues) \
                and is_kept(values.tensor):
            t._values = MappedValues(values.tensor)
            count += 1
    return count
