"""Loop-carried constants: weights an exporter threads through a ``Loop`` as carried values.

PaddlePaddle's exports (SLANet's attention decoder) pass every weight the loop body reads in
as a loop-carried value that each iteration hands back unchanged. Inside the body such a
weight is then a variable, not a constant: onnxq would quantize it like an activation, with
a QuantizeLinear/DequantizeLinear pair that runs on every iteration (measured on SLANet: 17 ms
of 195 ms per table), and with a per-tensor activation range instead of per-channel weight
scales. A carried value that starts from a constant and that the body returns as it is, is
that constant on every iteration: the body reads it from the outer scope instead, and it leaves
the Loop's inputs and outputs.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxq import graph as G

__all__ = ["hoist_loop_constants"]


def hoist_loop_constants(graph: gs.Graph) -> int:
    """Rewrite every Loop of ``graph`` (and of its subgraphs) so that the body reads its
    invariant carried constants from the outer scope; returns how many moved."""
    moved = 0
    for g in list(G.iter_graphs(graph)):
        outputs = {t.name for t in g.outputs}
        for node in g.nodes:
            if node.op == "Loop" and isinstance(node.attrs.get("body"), gs.Graph):
                moved += _hoist(node, outputs)
    return moved


def _hoist(loop: gs.Node, outer_outputs: set[str]) -> int:
    body: gs.Graph = loop.attrs["body"]
    carried = len(loop.inputs) - 2
    if carried <= 0 or len(body.inputs) != carried + 2 or len(body.outputs) < carried + 1:
        return 0
    moved = 0
    for k in reversed(range(carried)):
        start = loop.inputs[2 + k]
        inside = body.inputs[2 + k]
        final = loop.outputs[k] if k < len(loop.outputs) else None
        if (not isinstance(start, gs.Constant) or body.outputs[1 + k] is not inside
                or sum(o is inside for o in body.outputs) != 1
                or final is None or final.outputs or final.name in outer_outputs):
            continue
        for reader in list(inside.outputs):
            for i, t in enumerate(reader.inputs):
                if t is inside:
                    reader.inputs[i] = start
        del body.outputs[1 + k]
        del body.inputs[2 + k]
        del loop.inputs[2 + k]
        del loop.outputs[k]
        moved += 1
    return moved
