"""WeightOnly: int8 storage for weights of ops without an int8 kernel.

* ``Gather`` on an embedding table: the table becomes int8 and the DequantizeLinear moves
  after the Gather, so only the rows read are dequantized (onnxruntime gathers int8). One
  scale per table; per-row scales (gathered with the rows) where one scale would lose more
  than ``ROW_GAIN_DB`` of SQNR, stored in one byte per row (``row_codes``) or as float16.
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

__all__ = ["WeightOnlyPass", "ROW_GAIN_DB", "ROW_CODE_STEP", "row_codes"]

#: per-row scales are used when they improve the table's SQNR by more than this
ROW_GAIN_DB = 6.0
#: per-row scales are stored as one-byte codes when a code step is at most this ratio
ROW_CODE_STEP = 1.03
_FP16_NORMAL = 6.2e-5  # smallest normal fp16 (rounded up): smaller scales stay float32


def _sqnr(w: np.ndarray, params: QParams) -> float:
    err = w - qm.dequantize(qm.quantize(w, params), params)
    signal = float(np.sum(w.astype(np.float64) ** 2))
    noise = float(np.sum(err.astype(np.float64) ** 2))
    return 10 * np.log10(signal / noise) if noise > 0 else np.inf


def row_codes(scale: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-row scales in one byte each: ``(codes uint8, levels float32[256])``, row ``i``'s
    scale becoming ``levels[codes[i]]``, the smallest of 256 geometric steps from the smallest
    to the largest scale that is not below it (so no value clips, and a row's scale grows by at
    most ``ROW_CODE_STEP``: ≤ 0.26 dB of its SQNR). None when the scales span more than 255
    such steps."""
    lo, hi = float(scale.min()), float(scale.max())
    if not (lo > 0 and np.isfinite(hi)):
        return None
    step = (hi / lo) ** (1 / 255)
    if step > ROW_CODE_STEP:
        return None
    levels = np.maximum.accumulate((lo * step ** np.arange(256.0)).astype(np.float32))
    levels[-1] = max(levels[-1], np.float32(hi))
    codes = np.minimum(np.searchsorted(levels, scale.astype(np.float32), side="left"), 255)
    return codes.astype(np.uint8), levels


def _row_scales(rows: QParams) -> tuple[QParams, tuple[np.ndarray, ...]]:
    """The row parameters as they will be stored, and what is stored: ``(codes, levels)``,
    ``(float16 scales,)`` when the codes' range is too narrow, else ``(float32 scales,)``."""
    coded = row_codes(rows.scale) if rows.scale.size > 1024 else None  # else fp16 is smaller
    if coded is not None:
        scale = coded[1][coded[0]]
        stored: tuple[np.ndarray, ...] = coded
    elif rows.scale.min() >= _FP16_NORMAL and np.all(np.isfinite(
            rows.scale.astype(np.float16))):
        stored = (rows.scale.astype(np.float16),)
        scale = stored[0].astype(np.float32)
    else:
        scale = rows.scale.astype(np.float32)
        stored = (scale,)
    return QParams(scale=scale, zero_point=rows.zero_point, qtype=rows.qtype,
                   axis=rows.axis), stored


def _gather(graph: gs.Graph, node: gs.Node, table: np.ndarray) -> None:
    axis = int(node.attrs.get("axis", 0)) % table.ndim
    tensor = qm.weight_params(table, QType.S8, axis=None)
    rows = qm.weight_params(table, QType.S8, axis=0) if axis == 0 else None
    out = node.outputs[0]
    prefix = G.unique_name(graph, node.inputs[0].name, _SUFFIXES)
    per_row = rows is not None and _sqnr(table, rows) - _sqnr(table, tensor) > ROW_GAIN_DB
    stored: tuple[np.ndarray, ...] = ()
    if per_row and rows is not None:
        rows, stored = _row_scales(rows)  # quantized with the scales it will have
    params = rows if per_row and rows is not None else tensor
    node.inputs[0] = gs.Constant(f"{prefix}_quantized", qm.quantize(table, params))
    q_rows = gs.Variable(f"{prefix}_rows", dtype=np.int8, shape=out.shape)
    node.outputs[0] = q_rows
    if not per_row:
        scale = gs.Constant(f"{prefix}_scale", np.asarray(params.scale, np.float32))
        zp = gs.Constant(f"{prefix}_zero_point", np.asarray(params.zero_point, np.int8))
        graph.nodes.append(gs.Node("DequantizeLinear", f"{prefix}_DequantizeLinear",
                                   inputs=[q_rows, scale, zp], outputs=[out]))
        return
    # per-row: gather each row's scale with the row, then int8 → float and scale
    shape = (table.shape[0],) + (1,) * (table.ndim - 1)
    ids = node.inputs[1]
    row_scale = gs.Variable(f"{prefix}_row_scale", dtype=np.float32)
    as_float = gs.Variable(f"{prefix}_float", dtype=np.float32, shape=out.shape)
    graph.nodes.extend([*_gather_scale(prefix, stored, shape, ids, row_scale),
                        gs.Node("Cast", f"{prefix}_Cast", attrs={"to": 1}, inputs=[q_rows],
                                outputs=[as_float]),
                        gs.Node("Mul", f"{prefix}_Mul", inputs=[as_float, row_scale],
                                outputs=[out])])


_SUFFIXES = ("_quantized", "_scale", "_zero_point", "_rows", "_row_scale", "_float",
             "_scale_float", "_CastScale", "_scale_code", "_scale_levels", "_row_code",
             "_row_index", "_CastCode", "_GatherCode", "_GatherScale", "_Cast", "_Mul",
             "_DequantizeLinear")


def _gather_scale(prefix: str, stored: tuple[np.ndarray, ...], shape: tuple[int, ...],
                  ids: gs.Tensor, row_scale: gs.Variable) -> list[gs.Node]:
    """The nodes that compute ``row_scale``, the scales of the rows ``ids`` reads."""
    if len(stored) == 2:  # one byte per row: gather the code, then its level
        code = gs.Variable(f"{prefix}_row_code", dtype=np.uint8)
        index = gs.Variable(f"{prefix}_row_index", dtype=np.int32)
        return [gs.Node("Gather", f"{prefix}_GatherCode", attrs={"axis": 0},
                        inputs=[gs.Constant(f"{prefix}_scale_code", stored[0].reshape(shape)),
                                ids], outputs=[code]),
                gs.Node("Cast", f"{prefix}_CastCode", attrs={"to": 6}, inputs=[code],
                        outputs=[index]),
                gs.Node("Gather", f"{prefix}_GatherScale", attrs={"axis": 0},
                        inputs=[gs.Constant(f"{prefix}_scale_levels", stored[1]), index],
                        outputs=[row_scale])]
    nodes = []
    table: gs.Tensor = gs.Constant(f"{prefix}_scale", stored[0].reshape(shape))
    if stored[0].dtype == np.float16:  # a Cast onnxruntime folds at load
        table = gs.Variable(f"{prefix}_scale_float", dtype=np.float32, shape=list(shape))
        nodes.append(gs.Node("Cast", f"{prefix}_CastScale", attrs={"to": 1},
                             inputs=[gs.Constant(f"{prefix}_scale",
                                                 stored[0].reshape(shape))],
                             outputs=[table]))
    return nodes + [gs.Node("Gather", f"{prefix}_GatherScale", attrs={"axis": 0},
                            inputs=[table, ids], outputs=[row_scale])]


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
