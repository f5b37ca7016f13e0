"""The graph IR: onnx-graphsurgeon plus the few helpers every pass needs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxq.graph_import import check_tensor_types, declared_shapes
from onnxq.large_constants import fill_stubs, map_kept, stub_large_constants
from onnxq.qtypes import QParams
from onnxq.scopes import hoist_shared_initializers

__all__ = [
    "import_graph",
    "export_graph",
    "iter_graphs",
    "share_names",
    "unique_name",
    "opset", "set_opset",
    "is_q", "is_dq",
    "constant_value",
    "constant_shape",
    "is_float32_constant",
    "producer", "consumers",
    "graph_output_names",
    "replace_uses",
    "detach",
    "same_qparams",
    "const_key",
    "make_qdq", "make_dq",
    "make_dq_constant",
    "fingerprint",
]

_DEFAULT_DOMAINS = ("", "ai.onnx")


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import ``model``; every node gets a unique name (ONNX node names are optional, and the
    plan and folds are keyed by them), and the model's own tensors are marked so that a name
    onnxq generates never takes a name the model already uses (see ``export_graph``)."""
    check_tensor_types(model.graph)
    graph = gs.import_onnx(model)
    declared_shapes(graph, model.graph)
    map_kept(graph)
    inits = {t.name for t in model.graph.initializer}
    # An input with an initializer is an overridable default; graphsurgeon makes it a
    # constant and drops it from the inputs. Remember it so that export lists it again.
    # Before IR 4 every initializer had to be listed as an input (model-zoo style): there
    # the listing means nothing, and the weights are plain constants.
    graph._onnxq_default_inputs = [i.name for i in model.graph.input if i.name in inits] \
        if model.ir_version >= 4 else []
    graphs = list(iter_graphs(graph))
    taken = {n.name for g in graphs for n in g.nodes if n.name}
    seen: set[str] = set()
    counter = 0
    for g in graphs:
        for node in g.nodes:
            if node.name and node.name not in seen:
                seen.add(node.name)
                continue
            while f"{node.op}_{counter}" in taken:
                counter += 1
            node.name = f"{node.op}_{counter}"
            taken.add(node.name)
            seen.add(node.name)
        for t in g.tensors().values():
            t._onnxq_own = True
    return graph


def iter_graphs(graph: gs.Graph):
    """``graph`` and, recursively, every subgraph (If/Loop/Scan bodies) inside it."""
    yield graph
    for node in graph.nodes:
        for value in node.attrs.values():
            subs = value if isinstance(value, (list, tuple)) else [value]
            for sub in subs:
                if isinstance(sub, gs.Graph):
                    yield from iter_graphs(sub)


def share_names(root: gs.Graph, sub: gs.Graph) -> None:
    """Make ``unique_name`` on ``sub`` (a subgraph of ``root``) avoid, and reserve, the names
    of the whole model: names are unique across a model and its subgraphs (ONNX scoping)."""
    sub._onnxq_taken = _taken_names(root)


def _unique_tensor_names(graph: gs.Graph) -> None:
    """Distinct tensors never share a name: a tensor onnxq created whose name the model (or
    another new tensor) already uses is renamed ``NAME_1``, ``NAME_2``…; graph inputs and
    outputs and the model's own tensors keep their names."""
    groups: dict[str, list[gs.Tensor]] = {}
    ids: set[int] = set()
    for g in iter_graphs(graph):
        for node in g.nodes:
            for t in [*node.inputs, *node.outputs]:
                if t.name and id(t) not in ids:
                    ids.add(id(t))
                    groups.setdefault(t.name, []).append(t)
        for t in [*g.inputs, *g.outputs]:
            if id(t) not in ids:
                ids.add(id(t))
                groups.setdefault(t.name, []).append(t)
    taken = set(groups)
    io = {id(t) for g in iter_graphs(graph) for t in [*g.inputs, *g.outputs]}
    for name, tensors in groups.items():
        if len(tensors) < 2:
            continue
        keep = sorted(tensors, key=lambda t: (id(t) not in io,
                                              not getattr(t, "_onnxq_own", False)))[0]
        counter = 1
        for t in tensors:
            if t is keep:
                continue
            while f"{name}_{counter}" in taken:
                counter += 1
            t.name = f"{name}_{counter}"
            taken.add(t.name)


def _restore_default_inputs(graph: gs.Graph, model: onnx.ModelProto) -> None:
    """List again, as graph inputs, the inputs with an initializer (defaults a caller may
    override) that are still in the graph unchanged."""
    names = vars(graph).get("_onnxq_default_inputs") or []
    listed = {i.name for i in model.graph.input}
    inits = {t.name: t for t in model.graph.initializer}
    for name in names:
        if name in inits and name not in listed:
            t = inits[name]
            model.graph.input.append(onnx.helper.make_tensor_value_info(
                name, t.data_type, list(t.dims)))


def header(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``'s model-level metadata only (what ``export_graph`` takes from a template)."""
    out = onnx.ModelProto(doc_string=model.doc_string, domain=model.domain,
                          model_version=model.model_version, producer_name=model.producer_name,
                          producer_version=model.producer_version)
    out.metadata_props.extend(model.metadata_props)
    return out


def export_graph(graph: gs.Graph, template: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export ``graph``, keeping the template's model-level metadata (doc, props, version)."""
    _unique_tensor_names(graph)
    large = stub_large_constants(graph)
    try:
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for const, values, _ in large:
            const._values = values
    fill_stubs(model, {stub.name: (const, values) for const, values, stub in large})
    _restore_default_inputs(graph, model)
    hoist_shared_initializers(model)
    if template is not None:
        model.doc_string = template.doc_string
        model.domain = template.domain
        model.model_version = template.model_version
        del model.metadata_props[:]
        model.metadata_props.extend(template.metadata_props)
        if not graph.producer_name:
            model.producer_name = template.producer_name
            model.producer_version = template.producer_version
    return model


def opset(graph: gs.Graph) -> int:
    """The default-domain opset of ``graph``."""
    return int(graph.opset)


def set_opset(graph: gs.Graph, version: int) -> None:
    graph.opset = version
    for imp in graph.import_domains or []:
        if imp.domain in _DEFAULT_DOMAINS:
            imp.version = version


def is_q(node: gs.Node) -> bool:
    return node.op == "QuantizeLinear"


def is_dq(node: gs.Node) -> bool:
    return node.op == "DequantizeLinear"


def constant_value(tensor: gs.Tensor | None, *, cache: bool = True) -> np.ndarray | None:
    """The value of a constant tensor (initializer or ``Constant`` node output), else None.
    ``cache=False`` reads a not-yet-loaded initializer without keeping the array on the
    tensor (a weight about to be replaced by its int8 form: one float copy, briefly)."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        lazy = vars(tensor).get("_values")
        if not cache and lazy is not None and not isinstance(lazy, np.ndarray):
            return np.asarray(lazy.load())
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        attrs = tensor.inputs[0].attrs
        if isinstance(attrs.get("value"), gs.Constant):
            return np.asarray(attrs["value"].values)
    if len(tensor.inputs) == 1 and _stored_narrow(tensor.inputs[0]) is not None:
        source = tensor.inputs[0].inputs[0]
        return np.asarray(source.values).astype(_stored_narrow(tensor.inputs[0]))
    return None


#: ``Cast.to`` → (its numpy type, the narrower types onnxq stores behind such a Cast)
_NARROW_STORAGE = {1: (np.float32, (np.float16,)), 7: (np.int64, (np.int8, np.int16, np.int32))}


def _stored_narrow(node: gs.Node) -> type | None:
    """The wide type of a ``Cast`` of a narrow initializer (float16 → float32, int8/16/32 →
    int64): how onnxq stores constants compactly (``passes/compact.py``). Its output is a
    constant; None for any other node."""
    if node.op != "Cast" or len(node.inputs) != 1 or not isinstance(node.inputs[0], gs.Constant):
        return None
    wide, narrow = _NARROW_STORAGE.get(int(node.attrs.get("to", 0)), (None, ()))
    return wide if np.dtype(node.inputs[0].dtype) in [np.dtype(t) for t in narrow] else None


def constant_shape(tensor: gs.Tensor | None) -> tuple[int, ...] | None:
    """The shape of a constant tensor without loading its values (None if not constant)."""
    if isinstance(tensor, gs.Constant):
        return tuple(int(d) for d in tensor.shape)
    value = constant_value(tensor)  # Constant-node outputs are small
    return None if value is None else value.shape


def is_float32_constant(tensor: gs.Tensor | None) -> bool:
    """A float32 constant, told without loading its values (a weight kept in its file)."""
    if not isinstance(tensor, gs.Constant):
        value = constant_value(tensor)  # Constant-node outputs are small
        return value is not None and value.dtype == np.float32
    try:
        return np.dtype(tensor.dtype) == np.float32  # lazy values know their dtype
    except TypeError:
        return False


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def graph_output_names(graph: gs.Graph) -> set[str]:
    return {t.name for t in graph.outputs}


def replace_uses(old: gs.Tensor, new: gs.Tensor, readers: Iterable[gs.Node] | None = None
                 ) -> None:
    """Make every reader of ``old`` (or only ``readers``) read ``new`` instead."""
    chosen = list(old.outputs) if readers is None else list(readers)
    for consumer in chosen:
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def detach(*nodes: gs.Node) -> None:
    """Disconnect ``nodes`` from the graph (``cleanup()`` then drops them)."""
    for node in nodes:
        node.inputs.clear()
        node.outputs.clear()


def const_key(t: gs.Tensor) -> tuple | None:
    """A hashable key of a constant's dtype, shape and bytes (None if not constant)."""
    v = constant_value(t)
    return None if v is None else (str(v.dtype), v.shape, v.tobytes())


def same_qparams(a: gs.Node, b: gs.Node) -> bool:
    """True when two Q/DQ nodes use identical scale, zero point and axis."""
    scale = constant_value(a.inputs[1]) if len(a.inputs) > 1 else None
    if scale is not None and scale.ndim > 0 and a.attrs.get("axis", 1) != b.attrs.get("axis", 1):
        return False
    for i in (1, 2):
        ka = const_key(a.inputs[i]) if len(a.inputs) > i else None
        kb = const_key(b.inputs[i]) if len(b.inputs) > i else None
        if ka is None or kb is None or ka != kb:
            return False
    return True


def _param_constants(prefix: str, params: QParams) -> tuple[gs.Constant, gs.Constant]:
    scale = gs.Constant(f"{prefix}_scale", np.asarray(params.scale, dtype=np.float32))
    zp = gs.Constant(f"{prefix}_zero_point", np.asarray(params.zero_point,
                                                        dtype=params.qtype.numpy))
    return scale, zp


def _axis_attrs(params: QParams) -> dict[str, int]:
    return {"axis": int(params.axis)} if params.axis is not None and params.scale.ndim else {}


_QDQ_SUFFIXES = ("_scale", "_zero_point", "_quantized", "_dequantized", "_QuantizeLinear",
                 "_DequantizeLinear")


def _taken_names(graph: gs.Graph) -> set[str]:
    """Every tensor and node name of ``graph`` and its subgraphs, cached on the graph object
    and extended by ``unique_name`` (names are only ever added, so the cache stays safe)."""
    taken = vars(graph).get("_onnxq_taken")  # not getattr: gs.Graph resolves unknown names
    if taken is None:
        taken = set()
        for g in iter_graphs(graph):
            taken.update(n.name for n in g.nodes)
            for node in g.nodes:
                taken.update(t.name for t in [*node.inputs, *node.outputs])
            taken.update(t.name for t in [*g.inputs, *g.outputs])
        graph._onnxq_taken = taken
    return taken


def unique_name(graph: gs.Graph, base: str, suffixes: Iterable[str] = ("",)) -> str:
    """``base`` (or ``base_1``, ``base_2``…) such that ``base + s`` for every suffix is a name
    nothing in ``graph`` uses yet; reserves those names."""
    taken = _taken_names(graph)
    suffixes = tuple(suffixes)
    candidate, k = base, 0
    while any(candidate + s in taken for s in suffixes):
        k += 1
        candidate = f"{base}_{k}"
    taken.update(candidate + s for s in suffixes)
    return candidate


def make_qdq(
    graph: gs.Graph, tensor: gs.Variable, params: QParams, prefix: str
) -> tuple[gs.Node, gs.Node, gs.Variable]:
    """Append ``QuantizeLinear(tensor) -> DequantizeLinear`` to ``graph``; return both nodes and
    the dequantized output (float, same shape as ``tensor``). Names start with ``prefix`` and
    never collide with a name already in the graph."""
    prefix = unique_name(graph, prefix, _QDQ_SUFFIXES)
    scale, zp = _param_constants(prefix, params)
    q_out = gs.Variable(f"{prefix}_quantized", dtype=params.qtype.numpy, shape=tensor.shape)
    dq_out = gs.Variable(f"{prefix}_dequantized", dtype=np.float32, shape=tensor.shape)
    q = gs.Node("QuantizeLinear", f"{prefix}_QuantizeLinear", attrs=_axis_attrs(params),
                inputs=[tensor, scale, zp], outputs=[q_out])
    dq = gs.Node("DequantizeLinear", f"{prefix}_DequantizeLinear", attrs=_axis_attrs(params),
                 inputs=[q_out, scale, zp], outputs=[dq_out])
    graph.nodes.extend([q, dq])
    return q, dq, dq_out


def make_dq(graph: gs.Graph, quantized: gs.Tensor, params: QParams, prefix: str
            ) -> gs.Variable:
    """Append ``DequantizeLinear(quantized)`` to ``graph`` (which may be a subgraph reading an
    outer scope's int8 tensor); return its float output."""
    prefix = unique_name(graph, prefix, _QDQ_SUFFIXES)
    scale, zp = _param_constants(prefix, params)
    out = gs.Variable(f"{prefix}_dequantized", dtype=np.float32, shape=quantized.shape)
    graph.nodes.append(gs.Node("DequantizeLinear", f"{prefix}_DequantizeLinear",
                               attrs=_axis_attrs(params), inputs=[quantized, scale, zp],
                               outputs=[out]))
    return out


def make_dq_constant(
    graph: gs.Graph, values: np.ndarray, params: QParams, prefix: str, shape: Iterable[int]
) -> gs.Variable:
    """Append ``DequantizeLinear(const int values)`` to ``graph``; return its float output."""
    prefix = unique_name(graph, prefix, _QDQ_SUFFIXES)
    scale, zp = _param_constants(prefix, params)
    q_const = gs.Constant(f"{prefix}_quantized", np.array(values, order="C"))
    out = gs.Variable(f"{prefix}_dequantized", dtype=np.float32, shape=list(shape))
    graph.nodes.append(gs.Node("DequantizeLinear", f"{prefix}_DequantizeLinear",
                               attrs=_axis_attrs(params), inputs=[q_const, scale, zp],
                               outputs=[out]))
    return out


def _shape_key(shape) -> tuple | None:
    return None if shape is None else tuple(str(d) for d in shape)


def fingerprint(graph: gs.Graph) -> tuple:
    """A cheap structural signature: two equal fingerprints mean no pass changed anything."""
    nodes = tuple(
        (n.name, n.op, tuple(t.name for t in n.inputs), tuple(t.name for t in n.outputs),
         tuple(sorted((k, repr(v)) for k, v in n.attrs.items() if not isinstance(v, gs.Tensor))))
        for n in graph.nodes
    )
    tensors = tuple(sorted(
        (name, str(getattr(t, "dtype", None)), _shape_key(getattr(t, "shape", None)),
         isinstance(t, gs.Constant))
        for name, t in graph.tensors().items()
    ))
    return nodes, tensors, graph.opset
