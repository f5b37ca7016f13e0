"""Which FP32 tensor a quantization grid of an INT8 model stands for (``score``'s per-tensor
report pairs each grid with it)."""

from __future__ import annotations

from collections.abc import Mapping

import onnx

__all__ = ["fp32_name", "readers", "clamps", "clamped"]


def fp32_name(t: str, dq_out: str, fp32_names: set[str]) -> str | None:
    """The FP32 name of quantized tensor ``t`` (``T_float`` -> ``T``: renamed graph output)."""
    stripped = t.removesuffix("_float")
    if stripped != t and dq_out == stripped and stripped in fp32_names:
        return stripped
    if t in fp32_names:
        return t
    return stripped if stripped in fp32_names else None


def readers(graph: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor -> the main-graph nodes that read it."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def clamps(fp32: onnx.ModelProto, int8_names: set[str]) -> dict[str, tuple[list[str], int]]:
    """FP32 tensor -> (outputs of the Relu/Clip nodes reading it that the INT8 model lacks,
    its number of readers). Such a clamp was folded into a quantization grid of the tensor, so
    that grid's dequantized value stands for the clamp's output: compared with the tensor
    before the clamp, the cut-off values would read as error and saturation."""
    found = {}
    for name, nodes in readers(fp32).items():
        gone = [n.output[0] for n in nodes if n.op_type in ("Relu", "Clip")
                and n.input[0] == name and n.output[0] not in int8_names]
        if gone:
            found[name] = (gone, len(nodes))
    return found


def clamped(name: str | None, folded: Mapping[str, tuple[list[str], int]],
             q_out: str, fp32_names: set[str]) -> str | None:
    """The FP32 tensor a grid on ``name`` stands for. onnxq names a grid's tensors after it
    (``X_quantized``): ``X`` when it is a folded clamp of ``name`` or ``name`` is unknown (a
    requantization reads a dequantized tensor); else the folded clamp that is ``name``'s only
    reader (other tools' models)."""
    stem = q_out.removesuffix("_quantized")
    if stem != q_out and stem in fp32_names and (
            name is None or stem in folded.get(name, ((), 0))[0]):
        return stem
    while name is not None and name in folded and folded[name][1] == 1:
        name = folded[name][0][0]
    return name
