"""DynamicLSTM: planned ``LSTM`` nodes become onnxruntime's ``com.microsoft``
``DynamicQuantizeLSTM``, the fastest int8 LSTM on its CPU EP: int8 weights (per gate row,
symmetric) packed once at session start, the input and hidden state quantized by the kernel
at every step. Used by both output forms (an LSTM has no QDQ kernel in onnxruntime)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq import quant_math as qm
from onnxq.pipeline import PassResult
from onnxq.qtypes import QType

__all__ = ["DynamicLSTMPass"]

MS_DOMAIN = "com.microsoft"


def _quantized(graph: gs.Graph, w: np.ndarray, prefix: str, per_channel: bool,
               reduce_range: bool) -> list[gs.Tensor]:
    """ONNX's [dirs, 4H, K] weight as the kernel's [dirs, K, 4H] int8 tensor, its scale
    ([dirs, 4H] per gate row, or [dirs]) and zero point."""
    wt = np.ascontiguousarray(np.transpose(w, (0, 2, 1)))
    scales, values = [], []
    for d in range(wt.shape[0]):  # one direction at a time: its own per-row scales
        params = qm.weight_params(wt[d], QType.S8, axis=1 if per_channel else None,
                                  reduce_range=reduce_range)
        values.append(qm.quantize(wt[d], params))
        scales.append(np.broadcast_to(params.scale, (wt.shape[2],)) if per_channel
                      else params.scale.reshape(1))
    scale = np.stack(scales).astype(np.float32)
    if not per_channel:
        scale = scale.reshape(-1)
    name = G.unique_name(graph, prefix, ("_quantized", "_scale", "_zero_point"))
    return [gs.Constant(f"{name}_quantized", np.stack(values).astype(np.int8)),
            gs.Constant(f"{name}_scale", scale),
            gs.Constant(f"{name}_zero_point", np.zeros(scale.shape, np.int8))]


@dataclass(frozen=True, slots=True, kw_only=True)
class DynamicLSTMPass:
    nodes: tuple[str, ...]
    per_channel: bool = True
    reduce_range: bool = False
    name: str = "dynamic_lstm"

    def run(self, graph: gs.Graph) -> PassResult:
        wanted = set(self.nodes)
        changed = 0
        for node in list(graph.nodes):
            if node.op != "LSTM" or node.name not in wanted:
                continue
            w, r = G.constant_value(node.inputs[1]), G.constant_value(node.inputs[2])
            if w is None or r is None:
                continue
            wq = _quantized(graph, w, node.inputs[1].name, self.per_channel, self.reduce_range)
            rq = _quantized(graph, r, node.inputs[2].name, self.per_channel, self.reduce_range)
            optional = [node.inputs[i] if len(node.inputs) > i else gs.Variable.empty()
                        for i in range(3, 8)]
            # ``layout`` (opset 14; torch's dynamo exporter writes layout=0) is not an
            # attribute of the kernel, which reads sequence-first; the plan keeps layout=1 float
            attrs = {k: v for k, v in node.attrs.items() if k != "layout"}
            lstm = gs.Node("DynamicQuantizeLSTM", node.name, attrs=attrs,
                           inputs=[node.inputs[0], wq[0], rq[0], *optional, wq[1], wq[2],
                                   rq[1], rq[2]],
                           outputs=list(node.outputs), domain=MS_DOMAIN)
            G.detach(node)
            graph.nodes.append(lstm)
            changed += 1
        if changed:
            graph.cleanup().toposort()
        return PassResult(graph=graph, modified=bool(changed),
                          notes=(f"{changed} LSTM(s) → DynamicQuantizeLSTM (int8 weights)",)
                          if changed else ())
