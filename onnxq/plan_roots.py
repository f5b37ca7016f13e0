"""Which tensor's quantization parameters an int8 tensor uses: a data-movement node
(Reshape, Transpose, MaxPool …) joins its input and output, so both share the parameters of
the first tensor up the chain that no such node produced."""

from __future__ import annotations

from collections.abc import Set

import onnx_graphsurgeon as gs

__all__ = ["sharing_roots"]


def sharing_roots(graph: gs.Graph, shared: Set[str], int8: Set[str]) -> dict[str, str]:
    """int8 tensor → its root, walking up through the ``shared`` (data-movement) nodes."""
    producers = {t.name: n for n in graph.nodes for t in n.outputs}
    tensors = graph.tensors()
    roots: dict[str, str] = {}

    def root(name: str) -> str:
        seen = []
        while True:
            node = producers.get(name)
            if node is None or node.name not in shared:
                break
            seen.append(name)
            name = node.inputs[0].name
            if name in seen:
                break
        return name

    for name in int8:
        if name in tensors:
            roots[name] = root(name)
    return roots
