"""DynamicMatMul: dynamic quantization of the planned MatMul/Gemm nodes with a constant weight.

The weight becomes int8 (symmetric, per output column or per tensor); the activation is
quantized to u8 at run time, per tensor, by the kernel (no calibration). A constant bias (the
Gemm's C, or an Add of a ``[N]`` constant that only reads the product) is folded in. Two forms
of the same integers:

* ``fused=True``: onnxruntime's ``com.microsoft`` ``DynamicQuantizeMatMul``;
* ``fused=False``: standard ONNX only — ``DynamicQuantizeLinear → MatMulInteger → Cast → Mul
  (a_scale·b_scale) → Add(bias)``, which onnxruntime's optimizer fuses into the same kernel
  and which any ONNX runtime can run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq import quant_math as qm
from onnxq.pipeline import PassResult
from onnxq.qtypes import QType

__all__ = ["DynamicMatMulPass"]

MS_DOMAIN = "com.microsoft"


def _weight(node: gs.Node) -> np.ndarray | None:
    """The ``[K, N]`` weight of a MatMul ``x @ W`` or a Gemm ``x @ op(B)`` (transA = 0)."""
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return None
    if node.op == "Gemm" and (node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0
                              or node.attrs.get("beta", 1.0) != 1.0):
        return None
    w = G.constant_value(node.inputs[1], cache=False)
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    return np.ascontiguousarray(w.T) if node.op == "Gemm" and node.attrs.get("transB", 0) else w


def _bias(graph: gs.Graph, node: gs.Node, n: int) -> tuple[np.ndarray | None, gs.Tensor,
                                                            gs.Node | None]:
    """The ``[N]`` bias to fold, the tensor the result must write, and the Add it replaces."""
    out = node.outputs[0]
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name:
        c = G.constant_value(node.inputs[2])
        if c is None or c.size not in (1, n) or c.ndim > 1:
            return None, out, None  # a 2-D C: not folded (the caller keeps the node float)
        return np.broadcast_to(c.astype(np.float32), (n,)).copy(), out, None
    readers = G.consumers(out)
    if len(readers) != 1 or out.name in G.graph_output_names(graph):
        return None, out, None
    add = readers[0]
    if add.op != "Add" or len(add.inputs) != 2:
        return None, out, None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    b = G.constant_value(other)
    rank = len(out.shape) if out.shape is not None else None
    if b is None or b.dtype != np.float32 or b.shape not in ((n,), (1, n)) \
            or (b.shape == (1, n) and (rank is None or rank < 2)):
        return None, out, None  # a [1, N] bias on a 1-D product would change its shape
    return b.reshape(n).copy(), add.outputs[0], add


@dataclass(frozen=True, slots=True, kw_only=True)
class DynamicMatMulPass:
    nodes: tuple[str, ...]
    per_channel: bool = True
    reduce_range: bool = False
    fused: bool = True
    name: str = "dynamic_matmul"

    def run(self, graph: gs.Graph) -> PassResult:
        wanted = set(self.nodes)
        changed, skipped = 0, []
        for node in list(graph.nodes):
            if node.op not in ("MatMul", "Gemm") or node.name not in wanted:
                continue
            w = _weight(node)
            if w is None:
                skipped.append((node.name, "dynamic: no constant 2-D float weight (or a Gemm "
                                           "with transA/alpha/beta); stays float"))
                continue
            if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name \
                    and _bias(graph, node, w.shape[1])[0] is None:
                skipped.append((node.name, "dynamic: Gemm bias is not a [N] constant; stays "
                                           "float"))
                continue
            self._rewrite(graph, node, w)
            changed += 1
        if changed:
            graph.cleanup().toposort()
        notes = (f"{changed} MatMul/Gemm → dynamic int8 ("
                 f"{'DynamicQuantizeMatMul' if self.fused else 'MatMulInteger'})",) \
            if changed else ()
        return PassResult(graph=graph, modified=bool(changed), skipped=tuple(skipped),
                          notes=notes)

    def _rewrite(self, graph: gs.Graph, node: gs.Node, w: np.ndarray) -> None:
        n = w.shape[1]
        params = qm.weight_params(w, QType.S8, axis=1 if self.per_channel else None,
                                  reduce_range=self.reduce_range)
        scale = np.asarray(params.scale, np.float32).reshape(-1 if self.per_channel else ())
        base = G.unique_name(graph, node.inputs[1].name,
                             ("_quantized", "_scale", "_zero_point", "_bias"))
        wq = gs.Constant(f"{base}_quantized", qm.quantize(w, params).astype(np.int8))
        ws = gs.Constant(f"{base}_scale", scale)
        wz = gs.Constant(f"{base}_zero_point", np.zeros(scale.shape, np.int8))
        bias, out, add = _bias(graph, node, n)
        x = node.inputs[0]
        G.detach(*([node, add] if add is not None else [node]))
        b = gs.Constant(f"{base}_bias", bias) if bias is not None else None
        if self.fused:
            graph.nodes.append(gs.Node(
                "DynamicQuantizeMatMul", node.name, domain=MS_DOMAIN,
                inputs=[x, wq, ws, wz, *([b] if b is not None else [])], outputs=[out]))
            return
        self._standard(graph, node.name, x, (wq, ws, wz), b, out)

    @staticmethod
    def _standard(graph: gs.Graph, name: str, x: gs.Tensor, weight: tuple, bias,
                  out: gs.Tensor) -> None:
        wq, ws, wz = weight
        t = G.unique_name(graph, name, ("_xq", "_xs", "_xz", "_int", "_float", "_s", "_mm",
                                         "_quantize", "_cast", "_scales", "_rescale", "_bias"))
        xq, xs, xz = (gs.Variable(f"{t}{s}", dtype=d) for s, d in
                      (("_xq", np.uint8), ("_xs", np.float32), ("_xz", np.uint8)))
        acc, fl, s = (gs.Variable(f"{t}{k}", dtype=d) for k, d in
                      (("_int", np.int32), ("_float", np.float32), ("_s", np.float32)))
        product = gs.Variable(f"{t}_mm", dtype=np.float32) if bias is not None else out
        graph.nodes.extend([
            gs.Node("DynamicQuantizeLinear", f"{t}_quantize", inputs=[x],
                    outputs=[xq, xs, xz]),
            gs.Node("MatMulInteger", name, inputs=[xq, wq, xz, wz], outputs=[acc]),
            gs.Node("Cast", f"{t}_cast", attrs={"to": 1}, inputs=[acc], outputs=[fl]),
            gs.Node("Mul", f"{t}_scales", inputs=[xs, ws], outputs=[s]),
            gs.Node("Mul", f"{t}_rescale", inputs=[fl, s], outputs=[product]),
        ])
        if bias is not None:
            graph.nodes.append(gs.Node("Add", f"{t}_bias", inputs=[product, bias],
                                       outputs=[out]))
