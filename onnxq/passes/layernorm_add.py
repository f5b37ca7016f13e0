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
bit-identical. It runs for the CPU EP only: OpenVINO fuses normalization its own way.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.pipeline import PassResult

__all__ = ["UnfusedLayerNormAddPass", "feeds_layer_norm"]

MIN_OPSET = 8  # Sum broadcasts from opset 8


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


@dataclass(frozen=True, slots=True, kw_only=True)
class UnfusedLayerNormAddPass:
    name: str = "unfused-layernorm-add"

    def run(self, graph: gs.Graph) -> PassResult:
        outputs = G.graph_output_names(graph)
        adds = [n for n in graph.nodes
                if n.op == "Add" and n.domain in (None, "", "ai.onnx") and len(n.inputs) == 2
                and n.outputs[0].name not in outputs and feeds_layer_norm(n.outputs[0])]
        if adds and G.opset(graph) < MIN_OPSET:
            why = f"opset {G.opset(graph)} < {MIN_OPSET}: Sum does not broadcast, Add kept"
            return PassResult(graph=graph, modified=False,
                              skipped=tuple((n.name, why) for n in adds))
        for node in adds:
            node.op = "Sum"
        note = (f"{len(adds)} Add -> LayerNormalization pair(s) kept apart (Add written as "
                "Sum): onnxruntime's fused SkipLayerNormalization is slower on the CPU EP",)
        return PassResult(graph=graph, modified=bool(adds), notes=note if adds else ())
