"""The layers that read the model's data directly (``recipe.data_layers``).

Quantizing a graph input re-grids the user's data itself, before any layer has averaged
anything, and the data usually comes on a grid of its own that int8 cannot hold:

* 8-bit images normalized per channel ((v/255 − mean_c) / std_c) sit on three grids of steps
  1/(255·std_c); one per-tensor int8 grid over their joint range is coarser than each and
  incommensurate with them, so smooth gradients get a slowly varying, structured error — false
  contours — exactly what first-layer (edge) filters respond to. Measured on EfficientNet-Lite0
  (suite evaluation images): int8 data costs 1/3–1/2 of the int8 model's output error on
  smooth, flat images and almost none on the textured calibration photos, so a check on
  calibration data cannot be trusted to see it;
* 16-bit audio (or any float signal) loses its dynamic range in 8 bits.

So with ``data_layers = "float"`` (``--recipe float-data``) the convolutions whose activation input is a
graph input — through data-movement ops and constant affine preprocessing only — keep float
input and run in float: first layers have few input channels, a poor fit for int8 kernels and
a small share of the run time. Only convolutions: a MatMul/Gemm on features is like any other
layer.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.plan import QuantPlan

__all__ = ["data_layers", "DATA_LAYER"]

DATA_LAYER = "reads the model's data"
MOVE_OPS = frozenset({"Pad", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                      "Identity", "Cast", "Slice"})
AFFINE_OPS = frozenset({"Sub", "Div", "Mul", "Add"})


def _source(tensor: gs.Tensor, inputs: set[str]) -> str | None:
    """The graph input ``tensor`` carries through data movement and constant affine ops."""
    for _ in range(64):
        if tensor.name in inputs:
            return tensor.name
        if len(tensor.inputs) != 1:
            return None
        node = tensor.inputs[0]
        if node.op in MOVE_OPS and node.inputs:
            tensor = node.inputs[0]
        elif node.op in AFFINE_OPS and len(node.inputs) == 2:
            live = [t for t in node.inputs if G.constant_value(t) is None]
            if len(live) != 1:
                return None
            tensor = live[0]
        else:
            return None
    return None


def data_layers(model: onnx.ModelProto | gs.Graph, plan: QuantPlan) -> dict[str, str]:
    """Planned main-graph convolution → the graph input its activation input is made of."""
    graph = model if isinstance(model, gs.Graph) else G.import_graph(model)
    inputs = {t.name for t in graph.inputs}
    nodes = {n.name: n for n in graph.nodes}
    out = {}
    for planned in plan.nodes:
        node = nodes.get(planned.name)
        if node is None or node.op not in ("Conv", "ConvTranspose") or not node.inputs:
            continue
        source = _source(node.inputs[0], inputs) \
            if isinstance(node.inputs[0], gs.Variable) else None
        if source is not None:
            out[node.name] = source
    return out
