"""CompactStorage: the same values in fewer bytes (CPU EP output, run last).

A quantized transformer's file is its int8 weights plus their parameters; the parameters are
what grows with per-channel (per-column, per-row) quantization, and for a MiniLM-class encoder
they were the difference to onnxruntime's per-tensor output. Three rewrites, none changing
a value:

* A per-channel weight scale (a float32 vector read as a weight's scale) whose every value is
  a normal float16 number is stored as float16 behind a ``Cast`` to float32: half the bytes.
  ``quant_math.weight_params`` puts per-channel scales on the float16 grid (rounded up, so no
  weight clips), so this holds for onnxq's own weights; other scales are left as they are.
  onnxruntime folds the ``Cast`` of an initializer when it loads the model, before its QDQ
  fusions, so the kernels it picks are the same.
* An all-zero zero-point vector of a stored weight is dropped where the contrib operator's
  input is optional and defaults to zero (``MatMulIntegerToFloat``, ``DynamicQuantizeMatMul``).
  A ``DequantizeLinear`` keeps its zero point even though ONNX makes it optional: without it,
  onnxruntime 1.32 no longer fuses a QDQ ``Gemm`` into ``QGemm`` (measured).
* A large int64 constant (a transformer's ``position_ids`` row) whose values fit a narrower
  signed integer is stored as that type behind a ``Cast`` to int64.
* ``value_info`` entries of tensors computed by standard ONNX operators are dropped: shape
  inference (onnxruntime's and onnx's) derives them again. Those of contrib operators stay, as
  onnx cannot infer them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.pipeline import PassResult

__all__ = ["CompactStoragePass", "FP16_NORMAL", "FP16_MAX", "fits_float16"]

MS = "com.microsoft"
FP16_NORMAL = float(np.finfo(np.float16).tiny)  # 2**-14
FP16_MAX = float(np.finfo(np.float16).max)
#: (op, domain) → the input slot holding a weight's scale
_SCALE_SLOT = {("DequantizeLinear", ""): 1, ("QLinearConv", ""): 4, ("QLinearMatMul", ""): 4,
               ("MatMulIntegerToFloat", MS): 3, ("DynamicQuantizeMatMul", MS): 2,
               ("QGemm", MS): 4, ("QAttention", MS): 4}
#: (op, domain) → the optional input slot of a weight's zero point (absent means zero)
#: (a DequantizeLinear keeps its zero point: onnxruntime's QDQ Gemm → QGemm fusion needs it)
_ZERO_POINT_SLOT = {("MatMulIntegerToFloat", MS): 5, ("DynamicQuantizeMatMul", MS): 3}
_WEIGHT_SLOT = {("DequantizeLinear", ""): 0, ("QLinearConv", ""): 3, ("QLinearMatMul", ""): 3,
                ("MatMulIntegerToFloat", MS): 1, ("DynamicQuantizeMatMul", MS): 1,
                ("QGemm", MS): 3, ("QAttention", MS): 1}


def fits_float16(values: np.ndarray) -> bool:
    """Every value is a normal float16 number, exactly."""
    v = np.asarray(values)
    if v.dtype != np.float32 or not v.size or not np.all(np.isfinite(v)):
        return False
    mag = np.abs(v)
    if mag.min() < FP16_NORMAL or mag.max() > FP16_MAX:
        return False
    return bool(np.array_equal(v.astype(np.float16).astype(np.float32), v))


def _key(node: gs.Node) -> tuple[str, str]:
    return node.op, "" if node.domain in (None, "", "ai.onnx") else node.domain


def _holds_weight(node: gs.Node) -> bool:
    slot = _WEIGHT_SLOT.get(_key(node))
    return (slot is not None and len(node.inputs) > slot
            and G.constant_value(node.inputs[slot]) is not None)


def _scales(graph: gs.Graph) -> int:
    own = {id(n) for n in graph.nodes}
    done: dict[str, gs.Variable] = {}
    for node in list(graph.nodes):
        slot = _SCALE_SLOT.get(_key(node))
        if slot is None or len(node.inputs) <= slot or not _holds_weight(node):
            continue
        scale = node.inputs[slot]
        if scale.name in done:
            node.inputs[slot] = done[scale.name]
            continue
        if (not isinstance(scale, gs.Constant) or len(scale.shape) == 0
                or int(np.prod(scale.shape)) < 2 or any(id(c) not in own for c in scale.outputs)
                or not fits_float16(np.asarray(scale.values))):
            continue
        value = np.asarray(scale.values)
        half = gs.Constant(G.unique_name(graph, f"{scale.name}_f16"), value.astype(np.float16))
        full = gs.Variable(G.unique_name(graph, f"{scale.name}_f32"), dtype=np.float32,
                           shape=list(value.shape))
        graph.nodes.append(gs.Node("Cast", G.unique_name(graph, f"{scale.name}_Cast"),
                                   attrs={"to": 1}, inputs=[half], outputs=[full]))
        G.replace_uses(scale, full)
        done[scale.name] = full
    return len(done)


#: int64 constants of at least this many elements are stored narrower where their values fit
NARROW_INT_MIN = 64


def _narrow(value: np.ndarray) -> np.dtype | None:
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if value.min() >= info.min and value.max() <= info.max:
            return np.dtype(dtype)
    return None


def _integers(graph: gs.Graph) -> int:
    own = {id(n) for n in graph.nodes}
    narrowed = 0
    for tensor in list(graph.tensors().values()):
        if (not isinstance(tensor, gs.Constant) or np.dtype(tensor.dtype) != np.int64
                or int(np.prod(tensor.shape)) < NARROW_INT_MIN or not tensor.outputs
                or any(id(c) not in own for c in tensor.outputs)):
            continue
        value = np.asarray(tensor.values)
        dtype = _narrow(value)
        if dtype is None:
            continue
        small = gs.Constant(G.unique_name(graph, f"{tensor.name}_{dtype.name}"),
                            value.astype(dtype))
        wide = gs.Variable(G.unique_name(graph, f"{tensor.name}_int64"), dtype=np.int64,
                           shape=list(value.shape))
        graph.nodes.append(gs.Node("Cast", G.unique_name(graph, f"{tensor.name}_Cast"),
                                   attrs={"to": 7}, inputs=[small], outputs=[wide]))
        G.replace_uses(tensor, wide)
        narrowed += 1
    return narrowed


def _zero_points(graph: gs.Graph) -> int:
    dropped = 0
    for node in graph.nodes:
        slot = _ZERO_POINT_SLOT.get(_key(node))
        if slot is None or len(node.inputs) <= slot or not _holds_weight(node):
            continue
        zp = G.constant_value(node.inputs[slot])
        if (zp is None or zp.size < 2 or zp.dtype not in (np.int8, np.uint8)
                or zp.any()):
            continue
        if slot == len(node.inputs) - 1:
            node.inputs.pop()
        else:
            node.inputs[slot] = gs.Variable.empty()
        dropped += 1
    return dropped


def _value_info(graph: gs.Graph) -> int:
    ends = {id(t) for t in [*graph.inputs, *graph.outputs]}
    cleared = 0
    for tensor in graph.tensors().values():
        node = G.producer(tensor)
        if (not isinstance(tensor, gs.Variable) or id(tensor) in ends or node is None
                or _key(node)[1] != "" or (tensor.dtype is None and tensor.shape is None)):
            continue
        tensor.dtype, tensor.shape = None, None
        cleared += 1
    return cleared


@dataclass(frozen=True, slots=True, kw_only=True)
class CompactStoragePass:
    name: str = "compact-storage"

    def run(self, graph: gs.Graph) -> PassResult:
        scales, zero_points = _scales(graph), _zero_points(graph)
        integers = _integers(graph)
        cleared = _value_info(graph)
        if scales or zero_points or integers:
            graph.cleanup().toposort()
        notes = ((f"storage: {scales} per-channel scale(s) as float16 (exact), "
                  f"{zero_points} all-zero zero point(s) dropped, {integers} int64 "
                  "constant(s) narrowed",) if scales or zero_points or integers else ())
        return PassResult(graph=graph, modified=bool(scales or zero_points or integers
                                                     or cleared), notes=notes)
