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
from onnxq.errors import ModelError, UnsupportedOpError
from onnxq.graph_shapes import infer_shapes
from onnxq.passes.loop_constants import hoist_loop_constants
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


def _constants_to_initializers(root: gs.Graph) -> int:
    count = 0
    for graph in G.iter_graphs(root):
        count += _constants_in(graph)
    if count:
        root.cleanup()
    return count


#: ops folded when every input is a constant: weight plumbing that exporters leave in the graph
#: (fp16 weights cast to float32, LSTM weights concatenated/sliced/unsqueezed from torch's
#: per-gate tensors, weight normalisation). onnxruntime folds them at session start; folding
#: them here gives the consumers constant weights to quantize.
FOLDABLE = frozenset({
    "Cast", "Identity", "Unsqueeze", "Squeeze", "Concat", "Slice", "Split", "Reshape",
    "Transpose", "Flatten", "Add", "Sub", "Mul", "Div", "Neg", "Sqrt", "Pow", "Abs",
    "ReduceSum", "ReduceL2", "ReduceMean"})  # not Gather/Expand/Tile: a looked-up embedding
#                       table stays a table (int8, see WeightOnlyPass), and nothing grows
_MAX_FOLD_ELEMENTS = 1 << 26
#: ``ConstantOfShape`` folds only when its output is this small: shape plumbing (the pads of
#: TF-style "SAME" padding, computed at run time by EfficientNet/timm ports), never a buffer
_MAX_FILL_ELEMENTS = 4096


def _small_fill(node: gs.Node, values: list[np.ndarray | None]) -> bool:
    """A ``ConstantOfShape`` with a constant shape whose output stays small."""
    if not values or values[0] is None or values[0].ndim != 1:
        return False
    dims = values[0].astype(np.int64)
    return bool(np.all(dims >= 0)) and int(np.prod(dims)) <= _MAX_FILL_ELEMENTS


def _evaluate(node: gs.Node, values: list[np.ndarray | None], opset: int
              ) -> list[np.ndarray] | None:
    """``node``'s outputs for the input ``values``, computed by onnx's reference evaluator
    (numpy; exact for the data movement and casts above), or None when it cannot be."""
    from onnx.reference import ReferenceEvaluator

    inputs = [gs.Constant(f"input_{i}", np.asarray(v)) if v is not None
              else gs.Variable.empty() for i, v in enumerate(values)]
    outs = [gs.Variable(f"output_{i}", dtype=t.dtype) for i, t in enumerate(node.outputs)]
    one = gs.Node(node.op, "fold", attrs=dict(node.attrs), inputs=inputs, outputs=outs)
    graph = gs.Graph(nodes=[one], outputs=outs, opset=opset)
    try:
        model = gs.export_onnx(graph, do_type_check=False)
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, {})]
    except Exception:  # noqa: BLE001 - anything the evaluator cannot do stays a node
        return None


def _fold_constant_nodes(root: gs.Graph) -> int:
    """Nodes of ``FOLDABLE`` whose inputs are all constants become the constants they compute
    (in every graph and subgraph), in graph order so that chains fold in one sweep."""
    count = 0
    for graph in G.iter_graphs(root):
        outputs = G.graph_output_names(graph)
        for node in list(graph.nodes):
            if node.op not in FOLDABLE | {"ConstantOfShape"} \
                    or node.domain not in (None, "", "ai.onnx") \
                    or not node.outputs or any(o.name in outputs for o in node.outputs):
                continue
            values = [G.constant_value(t) for t in node.inputs if t.name]
            if any(v is None or v.size > _MAX_FOLD_ELEMENTS for v in values):
                continue
            if node.op == "ConstantOfShape" and not _small_fill(node, values):
                continue
            results = _evaluate(node, _aligned(node, values), G.opset(root))
            if results is None or len(results) != len(node.outputs):
                continue
            for out, value in zip(list(node.outputs), results, strict=True):
                G.replace_uses(out, gs.Constant(out.name, np.array(value, order="C")))
            node.outputs.clear()
            count += 1
    if count:
        root.cleanup()
    return count


def _aligned(node: gs.Node, values: list) -> list[np.ndarray | None]:
    """``values`` (of the named inputs) placed at their input positions (None for omitted)."""
    it = iter(values)
    return [next(it) if t.name else None for t in node.inputs]


def _constants_in(graph: gs.Graph) -> int:
    outputs = G.graph_output_names(graph)
    count = 0
    for node in list(graph.nodes):
        if node.op != "Constant" or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        value = _constant_node_value(node)
        if value is None or out.name in outputs:
            continue
        const = gs.Constant(out.name, np.array(value, order="C"))  # keeps 0-d scalars 0-d
        G.replace_uses(out, const)
        node.outputs.clear()
        count += 1
    return count


def _check_input_types(graph: gs.Graph) -> None:
    """Every graph input has an element type numpy knows (0 = undefined is a broken model)."""
    for t in graph.inputs:
        try:
            np.dtype(t.dtype)
        except TypeError:
            raise ModelError(f"model input {t.name!r} has element type {t.dtype!r}, which has "
                             "no numpy equivalent (0 means undefined); re-export the model "
                             "with a typed input") from None


def _ir4(model: onnx.ModelProto) -> onnx.ModelProto:
    """IR < 4 models (model-zoo style) must list every initializer as an input; graphsurgeon
    drops those listings, so declare IR 4 (initializers need not be inputs) before the opset
    converter checks the model. Edits only the private exported copy."""
    if model.ir_version < 4:
        model.ir_version = 4
    return model


def _ir_for_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """At least the IR version the (upgraded) opset needs."""
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = max(model.ir_version, needed)
    return model


def _through_proto(graph: gs.Graph, fn) -> gs.Graph:
    model = G.export_graph(graph)
    return G.import_graph(fn(model))


#: onnxruntime's float contrib operators (what its transformer optimizer writes): their outputs
#: take the element type of the input named here (index), where the model does not declare it;
#: onnx's shape inference does not know them, so nothing after them would be typed (and onnxq
#: would keep every MatMul reading them float)
_CONTRIB_FLOAT = {"SkipLayerNormalization": 0, "SkipSimplifiedLayerNormalization": 0,
                  "BiasGelu": 0, "FastGelu": 0, "Gelu": 0, "QuickGelu": 0, "BiasAdd": 0,
                  "BiasSoftmax": 0, "Attention": 0, "MultiHeadAttention": 0, "FusedMatMul": 0,
                  "FusedConv": 0, "EmbedLayerNormalization": 2}
_CONTRIB_INT = {("EmbedLayerNormalization", 1): np.int32}  # the mask index
_MAX_TYPING_ROUNDS = 256  # one per contrib operator in a chain; a 24-layer encoder needs ~50


def _type_contrib_outputs(graph: gs.Graph) -> int:
    """Declare the element type of the untyped outputs of ``_CONTRIB_FLOAT`` operators."""
    typed = 0
    for g in G.iter_graphs(graph):
        for node in g.nodes:
            source = _CONTRIB_FLOAT.get(node.op) if node.domain == "com.microsoft" else None
            if source is None or len(node.inputs) <= source:
                continue
            for i, out in enumerate(node.outputs):
                kind = _CONTRIB_INT.get((node.op, i), node.inputs[source].dtype)
                if out.name and out.dtype is None and kind is not None:
                    out.dtype = kind
                    typed += 1
    return typed


def _forget_body_shapes(graph: gs.Graph) -> list[tuple[gs.Variable, list]]:
    """The declared shapes of the tensors inside If/Loop/Scan bodies (not of their inputs)
    are dropped before shape inference, which recomputes them: exporters write stale ones
    (PaddlePaddle's SLANet declares scalars its Loop body computes as rank 1), and the ONNX
    checker then refuses the output model; onnxruntime does not need them. Returns the body
    outputs' declarations (a body output must keep a shape)."""
    declared = []
    for sub in list(G.iter_graphs(graph))[1:]:
        outputs = {t.name for t in sub.outputs}
        for t in (o for n in sub.nodes for o in n.outputs):  # made in the body (not outer)
            if isinstance(t, gs.Variable):
                if t.name in outputs and t.shape is not None:
                    declared.append((t, t.shape))
                t.shape = None
    return declared


@dataclass(frozen=True, slots=True, kw_only=True)
class PreprocessPass:
    """Constants → initializers, upgrade to ``min_opset`` (best effort), infer shapes."""

    min_opset: int = 13
    name: str = "preprocess"

    def run(self, graph: gs.Graph) -> PassResult:
        _check_input_types(graph)
        before = G.fingerprint(graph)
        notes: list[str] = []
        skipped: list[tuple[str, str]] = []
        folded = _constants_to_initializers(graph)
        if folded:
            notes.append(f"{folded} Constant node(s) turned into initializers")
        casts = _fold_constant_nodes(graph)
        if casts:
            notes.append(f"{casts} node(s) computing constants folded (e.g. Cast of fp16 "
                         "weights, Concat/Slice of recurrent weights)")
        hoisted = hoist_loop_constants(graph)
        if hoisted:
            notes.append(f"{hoisted} loop-carried constant(s) (weights a Loop hands back "
                         "unchanged) read from the outer scope instead")
        graph = self._upgrade(graph, notes, skipped)
        declared = _forget_body_shapes(graph)
        graph = self._infer_shapes(graph, notes)
        for t, shape in declared:  # a body output inference cannot size keeps its declaration
            t.shape = shape if t.shape is None else t.shape
        graph.toposort()
        modified = G.fingerprint(graph) != before
        return PassResult(graph=graph, modified=modified, skipped=tuple(skipped),
                          notes=tuple(notes))

    @staticmethod
    def _infer_shapes(graph: gs.Graph, notes: list[str]) -> gs.Graph:
        """ONNX shape inference on a weight-free copy of the graph: large initializers are
        declared as typed inputs instead of copied, so memory does not double."""
        typed = _type_contrib_outputs(graph)
        infer_shapes(graph)
        for _ in range(_MAX_TYPING_ROUNDS):  # contrib and standard ops alternate in a chain
            more = _type_contrib_outputs(graph) if typed else 0
            if not more:
                break
            typed += more
            infer_shapes(graph)
        if typed:
            notes.append(f"{typed} output(s) of onnxruntime contrib operators typed")
        return graph

    def _upgrade(self, graph: gs.Graph, notes: list[str], skipped: list) -> gs.Graph:
        current = G.opset(graph)
        if current >= self.min_opset:
            return graph
        try:
            upgraded = _through_proto(graph, lambda m: _ir_for_opset(
                onnx.version_converter.convert_version(_ir4(m), self.min_opset)))
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
