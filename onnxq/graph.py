"""The graph IR: onnx-graphsurgeon plus the few helpers every pass needs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxq.qtypes import QParams

__all__ = [
    "import_graph",
    "export_graph",
    "opset",
    "set_opset",
    "is_q",
    "is_dq",
    "constant_value",
    "constant_shape",
    "producer",
    "consumers",
    "graph_output_names",
    "make_qdq",
    "make_dq_constant",
    "fingerprint",
]

_DEFAULT_DOMAINS = ("", "ai.onnx")


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def export_graph(graph: gs.Graph, template: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export ``graph``, keeping the template's model-level metadata (doc, props, version)."""
    model = gs.export_onnx(graph, do_type_check=False)
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


def constant_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor (initializer or ``Constant`` node output), else None."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        attrs = tensor.inputs[0].attrs
        if isinstance(attrs.get("value"), gs.Constant):
            return np.asarray(attrs["value"].values)
    return None


def constant_shape(tensor: gs.Tensor | None) -> tuple[int, ...] | None:
    """The shape of a constant tensor without loading its values (None if not constant)."""
    if isinstance(tensor, gs.Constant):
        return tuple(int(d) for d in tensor.shape)
    value = constant_value(tensor)  # Constant-node outputs are small
    return None if value is None else value.shape


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def graph_output_names(graph: gs.Graph) -> set[str]:
    return {t.name for t in graph.outputs}


def _param_constants(prefix: str, params: QParams) -> tuple[gs.Constant, gs.Constant]:
    scale = gs.Constant(f"{prefix}_scale", np.asarray(params.scale, dtype=np.float32))
    zp = gs.Constant(f"{prefix}_zero_point", np.asarray(params.zero_point,
                                                        dtype=params.qtype.numpy))
    return scale, zp


def _axis_attrs(params: QParams) -> dict[str, int]:
    return {"axis": int(params.axis)} if params.axis is not None and params.scale.ndim else {}


def make_qdq(
    graph: gs.Graph, tensor: gs.Variable, params: QParams, prefix: str
) -> tuple[gs.Node, gs.Node, gs.Variable]:
    """Append ``QuantizeLinear(tensor) -> DequantizeLinear`` to ``graph``; return both nodes and
    the dequantized output (float, same shape as ``tensor``)."""
    scale, zp = _param_constants(prefix, params)
    q_out = gs.Variable(f"{prefix}_quantized", dtype=params.qtype.numpy, shape=tensor.shape)
    dq_out = gs.Variable(f"{prefix}_dequantized", dtype=np.float32, shape=tensor.shape)
    q = gs.Node("QuantizeLinear", f"{prefix}_QuantizeLinear", attrs=_axis_attrs(params),
                inputs=[tensor, scale, zp], outputs=[q_out])
    dq = gs.Node("DequantizeLinear", f"{prefix}_DequantizeLinear", attrs=_axis_attrs(params),
                 inputs=[q_out, scale, zp], outputs=[dq_out])
    graph.nodes.extend([q, dq])
    return q, dq, dq_out


def make_dq_constant(
    graph: gs.Graph, values: np.ndarray, params: QParams, prefix: str, shape: Iterable[int]
) -> gs.Variable:
    """Append ``DequantizeLinear(const int values)`` to ``graph``; return its float output."""
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
