"""Keep a residual ``Add`` and the ``LayerNormalization`` after it two kernels on the CPU EP.

onnxruntime's level-2 ``SkipLayerNormFusion`` merges ``Add → LayerNormalization`` (and a
decomposed LayerNorm it has fused first) into the contrib ``SkipLayerNormalization``. Its float
CPU kernel computes each row's mean and variance with a running (Welford) update: one division
per element in a serial chain, which no ISA vectorizes. Measured with onnxruntime 1.32, 2
threads, AVX-512 VNNI: 196 µs for a [1, 128, 384] row block against 27 µs for ``Add`` +
``LayerNormalization`` (MLAS), 526 µs against 46 µs at hidden 768. In an int8 BERT-base that is
a fifth of the run.

The fusion only matches an ``Add`` of the ONNX domain. ``Sum`` of two inputs computes the same
thing with the same broadcasting (opset 8 and later) and runs as fast as ``Add`` in
onnxruntime, so this pass writes every ``Add`` whose only readers are a LayerNormalization (or
the ``ReduceMean``/``Sub`` that open a decomposed one) as a two-input ``Sum``. The values are
bit-identical. A model that already holds the fused operator (written by onnxruntime's
transformer optimizer) gets it split back into ``Sum`` + ``LayerNormalization`` (opset 17),
unless its mean / inverse std-dev outputs are read. It runs for the CPU EP only: OpenVINO fuses
normalization its own way.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.pipeline import PassResult

__all__ = ["UnfusedLayerNormAddPass", "feeds_layer_norm"]

SUM_OPSET = 8  # Sum broadcasts from opset 8
LAYER_NORM_OPSET = 17  # splitting a fused SkipLayerNormalization writes LayerNormalization-17


def feeds_layer_norm(tensor: gs.Tensor) -> bool:
    """True when every reader of ``tensor`` starts a layer normalization: a
    LayerNormalization reading it as its data, or the ``ReduceMean`` and the ``Sub(x, mean)``
    of a decomposed one."""
    readers = G.consumers(tensor)
    if not readers:
        return False
    if all(r.op == "LayerNormalization" and r.inputs[0] is tensor for r in readers):
        return True
    means = [r for r in readers if r.op == "ReduceMean"]
    if not means or any(r.op not in ("ReduceMean", "Sub") for r in readers):
        return False
    mean_outs = {id(m.outputs[0]) for m in means}
    subs = [r for r in readers if r.op == "Sub"]
    return bool(subs) and all(s.inputs[0] is tensor and id(s.inputs[1]) in mean_outs
                              for s in subs)


#: ``SkipLayerNormalization`` (com.microsoft) attribute default, as onnxruntime defines it
SKIP_LN_EPSILON = 1e-12


def _split_skip_layer_norm(graph: gs.Graph, node: gs.Node) -> str | None:
    """A fused ``SkipLayerNormalization`` (from a model onnxruntime's transformer optimizer
    wrote) as ``Sum`` + ``LayerNormalization``; None when done, else why not."""
    data = [t for t in node.inputs[:2]] + ([node.inputs[4]] if len(node.inputs) > 4
                                           and node.inputs[4].name else [])
    gamma = node.inputs[2]
    beta = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
    outs = node.outputs
    if any(o.name and G.consumers(o) or o.name in G.graph_output_names(graph)
           for o in outs[1:3]):
        return "its mean / inverse std-dev outputs are read"
    total = outs[3] if len(outs) > 3 and outs[3].name else gs.Variable(
        G.unique_name(graph, f"{node.name}_sum"), dtype=outs[0].dtype, shape=outs[0].shape)
    eps = float(node.attrs.get("epsilon", SKIP_LN_EPSILON))
    graph.nodes.append(gs.Node("Sum", name=G.unique_name(graph, f"{node.name}_sum"),
                               inputs=data, outputs=[total]))
    graph.nodes.append(gs.Node("LayerNormalization", name=G.unique_name(graph, node.name),
                               attrs={"axis": -1, "epsilon": eps},
                               inputs=[total, gamma] + ([beta] if beta is not None else []),
                               outputs=[outs[0]]))
    G.detach(node)
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class UnfusedLayerNormAddPass:
    name: str = "unfused-layernorm-add"

    def run(self, graph: gs.Graph) -> PassResult:
        outputs = G.graph_output_names(graph)
        adds = [n for n in graph.nodes
                if n.op == "Add" and n.domain in (None, "", "ai.onnx") and len(n.inputs) == 2
                and n.outputs[0].name not in outputs and feeds_layer_norm(n.outputs[0])]
        fused = [n for n in graph.nodes if n.op == "SkipLayerNormalization"
                 and n.domain == "com.microsoft"]
        opset = G.opset(graph)
        if opset < SUM_OPSET:  # Sum does not broadcast there: the Adds stay
            adds = []
        for node in adds:
            node.op = "Sum"
        old = f"opset {opset} < {LAYER_NORM_OPSET}: no LayerNormalization operator to write"
        skipped = tuple((n.name, why) for n in fused if (why := old if opset < LAYER_NORM_OPSET
                                                         else _split_skip_layer_norm(graph, n)))
        split = len(fused) - len(skipped)
        if split:
            graph.cleanup().toposort()
        notes = ((f"{len(adds) + split} Add -> LayerNormalization pair(s) kept apart (Add "
                  "written as Sum"
                  + (f"; {split} fused SkipLayerNormalization split" if split else "")
                  + "): onnxruntime's fused SkipLayerNormalization is slower on the CPU EP",)
                 if adds or split else ())
        return PassResult(graph=graph, modified=bool(adds) or bool(split), skipped=skipped,
                          notes=notes)
