"""A float16 model computes in float32 inside, float16 at its inputs and outputs.

Models exported in half precision (for GPUs, or to halve the file) compute in float16.
onnxruntime's CPU EP has few float16 kernels: it casts around most nodes. onnxq's int8 forms
are defined against float32 (scales, the float nodes between int8 regions). So every float16
tensor inside the model (weights, activations, the `to` of Casts, the dtype of generators,
If/Loop/Scan bodies included) becomes float32. A float16 graph input is cast to float32 once,
and a float16 graph output is cast back at the end. The model keeps the interface that its
callers and its calibration data have, and each value is the float32 computation of the same
graph: exact where float16 was exact, closer to the real numbers elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.pipeline import PassResult

__all__ = ["Float16Pass"]

_HALF, _FULL = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
#: integer attributes naming an element type, per op (``Cast.to``, generators' ``dtype``)
_TYPE_ATTRS = {"Cast": "to", "RandomNormal": "dtype", "RandomUniform": "dtype",
               "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "EyeLike": "dtype",
               "Multinomial": "dtype", "Bernoulli": "dtype"}


def _is_half(dtype) -> bool:
    try:
        return dtype is not None and np.dtype(dtype) == np.float16
    except TypeError:
        return False


def _cast(graph: gs.Graph, x: gs.Tensor, y: gs.Tensor, to: int) -> gs.Node:
    node = gs.Node("Cast", G.unique_name(graph, f"{y.name}_cast"), attrs={"to": to},
                   inputs=[x], outputs=[y])
    graph.nodes.append(node)
    return node


def _casts_to(node: gs.Node, to: int) -> bool:
    return node.op == "Cast" and node.attrs.get("to") == to


def _widen_interface(root: gs.Graph) -> int:
    """float16 inputs cast to float32 once, float16 outputs cast back from float32 (where
    the model does not do that itself already)."""
    count = 0
    for inp in root.inputs:
        if not _is_half(inp.dtype) or all(_casts_to(r, _FULL) for r in inp.outputs):
            continue
        wide = gs.Variable(G.unique_name(root, f"{inp.name}_float32"), dtype=np.float32,
                           shape=inp.shape)
        G.replace_uses(inp, wide)
        _cast(root, inp, wide, _FULL)
        count += 1
    inputs = {t.name for t in root.inputs}
    for out in list(root.outputs):
        if not _is_half(out.dtype) or out.name in inputs or not out.inputs:
            continue
        if _casts_to(out.inputs[0], _HALF) and not _is_half(out.inputs[0].inputs[0].dtype):
            continue
        wide = gs.Variable(G.unique_name(root, f"{out.name}_float32"), dtype=np.float32,
                           shape=out.shape)
        producer = out.inputs[0]
        producer.outputs[producer.outputs.index(out)] = wide
        G.replace_uses(out, wide)  # readers inside the graph, bodies included
        _cast(root, wide, out, _HALF)
        count += 1
    return count


def _widen_inside(root: gs.Graph, keep: set[int]) -> int:
    """Every other float16 tensor, constant and type attribute becomes float32 (not the
    Casts that make the interface's float16 outputs)."""
    count = 0
    for graph in G.iter_graphs(root):
        for t in graph.tensors().values():
            if id(t) in keep or not _is_half(t.dtype):
                continue
            if isinstance(t, gs.Constant):
                t.values = np.asarray(t.values, dtype=np.float32)
            else:
                t.dtype = np.float32
            count += 1
        for node in graph.nodes:
            attr = _TYPE_ATTRS.get(node.op)
            if any(id(o) in keep for o in node.outputs):
                attr = None
            if attr in node.attrs and node.attrs[attr] == _HALF:
                node.attrs[attr] = _FULL
                count += 1
            value = node.attrs.get("value")  # ConstantOfShape's fill, a remaining Constant
            if isinstance(value, gs.Constant) and _is_half(value.dtype):
                value.values = np.asarray(value.values, dtype=np.float32)
                count += 1
    return count


def _drop_identity_casts(root: gs.Graph) -> None:
    """Casts that the widening made float32 → float32 (a mixed-precision export's casts into
    its float16 part): their readers read the input (a graph output's Cast stays)."""
    for graph in G.iter_graphs(root):
        outputs = G.graph_output_names(graph)
        for node in list(graph.nodes):
            if not _casts_to(node, _FULL) or not node.inputs or node.outputs[0].name in outputs:
                continue
            source = node.inputs[0]
            try:
                same = source.dtype is not None and np.dtype(source.dtype) == np.float32
            except TypeError:
                same = False
            if same:
                G.replace_uses(node.outputs[0], source)
                G.detach(node)
    root.cleanup()


@dataclass(frozen=True, slots=True)
class Float16Pass:
    """float16 compute → float32, float16 kept at the model's inputs and outputs."""

    name: str = "float16"

    def run(self, graph: gs.Graph) -> PassResult:
        keep = {id(t) for t in list(graph.inputs) + list(graph.outputs)}
        widened = _widen_inside(graph, keep)  # first: the casts added next stay as they are
        interface = _widen_interface(graph)
        if not widened and not interface:
            return PassResult(graph=graph, modified=False)
        _drop_identity_casts(graph)
        graph.toposort()
        return PassResult(graph=graph, modified=True, notes=(
            f"float16 model: {widened} float16 tensor(s) and type(s) computed in float32 "
            f"inside ({interface} input/output cast(s) keep the float16 interface): "
            "onnxruntime's CPU kernels and onnxq's int8 forms are float32",))
