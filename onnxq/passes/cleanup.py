"""Cleanup: drop dead nodes and tensors, keep the graph topologically sorted."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.pipeline import PassResult

__all__ = ["CleanupPass"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CleanupPass:
    name: str = "cleanup"

    def run(self, graph: gs.Graph) -> PassResult:
        before = G.fingerprint(graph)
        graph.cleanup().toposort()
        return PassResult(graph=graph, modified=G.fingerprint(graph) != before)
