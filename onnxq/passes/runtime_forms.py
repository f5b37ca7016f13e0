"""The CPU EP's runtime forms: rewrites run after lowering so that onnxruntime's CPU EP picks
its fastest kernels for the quantized graph. Each keeps the model's values; none is applied
for the OpenVINO EP, which fuses its own patterns."""

from __future__ import annotations

from onnxq.passes.compact import CompactStoragePass
from onnxq.passes.layernorm_add import UnfusedLayerNormAddPass
from onnxq.passes.matmul_epilogue import MatMulEpiloguePass, UnquantizedBiasPass
from onnxq.pipeline import ForEachGraph

__all__ = ["runtime_form_passes", "pre_lowering_passes"]


def runtime_form_passes(target_ep: str) -> list:
    """The passes for ``target_ep`` (empty for the OpenVINO EP). The bias fold runs first: a
    ``MatMul → Add(bias) → LayerNormalization`` keeps its bias ``Add`` to fold. The storage
    compaction runs last: the passes before it read scales as initializers."""
    if target_ep == "openvino":
        return []
    return [ForEachGraph(MatMulEpiloguePass()), ForEachGraph(UnfusedLayerNormAddPass()),
            ForEachGraph(CompactStoragePass())]


def pre_lowering_passes(target_ep: str) -> list:
    """The CPU EP's rewrites of the QDQ graph itself, before it is lowered to its format."""
    return [] if target_ep == "openvino" else [ForEachGraph(UnquantizedBiasPass())]
