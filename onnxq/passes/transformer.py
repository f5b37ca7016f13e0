"""Transformer fusion and the dynamic int8 form of fused attention.

``TransformerFusionPass`` finds a BERT-style encoder's hidden size and head count in the graph
(square projection weights; the head split of a Reshape) and applies onnxruntime's own
transformer fusions (``runtime.fuse_transformer``): ``Attention`` (Q, K, V projections, scores,
softmax and context in one op), ``SkipLayerNormalization``, ``BiasGelu``,
``EmbedLayerNormalization``. It reports what fused, or why nothing did.

``DynamicAttentionPass`` turns a fused ``Attention`` with constant weights into onnxruntime's
``QAttention``: the ``[hidden, 3·hidden]`` weight int8 (per column), the input quantized at run
time by a ``DynamicQuantizeLinear`` in front.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq import quant_math as qm
from onnxq.pipeline import PassResult
from onnxq.qtypes import QType
from onnxq.runtime import fuse_transformer

__all__ = ["TransformerFusionPass", "DynamicAttentionPass", "attention_shape"]

MS_DOMAIN = "com.microsoft"


def _shape_ints(graph: gs.Graph, node: gs.Node) -> list[int]:
    """The constant integers of a Reshape's target shape (directly, or the constant parts of
    the Concat that builds it)."""
    shape = node.inputs[1] if len(node.inputs) > 1 else None
    value = G.constant_value(shape)
    if value is not None:
        return [int(v) for v in np.ravel(value)]
    maker = G.producer(shape) if isinstance(shape, gs.Variable) else None
    if maker is None or maker.op != "Concat":
        return []
    ints = []
    for t in maker.inputs:
        v = G.constant_value(t)
        source = G.producer(t) if v is None and isinstance(t, gs.Variable) else None
        if source is not None and source.op == "Unsqueeze":
            v = G.constant_value(source.inputs[0])
        if v is not None and v.size == 1:
            ints.append(int(np.ravel(v)[0]))
    return ints


def attention_shape(graph: gs.Graph) -> tuple[int, int] | None:
    """``(num_heads, hidden_size)`` of a transformer encoder, or None: the hidden size is the
    most common square MatMul weight; the heads are ``hidden / d`` for a Reshape to
    ``[…, h, d]`` with ``h·d`` = hidden (or ``h`` = -1)."""
    squares = Counter(int(w[0]) for n in graph.nodes if n.op == "MatMul"
                      and len(n.inputs) > 1 and (w := G.constant_shape(n.inputs[1])) is not None
                      and len(w) == 2 and w[0] == w[1])
    if not squares:
        return None
    hidden = squares.most_common(1)[0][0]
    heads: Counter = Counter()
    for node in graph.nodes:
        if node.op != "Reshape":
            continue
        ints = _shape_ints(graph, node)
        for a, b in zip(ints, ints[1:], strict=False):  # [… heads, head_size] (heads may be -1)
            if 8 <= b <= 256 and hidden % b == 0 and hidden // b >= 2 \
                    and (a == -1 or a * b == hidden):
                heads[hidden // b] += 1
    if not heads:
        return None
    return heads.most_common(1)[0][0], hidden


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformerFusionPass:
    name: str = "transformer_fusion"

    def run(self, graph: gs.Graph) -> PassResult:
        found = attention_shape(graph)
        if found is None:
            return PassResult(graph=graph, modified=False, notes=(
                "transformer fusion: no encoder attention found (no square projections "
                "with a head split); the graph is left as it is",))
        heads, hidden = found
        fused, stats = fuse_transformer(G.export_graph(graph), heads, hidden, in_place=True)
        if not stats:
            return PassResult(graph=graph, modified=False, notes=(
                f"transformer fusion (heads {heads}, hidden {hidden}): nothing fused",))
        what = ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))
        return PassResult(graph=G.import_graph(fused), modified=True, notes=(
            f"transformer fusion (heads {heads}, hidden {hidden}): {what}",))


#: QAttention's attributes; an Attention using any other (rotary embedding, qkv_hidden_sizes…)
#: has no QAttention form and stays float
_QATTENTION_ATTRS = {"num_heads", "unidirectional", "do_rotary", "past_present_share_buffer",
                     "mask_filter_value", "scale"}


def _qattention_compatible(node: gs.Node) -> bool:
    """QAttention takes input, weight, bias, mask_index and past only (no attention_bias, no
    past_sequence_length) and a constant bias is required."""
    extra = [t for t in node.inputs[5:] if t.name]
    return (not extra and len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant)
            and set(node.attrs) <= _QATTENTION_ATTRS)


@dataclass(frozen=True, slots=True, kw_only=True)
class DynamicAttentionPass:
    per_channel: bool = True
    reduce_range: bool = False
    exclude: tuple[str, ...] = ()
    name: str = "dynamic_attention"

    def run(self, graph: gs.Graph) -> PassResult:
        changed = 0
        for node in list(graph.nodes):
            if node.op != "Attention" or node.domain != MS_DOMAIN or node.name in self.exclude \
                    or "*" in self.exclude or not _qattention_compatible(node):
                continue
            w = G.constant_value(node.inputs[1], cache=False)
            if w is None or w.ndim != 2 or w.dtype != np.float32:
                continue
            self._rewrite(graph, node, w)
            changed += 1
        if changed:
            graph.cleanup().toposort()
        return PassResult(graph=graph, modified=bool(changed), notes=(
            (f"{changed} Attention → QAttention (int8 weights, input quantized at run time)",)
            if changed else ()))

    def _rewrite(self, graph: gs.Graph, node: gs.Node, w: np.ndarray) -> None:
        params = qm.weight_params(w, QType.S8, axis=1 if self.per_channel else None,
                                  reduce_range=self.reduce_range)
        scale = np.asarray(params.scale, np.float32).reshape(-1 if self.per_channel else ())
        base = G.unique_name(graph, node.inputs[1].name, ("_quantized", "_scale",
                                                          "_zero_point"))
        t = G.unique_name(graph, node.name, ("_xq", "_xs", "_xz", "_quantize"))
        xq, xs, xz = (gs.Variable(f"{t}{s}", dtype=d) for s, d in
                      (("_xq", np.uint8), ("_xs", np.float32), ("_xz", np.uint8)))
        optional = [node.inputs[i] if len(node.inputs) > i else gs.Variable.empty()
                    for i in (3, 4)]
        inputs = [xq, gs.Constant(f"{base}_quantized", qm.quantize(w, params).astype(np.int8)),
                  node.inputs[2], xs, gs.Constant(f"{base}_scale", scale), optional[0], xz,
                  gs.Constant(f"{base}_zero_point", np.zeros(scale.shape, np.int8)),
                  optional[1]]
        while inputs and not inputs[-1].name:
            inputs.pop()
        x, outputs = node.inputs[0], list(node.outputs)
        G.detach(node)
        graph.nodes.extend([
            gs.Node("DynamicQuantizeLinear", f"{t}_quantize", inputs=[x], outputs=[xq, xs, xz]),
            gs.Node("QAttention", node.name, attrs={k: v for k, v in node.attrs.items()
                                                    if k in _QATTENTION_ATTRS}, inputs=inputs,
                    outputs=outputs, domain=MS_DOMAIN),
        ])
