"""Verify: the quantized graph is well formed. Changes nothing; raises PassError."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.errors import PassError
from onnxq.external import as_inputs
from onnxq.io import fits_in_protobuf
from onnxq.pipeline import PassResult

__all__ = ["VerifyPass"]

#: initializers above this size are given to the checker as typed inputs, without their bytes
CHECKED_AS_INPUT_BYTES = 1 << 16


def _check_qdq(node: gs.Node, opset: int) -> str | None:
    if len(node.inputs) < 2:
        return "has no scale input"
    scale = G.constant_value(node.inputs[1])
    if scale is None:
        return "scale is not a constant"
    if scale.dtype != np.float32 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        return f"scale must be finite, positive float32 (got {scale.dtype}, min {scale.min()})"
    if scale.ndim > 0 and opset < 13:
        return f"per-channel parameters need opset >= 13 (model has {opset})"
    if len(node.inputs) > 2:
        zp = G.constant_value(node.inputs[2])
        per_tensor = zp is not None and zp.size == 1 and scale.size == 1  # () and (1,) alike
        if zp is None or (zp.shape != scale.shape and not per_tensor):
            return "zero point must be a constant with the scale's shape"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyPass:
    check_model: bool = True
    name: str = "verify"

    def run(self, graph: gs.Graph) -> PassResult:
        version = G.opset(graph)
        problems = []
        for node in (n for g in G.iter_graphs(graph) for n in g.nodes):
            if G.is_q(node) or G.is_dq(node):
                problem = _check_qdq(node, version)
                if problem:
                    problems.append(f"{node.name}: {problem}")
        if problems:
            raise PassError("quantized graph is invalid: " + "; ".join(problems[:5]))
        if self.check_model:
            model = G.export_graph(graph)
            # weights left in the source's files, and large ones: checked as typed inputs (the
            # full check serializes the model; BERT-base's peak was this copy of its weights)
            as_inputs(model, larger_than=CHECKED_AS_INPUT_BYTES)
            if fits_in_protobuf(model):
                try:
                    onnx.checker.check_model(model, full_check=True)
                except Exception as exc:  # noqa: BLE001
                    raise PassError(f"quantized graph fails the ONNX checker: {exc}") from exc
        return PassResult(graph=graph, modified=False)
