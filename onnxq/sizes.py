"""Model size per component (weights of convolutions/matmuls, embedding tables, recurrent
layers, the rest), over the main graph and every subgraph, for the quantize report."""

from __future__ import annotations

import onnx

from onnxq.scopes import proto_subgraphs, tensor_bytes

__all__ = ["component_bytes", "describe_sizes"]

_KINDS = {
    "Conv": "conv/matmul weights", "ConvTranspose": "conv/matmul weights",
    "Gemm": "conv/matmul weights", "MatMul": "conv/matmul weights",
    "QLinearConv": "conv/matmul weights", "QLinearMatMul": "conv/matmul weights",
    "QGemm": "conv/matmul weights", "MatMulIntegerToFloat": "conv/matmul weights",
    "MatMulInteger": "conv/matmul weights", "DynamicQuantizeMatMul": "conv/matmul weights",
    "Gather": "embeddings", "LSTM": "recurrent", "GRU": "recurrent", "RNN": "recurrent",
    "DynamicQuantizeLSTM": "recurrent",
}
_PASS_THROUGH = {"DequantizeLinear", "Cast", "Transpose", "Reshape", "Identity"}


def _graphs(graph: onnx.GraphProto):
    yield graph
    for sub in proto_subgraphs(graph):
        yield from _graphs(sub)


def component_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of initializers per component: an initializer counts for the op that reads it,
    looking through DequantizeLinear/Cast/Transpose/Reshape (a quantized weight's reader)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for g in _graphs(model.graph):
        for node in g.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)

    def kind(name: str, depth: int = 0) -> str:
        for node in readers.get(name, []):
            if node.op_type in _KINDS:
                return _KINDS[node.op_type]
            if node.op_type in _PASS_THROUGH and depth < 4 and node.input[0] == name:
                found = kind(node.output[0], depth + 1)
                if found != "other":
                    return found
        return "other"

    sizes: dict[str, int] = {}
    for g in _graphs(model.graph):
        for t in g.initializer:
            k = kind(t.name)
            sizes[k] = sizes.get(k, 0) + tensor_bytes(t)
    return sizes


def describe_sizes(before: onnx.ModelProto, after: onnx.ModelProto) -> str:
    """One report line: each component's size before → after quantization."""
    a, b = component_bytes(before), component_bytes(after)
    mb = 2 ** 20
    parts = [f"{k} {a.get(k, 0) / mb:.2f} -> {b.get(k, 0) / mb:.2f} MB"
             for k in sorted(set(a) | set(b), key=lambda k: -a.get(k, 0))]
    return "size by component: " + ", ".join(parts)
