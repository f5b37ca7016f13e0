"""Preprocess: Constant nodes become initializers, opset upgrade, shape inference.

Paddle and some TF exports keep every weight in a ``Constant`` node; onnxq treats those
exactly like initializers so their consumers can be quantized.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.errors import UnsupportedOpError
from onnxq.io import PROTOBUF_LIMIT
from onnxq.pipeline import PassResult

__all__ = ["PreprocessPass"]

logger = logging.getLogger(__name__)

_SCALAR_ATTRS = {"value_float": np.float32, "value_int": np.int64}
_LIST_ATTRS = {"value_floats": np.float32, "value_ints": np.int64}


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if isinstance(attrs.get("value"), gs.Constant):
        return np.asarray(attrs["value"].values)
    for key, dtype in _SCALAR_ATTRS.items():
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    for key, dtype in _LIST_ATTRS.items():
        if key in attrs:
            return np.asarray(list(attrs[key]), dtype=dtype)
    return None  # sparse or string constants stay as they are


def _constants_to_initializers(graph: gs.Graph) -> int:
    outputs = G.graph_output_names(graph)
    count = 0
    for node in list(graph.nodes):
        if node.op != "Constant" or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        value = _constant_node_value(node)
        if value is None or out.name in outputs:
            continue
        const = gs.Constant(out.name, np.ascontiguousarray(value))
        for consumer in list(out.outputs):
            for i, tensor in enumerate(consumer.inputs):
                if tensor is out:
                    consumer.inputs[i] = const
        node.outputs.clear()
        count += 1
    if count:
        graph.cleanup()
    return count


def _through_proto(graph: gs.Graph, fn) -> gs.Graph:
    model = G.export_graph(graph)
    return G.import_graph(fn(model))


@dataclass(frozen=True, slots=True, kw_only=True)
class PreprocessPass:
    """Constants → initializers, upgrade to ``min_opset`` (best effort), infer shapes."""

    min_opset: int = 13
    name: str = "preprocess"

    def run(self, graph: gs.Graph) -> PassResult:
        before = G.fingerprint(graph)
        notes: list[str] = []
        skipped: list[tuple[str, str]] = []
        folded = _constants_to_initializers(graph)
        if folded:
            notes.append(f"{folded} Constant node(s) turned into initializers")
        graph = self._upgrade(graph, notes, skipped)
        graph = self._infer_shapes(graph, notes)
        graph.toposort()
        modified = G.fingerprint(graph) != before
        return PassResult(graph=graph, modified=modified, skipped=tuple(skipped),
                          notes=tuple(notes))

    @staticmethod
    def _infer_shapes(graph: gs.Graph, notes: list[str]) -> gs.Graph:
        weights = sum(t.values.nbytes for t in graph.tensors().values()
                      if isinstance(t, gs.Constant))
        if weights > PROTOBUF_LIMIT - 2**26:
            notes.append("model > 2 GiB: in-memory shape inference skipped; the model's own "
                         "value_info is used")
            return graph
        return _through_proto(graph, lambda m: onnx.shape_inference.infer_shapes(
            m, check_type=False, strict_mode=False, data_prop=True))

    def _upgrade(self, graph: gs.Graph, notes: list[str], skipped: list) -> gs.Graph:
        current = G.opset(graph)
        if current >= self.min_opset:
            return graph
        try:
            upgraded = _through_proto(graph, lambda m: onnx.version_converter.convert_version(
                m, self.min_opset))
        except Exception as exc:  # noqa: BLE001 - the converter raises many types
            if current < 10:
                raise UnsupportedOpError(
                    f"model opset {current} has no QuantizeLinear (needs >= 10) and the "
                    f"upgrade to {self.min_opset} failed ({exc}); re-export the model with "
                    "opset >= 13") from None
            skipped.append(("<model>", f"opset {current} could not be upgraded to "
                                       f"{self.min_opset} ({exc}); weights fall back to "
                                       "per-tensor quantization"))
            return graph
        notes.append(f"opset upgraded {current} -> {self.min_opset}")
        return upgraded
