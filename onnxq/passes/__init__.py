"""Graph passes. Each is a small object with ``name`` and ``run(graph) -> PassResult``."""

from onnxq.passes.bias import AddZeroBiasPass, SetBiasPass
from onnxq.passes.cleanup import CleanupPass
from onnxq.passes.contrib_forms import UnfuseContribPass
from onnxq.passes.dynamic import DynamicMatMulPass
from onnxq.passes.equalize import CrossLayerEqualizationPass
from onnxq.passes.float16 import Float16Pass
from onnxq.passes.fusion import FusionPass
from onnxq.passes.hard_activations import DecomposeHardActivationsPass
from onnxq.passes.layernorm_add import UnfusedLayerNormAddPass
from onnxq.passes.matmul_epilogue import MatMulEpiloguePass
from onnxq.passes.preprocess import PreprocessPass
from onnxq.passes.qdq_insert import InsertQDQPass
from onnxq.passes.qlinear import QLinearLoweringPass
from onnxq.passes.recurrent import DynamicLSTMPass
from onnxq.passes.requant_fold import RequantFoldPass
from onnxq.passes.reshape_shapes import ReshapeShapePass
from onnxq.passes.transformer import DynamicAttentionPass, TransformerFusionPass
from onnxq.passes.verify import VerifyPass
from onnxq.passes.weight_only import WeightOnlyPass

__all__ = ["PreprocessPass", "FusionPass", "InsertQDQPass", "DecomposeHardActivationsPass",
           "CleanupPass", "VerifyPass", "QLinearLoweringPass", "RequantFoldPass",
           "DynamicLSTMPass", "DynamicMatMulPass", "DynamicAttentionPass",
           "TransformerFusionPass", "WeightOnlyPass", "AddZeroBiasPass", "SetBiasPass",
           "CrossLayerEqualizationPass", "UnfusedLayerNormAddPass", "MatMulEpiloguePass",
           "Float16Pass", "UnfuseContribPass", "ReshapeShapePass"]
