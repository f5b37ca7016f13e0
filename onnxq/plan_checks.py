"""Checks on a planned model before calibration: a model with nothing to quantize (refused
where the input or the configuration has a fix, else kept float with a note), and exclusions
that name nothing (a typo), each with a message that says what to do."""

from __future__ import annotations

import logging

from onnxq import graph as G
from onnxq.config import QuantConfig
from onnxq.config_resolve import OPENVINO_FLOAT_OPS
from onnxq.errors import ConfigError, ModelError
from onnxq.plan import QuantPlan
from onnxq.quant_ops import HANDLERS, Role

__all__ = ["unquantizable", "check_exclusions", "is_prequantized", "QUANTIZED_OPS"]

logger = logging.getLogger(__name__)


def unquantizable(graph, plan: QuantPlan, config: QuantConfig) -> str:
    """For a plan with no int8 node: refuse (``ModelError``) where the input or the
    configuration is at fault and has a fix (onnxruntime's NCHWc operators; exclusions that
    leave nothing), else the note that says why the model stays float. Such a model is written
    float, as the placement writes one whose int8 form would be slower: a pipeline of several
    models (a front end, an encoder, a head) quantizes as a whole."""
    anchors = {op for op, h in HANDLERS.items() if h.role is Role.ANCHOR} | {"ConvTranspose"}
    ops = {n.name: n.op for g in G.iter_graphs(graph) for n in g.nodes}
    skipped = [(name, reason) for name, reason in plan.skipped if ops.get(name) in anchors]
    why = [f"{name} ({ops[name]}): {reason}" for name, reason in skipped]
    listed = ("; ".join(why[:4]) + (f" (and {len(why) - 4} more)" if len(why) > 4 else "")
              if why else "no Conv, ConvTranspose, Gemm or MatMul with float32 inputs was found")
    nchwc = any(n.domain == "com.microsoft.nchwc" for g in G.iter_graphs(graph) for n in g.nodes)
    if nchwc:
        raise ModelError(
            f"the model has nothing onnxq can quantize: {listed}. It holds onnxruntime's "
            "NCHWc layout operators: it was saved from a session at the ALL optimization "
            "level, for the CPU that saved it. Quantize the model as exported, or one saved at "
            "the EXTENDED level (its FusedConv/FusedGemm are written back as standard operators)")
    excluded = set(config.exclude_nodes)
    if any(name in excluded or ops[name] in config.exclude_op_types for name, _ in skipped):
        raise ModelError(
            f"the configuration leaves nothing onnxq can quantize: {listed}. Check "
            "exclude_nodes / exclude_op_types (op_types_to_quantize, nodes_to_quantize)")
    note = (f"nothing onnxq can quantize ({listed}): the model is written in float, "
            "computing what the input computes")
    logger.warning(note)
    return note


def check_exclusions(graph, config: QuantConfig) -> None:
    """An excluded node name that is not in the graph is a typo (refused, with close names);
    an excluded op type the model does not use is harmless (a shared config): a warning."""
    import difflib

    names = {n.name for g in G.iter_graphs(graph) for n in g.nodes}
    unknown = [n for n in config.exclude_nodes if n not in names]
    if unknown:
        close = sorted({c for n in unknown for c in difflib.get_close_matches(n, names, n=3)})
        raise ConfigError(
            f"exclude_nodes names node(s) the model does not have (after fusion): "
            f"{', '.join(map(repr, unknown))}"
            + (f"; did you mean {', '.join(map(repr, close))}?" if close else
               "; `onnxq inspect MODEL` or a quantize report lists the node names"))
    ops = {n.op for g in G.iter_graphs(graph) for n in g.nodes}
    implied = OPENVINO_FLOAT_OPS if config.target_ep == "openvino" else ()
    absent = [o for o in config.exclude_op_types if o not in ops and o not in implied]
    if absent:
        logger.warning("exclude_op_types %s: the model has no such op (ignored)",
                       ", ".join(absent))


#: ops only an already quantized model holds: QDQ, and onnxruntime's dynamic and QOperator
#: forms (besides every ``QLinear*``)
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
    "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QAttention",
    "DynamicQuantizeLSTM"})


def is_prequantized(model) -> bool:
    """True for a model (``onnx.ModelProto``) that is already quantized: it holds
    QuantizeLinear/DequantizeLinear (QAT exports, other tools' static outputs) or integer
    compute ops (``ConvInteger``, ``QLinearConv``, dynamic quantization's ops)."""
    return any(n.op_type in QUANTIZED_OPS or n.op_type.startswith("QLinear")
               for n in model.graph.node)
