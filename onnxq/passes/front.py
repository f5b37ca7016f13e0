"""The passes that prepare a float model for planning: preprocessing, graph simplification and
fusion, in order. ``api.prepare`` runs them before the quantization plan is made."""

from __future__ import annotations

from onnxq.config import QuantConfig
from onnxq.passes.bias import AddZeroBiasPass
from onnxq.passes.contrib_forms import UnfuseContribPass
from onnxq.passes.conv_frames import FramedConvPass
from onnxq.passes.equalize import CrossLayerEqualizationPass
from onnxq.passes.float16 import Float16Pass
from onnxq.passes.fusion import FusionPass
from onnxq.passes.preprocess import PreprocessPass
from onnxq.passes.reshape_shapes import ReshapeShapePass
from onnxq.passes.transformer import TransformerFusionPass
from onnxq.pipeline import ForEachGraph

__all__ = ["front_passes"]


def front_passes(config: QuantConfig) -> list:
    """The float-graph passes for ``config``. OpenVINO fuses the exported activation forms
    itself, so the CPU EP's activation and pooling rewrites, and its framed 1-D convolutions,
    are off for it. The framing runs before planning so that the plan can make its MatMul int8
    (``conv_frames``). The constant
    Reshape targets are left out where onnxruntime's transformer optimizer will run
    (``fuse_attention``): its attention patterns are matched on the exporter's shape ops."""
    cpu = config.target_ep != "openvino"
    fused_attention = config.mode == "dynamic" and config.fuse_attention
    return [
        UnfuseContribPass(), PreprocessPass(min_opset=config.min_opset), Float16Pass(),
        *([] if fused_attention else [ForEachGraph(ReshapeShapePass())]),
        ForEachGraph(FusionPass(hard_activations=cpu, pool_batchnorm=cpu, input_affine=cpu)),
        *([ForEachGraph(FramedConvPass())] if cpu else []),
        *([TransformerFusionPass()] if fused_attention else []),
        *([AddZeroBiasPass()] if config.recipe.bias_correction != "off" else []),
        *([CrossLayerEqualizationPass()] if config.recipe.equalize else [])]
