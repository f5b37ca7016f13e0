"""WeightOnly: int8 storage for weights of ops without an int8 kernel.

* ``Gather`` on an embedding table: the table becomes int8 and the DequantizeLinear moves
  after the Gather, so only the rows read are dequantized (onnxruntime gathers int8). One
  scale per table; per-row scales (gathered with the rows) where one scale would lose more
  than ``ROW_GAIN_DB`` of SQNR.
* ``GRU``/``RNN`` (opt-in): ``DequantizeLinear`` in front of W and R.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq import quant_math as qm
from onnxq.pipeline import PassResult
from onnxq.qtypes import QParams, QType

__all__ = ["WeightOnlyPass", "ROW_GAIN_DB"]

#: per-row scales are used when they improve the table's SQNR by more than this
ROW_GAIN_DB = 6.0
_FP16_NORMAL = 6.2e-5  # smallest normal fp16 (rounded up): smaller scales stay float32


def _sqnr(w: np.ndarray, params: QParams) -> float:
    err = w - qm.dequantize(qm.quantize(w, params), params)
    signal = float(np.sum(w.astype(np.float64) ** 2))
    noise = float(np.sum(err.astype(np.float64) ** 2))
    return 10 * np.log10(signal / noise) if noise > 0 else np.inf


def _gather(graph: gs.Graph, node: gs.Node, table: np.ndarray) -> None:
    axis = int(node.attrs.get("axis", 0)) % table.ndim
    tensor = qm.weight_params(table, QType.S8, axis=None)
    rows = qm.weight_params(table, QType.S8, axis=0) if axis == 0 else None
    out = node.outputs[0]
    prefix = G.unique_name(graph, node.inputs[0].name, ("_quantized", "_scale", "_zero_point",
                                                         "_rows", "_row_scale", "_float",
                                                         "_scale_float", "_CastScale"))
    per_row = rows is not None and _sqnr(table, rows) - _sqnr(table, tensor) > ROW_GAIN_DB
    if per_row and rows is not None and rows.scale.min() >= _FP16_NORMAL:
        # the scales that will be stored (fp16), so quantization and dequantization agree
        rows = QParams(scale=rows.scale.astype(np.float16).astype(np.float32),
                       zero_point=rows.zero_point, qtype=rows.qtype, axis=rows.axis)
    params = rows if per_row else tensor
    assert params is not None
    node.inputs[0] = gs.Constant(f"{prefix}_quantized", qm.quantize(table, params))
    q_rows = gs.Variable(f"{prefix}_rows", dtype=np.int8, shape=out.shape)
    node.outputs[0] = q_rows
    if not per_row:
        scale = gs.Constant(f"{prefix}_scale", np.asarray(params.scale, np.float32))
        zp = gs.Constant(f"{prefix}_zero_point", np.asarray(params.zero_point, np.int8))
        graph.nodes.append(gs.Node("DequantizeLinear", f"{prefix}_DequantizeLinear",
                                   inputs=[q_rows, scale, zp], outputs=[out]))
        return
    # per-row: gather each row's scale with the row, then int8 → float and scale. The scales
    # are stored as fp16 when they fit (half the bytes; a Cast onnxruntime folds at load)
    shape = (table.shape[0],) + (1,) * (table.ndim - 1)
    scales = params.scale.reshape(shape).astype(np.float32)
    stored: gs.Tensor = gs.Constant(f"{prefix}_scale", scales)
    if np.all(np.isfinite(scales.astype(np.float16))) and scales.min() >= _FP16_NORMAL:
        stored = gs.Variable(f"{prefix}_scale_float", dtype=np.float32, shape=list(shape))
        graph.nodes.append(gs.Node("Cast", f"{prefix}_CastScale", attrs={"to": 1},
                                   inputs=[gs.Constant(f"{prefix}_scale",
                                                       scales.astype(np.float16))],
                                   outputs=[stored]))
    row_scale = gs.Variable(f"{prefix}_row_scale", dtype=np.float32)
    as_float = gs.Variable(f"{prefix}_float", dtype=np.float32, shape=out.shape)
    graph.nodes.extend([
        gs.Node("Gather", f"{prefix}_GatherScale", attrs={"axis": 0},
                inputs=[stored, node.inputs[1]], outputs=[row_scale]),
        gs.Node("Cast", f"{prefix}_Cast", attrs={"to": 1}, inputs=[q_rows],
                outputs=[as_float]),
        gs.Node("Mul", f"{prefix}_Mul", inputs=[as_float, row_scale], outputs=[out]),
    ])


def _recurrent(graph: gs.Graph, node: gs.Node) -> None:
    for idx in (1, 2):
        w = G.constant_value(node.inputs[idx])
        assert w is not None
        params = qm.weight_params(w, QType.S8, axis=1)  # per gate row of every direction
        node.inputs[idx] = G.make_dq_constant(graph, qm.quantize(w, params), params,
                                              node.inputs[idx].name, w.shape)


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightOnlyPass:
    nodes: tuple[str, ...]
    name: str = "weight_only"

    def run(self, graph: gs.Graph) -> PassResult:
        wanted = set(self.nodes)
        changed = 0
        for node in list(graph.nodes):
            if node.name not in wanted:
                continue
            idx = 0 if node.op == "Gather" else 1
            weight = G.constant_value(node.inputs[idx]) if len(node.inputs) > idx else None
            if weight is None or weight.dtype != np.float32:
                continue  # already int8 (a second run) or no longer a constant
            if node.op == "Gather":
                _gather(graph, node, weight)
            elif node.op in ("GRU", "RNN"):
                _recurrent(graph, node)
            else:
                continue  # already int8 (a second run) or no longer a constant
            changed += 1
        if changed:
            graph.cleanup().toposort()
        return PassResult(graph=graph, modified=bool(changed))
