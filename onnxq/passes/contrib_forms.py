"""onnxruntime's saved float fusions written back as the standard ops they fuse (before
preprocessing, so that shape inference sees standard ops).

A model saved from an onnxruntime session (``optimized_model_filepath`` at the extended level,
or by tools built on it) carries onnxruntime's own float fusions:
- ``FusedConv``: a Conv, an optional sum input ``Z`` added to its output, and an activation;
- ``FusedGemm``: a Gemm and an activation;
- ``FusedMatMul``: a MatMul scaled by ``alpha`` (attention scores), here only where it
  transposes nothing (a transpose needs the input's rank, which such files do not record).

onnxq plans int8 for standard ops. It left these float: EfficientNet-Lite0 saved at the
extended level got 27 int8 nodes instead of 59. Here they become Conv (+ Add) + activation and
Gemm + activation again. onnxruntime fuses whatever stays float in the INT8 model the same way
when it loads it. A fused op whose activation onnxq cannot name stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.pipeline import PassResult

__all__ = ["UnfuseContribPass"]

_MS = "com.microsoft"
_OWN = ("activation", "activation_params", "activation_alpha", "activation_beta",
        "activation_gamma")


def _activation(node: gs.Node) -> tuple[str, dict, list[float]] | None:
    """(op, attributes, Clip bounds) of the fused activation; ("", {}, []) for none; None when
    onnxq does not know it."""
    kind = node.attrs.get("activation")
    if kind is None:
        return "", {}, []
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    params = [float(p) for p in node.attrs.get("activation_params", [])]
    if node.op == "FusedGemm":
        params = [float(node.attrs[k]) for k in ("activation_alpha", "activation_beta")
                  if k in node.attrs]
    if kind in ("Relu", "Tanh", "Sigmoid"):
        return kind, {}, []
    if kind == "LeakyRelu":
        return kind, ({"alpha": params[0]} if params else {}), []
    if kind == "HardSigmoid":
        return kind, dict(zip(("alpha", "beta"), params, strict=False)), []
    if kind == "Clip" and len(params) == 2:
        return kind, {}, params
    return None


def _unfuse_matmul(graph: gs.Graph, node: gs.Node) -> bool:
    if any(int(node.attrs.get(k, 0)) for k in ("transA", "transB", "transBatchA",
                                                  "transBatchB")) or len(node.inputs) != 2:
        return False
    alpha = float(node.attrs.get("alpha", 1.0))
    out = node.outputs[0]
    y = out if alpha == 1.0 else gs.Variable(G.unique_name(graph, f"{out.name}_product"),
                                             dtype=out.dtype or np.float32)
    nodes = [gs.Node("MatMul", node.name, inputs=list(node.inputs), outputs=[y])]
    if alpha != 1.0:
        scale = gs.Constant(G.unique_name(graph, f"{node.name}_alpha"),
                            np.asarray(alpha, dtype=np.float32))
        nodes.append(gs.Node("Mul", G.unique_name(graph, f"{node.name}_scale"),
                             inputs=[y, scale], outputs=[out]))
    G.detach(node)
    graph.nodes.extend(nodes)
    return True


def _unfuse(graph: gs.Graph, node: gs.Node) -> bool:
    if node.op == "FusedMatMul":
        return _unfuse_matmul(graph, node)
    act = _activation(node)
    data = [t for t in node.inputs]
    if act is None or (node.op == "FusedGemm" and len(data) > 3):
        return False
    kind, attrs, bounds = act
    base = "Conv" if node.op == "FusedConv" else "Gemm"
    keep = {k: v for k, v in node.attrs.items() if k not in _OWN}
    out = node.outputs[0]
    dtype = out.dtype or np.float32
    nodes = []
    sum_input = data[3] if base == "Conv" and len(data) > 3 and data[3].name else None
    y = out if not kind and sum_input is None else gs.Variable(
        G.unique_name(graph, f"{out.name}_{base.lower()}"), dtype=dtype)
    nodes.append(gs.Node(base, node.name, attrs=keep, inputs=data[:3], outputs=[y]))
    if sum_input is not None:
        z = out if not kind else gs.Variable(G.unique_name(graph, f"{out.name}_sum"),
                                             dtype=dtype)
        nodes.append(gs.Node("Add", G.unique_name(graph, f"{node.name}_sum"),
                             inputs=[y, sum_input], outputs=[z]))
        y = z
    if kind:
        inputs = [y]
        if bounds and G.opset(graph) < 11:  # Clip-6: the bounds are attributes
            attrs = {"min": bounds[0], "max": bounds[1]}
        elif bounds:
            inputs += [gs.Constant(G.unique_name(graph, f"{node.name}_{side}"),
                                   np.asarray(v, dtype=np.float32))
                       for side, v in zip(("min", "max"), bounds, strict=True)]
        nodes.append(gs.Node(kind, G.unique_name(graph, f"{node.name}_{kind.lower()}"),
                             attrs=attrs, inputs=inputs, outputs=[out]))
    G.detach(node)
    graph.nodes.extend(nodes)
    return True


@dataclass(frozen=True, slots=True)
class UnfuseContribPass:
    """``FusedConv`` / ``FusedGemm`` / ``FusedMatMul`` (com.microsoft) → Conv (+ Add) / Gemm
    + activation / MatMul (× alpha)."""

    name: str = "contrib_forms"

    def run(self, graph: gs.Graph) -> PassResult:
        done, left = 0, []
        for g in list(G.iter_graphs(graph)):
            before = done
            for node in list(g.nodes):
                if node.domain != _MS or node.op not in ("FusedConv", "FusedGemm",
                                                         "FusedMatMul") \
                        or len(node.outputs) != 1:
                    continue
                if _unfuse(g, node):
                    done += 1
                else:
                    left.append((node.name, f"{node.op} stays fused (an activation or a "
                                            "transpose onnxq does not write back)"))
            if done > before:  # (a graph with nothing to write back is left as it is)
                g.cleanup()
                g.toposort()
        if not done:
            return PassResult(graph=graph, modified=False, skipped=tuple(left))
        return PassResult(graph=graph, modified=True, skipped=tuple(left), notes=(
            f"{done} onnxruntime float fusion(s) (FusedConv/FusedGemm/FusedMatMul, a model "
            "saved from an onnxruntime session) written back as standard operators, so they "
            "can be int8",))
