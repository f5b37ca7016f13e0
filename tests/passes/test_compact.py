"""``CompactStoragePass``: the CPU EP output stores per-channel weight scales as float16 (they
are on the float16 grid), drops all-zero optional zero points, narrows large int64 constants
and leaves value_info to shape inference — without changing one output bit or the kernels
onnxruntime picks. Embedding tables' per-row scales are stored in one byte per row."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxq
from onnxq import graph as G
from onnxq import quant_math as qm
from onnxq.passes.compact import CompactStoragePass, fits_float16
from onnxq.passes.weight_only import ROW_CODE_STEP, row_codes
from onnxq.pipeline import ForEachGraph, Pipeline
from onnxq.qtypes import QType
from tests import builders as B


def _expanded(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every Cast of a narrow initializer folded back into a wide one, the
    form onnxq wrote before it compacted storage."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    for node in m.graph.node:
        src = inits.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if src is None or src.data_type not in (onnx.TensorProto.FLOAT16,
                                                onnx.TensorProto.INT8, onnx.TensorProto.INT16,
                                                onnx.TensorProto.INT32):
            keep.append(node)
            continue
        wide = numpy_helper.to_array(src).astype(np.float32 if src.data_type ==
                                                 onnx.TensorProto.FLOAT16 else np.int64)
        m.graph.initializer.append(numpy_helper.from_array(wide, node.output[0]))
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def _session(model: onnx.ModelProto, tmp_path, tag: str) -> tuple[ort.InferenceSession,
                                                                  collections.Counter]:
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / f"{tag}.opt.onnx")
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    kernels = collections.Counter(n.op_type for n in
                                  onnx.load(opts.optimized_model_filepath).graph.node)
    return session, kernels


@pytest.mark.parametrize("name", ["matmul_add", "depthwise_hardswish", "attention_block"])
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_compact_storage_changes_no_value_and_no_kernel(name, fmt, tmp_path):
    model = getattr(B, name)()
    feeds = B.feeds(model, batch=2, n=4, seed=1)
    result = onnxq.quantize(model, feeds, progress=False, objective="size", format=fmt)
    compact, expanded = result.model, _expanded(result.model)
    halves = [t for t in compact.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert halves, "per-channel weight scales are stored as float16"
    assert compact.ByteSize() < expanded.ByteSize()
    assert len(compact.graph.value_info) < len(onnx.shape_inference.infer_shapes(
        compact).graph.value_info)
    ours, our_kernels = _session(compact, tmp_path, "compact")
    ref, ref_kernels = _session(expanded, tmp_path, "expanded")
    assert our_kernels == ref_kernels  # e.g. QDQ Gemm → QGemm still fuses
    for feed in feeds:
        for a, b in zip(ours.run(None, feed), ref.run(None, feed), strict=True):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["matmul_add", "attention_block"])
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_compact_storage_in_dynamic_mode(name, fmt, tmp_path):
    """Dynamic mode: QLinear writes DynamicQuantizeMatMul (A, B, b_scale, b_zero_point, bias),
    whose per-column scale is stored as float16 and whose all-zero zero point is dropped."""
    model = getattr(B, name)()
    feeds = B.feeds(model, batch=2, n=2, seed=1)
    compact = onnxq.quantize(model, feeds, progress=False, objective="size", mode="dynamic",
                             format=fmt).model
    expanded = _expanded(compact)
    dqmm = [n for n in compact.graph.node if n.op_type == "DynamicQuantizeMatMul"]
    if fmt == "qlinear":
        assert dqmm
        halves = {t.name for t in compact.graph.initializer
                  if t.data_type == onnx.TensorProto.FLOAT16}
        casts = {n.output[0]: n.input[0] for n in compact.graph.node if n.op_type == "Cast"}
        for node in dqmm:
            assert casts.get(node.input[2]) in halves  # b_scale: float16 behind a Cast
            assert len(node.input) < 4 or node.input[3] == ""  # zero point dropped
    ours, our_kernels = _session(compact, tmp_path, "compact")
    ref, ref_kernels = _session(expanded, tmp_path, "expanded")
    assert our_kernels == ref_kernels
    for feed in feeds:
        for a, b in zip(ours.run(None, feed), ref.run(None, feed), strict=True):
            assert np.array_equal(a, b)


def test_compact_storage_runs_once_and_scales_stay_readable():
    model = B.matmul_add()
    result = onnxq.quantize(model, B.feeds(model, batch=2, n=4, seed=1), progress=False,
                            objective="size")
    graph = gs.import_onnx(result.model)
    again = Pipeline([ForEachGraph(CompactStoragePass())]).run(result.model)
    assert not any(r.modified for r in again.records)
    dqs = [n for n in graph.nodes if n.op == "DequantizeLinear"
           and G.constant_value(n.inputs[0]) is not None and n.inputs[0].values.ndim == 2]
    assert dqs
    for dq in dqs:  # a float16-stored scale is still a constant to onnxq's own readers
        scale = G.constant_value(dq.inputs[1])
        assert scale is not None and scale.dtype == np.float32 and fits_float16(scale)


def test_per_channel_weight_scales_sit_on_the_float16_grid_without_clipping():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 48)) * np.geomspace(1e-2, 10, 48)).astype(np.float32)
    params = qm.weight_params(w, QType.S8, axis=1)
    exact = np.abs(w).max(axis=0) / 127.0
    assert fits_float16(params.scale)
    assert np.all(params.scale >= exact.astype(np.float32))
    assert np.all(params.scale <= exact * (1 + 2.0**-10))
    assert np.abs(qm.quantize(w, params)).max() <= 127
    tiny = qm.weight_params(np.full((4, 2), 1e-7, np.float32), QType.S8, axis=1)
    assert not fits_float16(tiny.scale)  # below float16's normal range: kept as float32


def test_row_codes_bound_each_scale_from_above_within_one_step():
    rng = np.random.default_rng(0)
    scale = (np.geomspace(1e-4, 1e-1, 5000) * rng.uniform(0.9, 1.1, 5000)).astype(np.float32)
    codes, levels = row_codes(scale)
    assert codes.dtype == np.uint8 and levels.shape == (256,) and levels.dtype == np.float32
    got = levels[codes]
    assert np.all(got >= scale) and np.all(got <= scale * ROW_CODE_STEP * (1 + 1e-6))
    assert row_codes(np.array([1e-6, 1.0], np.float32)) is None  # too wide for 255 steps


def test_large_table_per_row_scales_take_one_byte_per_row():
    """A 4096-row table whose rows differ in scale by 300x: per-row scales as uint8 codes
    into 256 levels (half the bytes of float16), rows still within 1 % of the table."""
    vocab, dim = 4096, 16
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((vocab, dim)) *
             np.geomspace(1, 300, vocab)[:, None]).astype(np.float32)
    w = rng.standard_normal((dim, 8)).astype(np.float32)
    ids = helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [6])
    out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [6, 8])
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["rows"]),
                               helper.make_node("MatMul", ["rows", "w"], ["y"])], "g",
                              [ids], [out], [numpy_helper.from_array(table, "table"),
                                             numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"ids": rng.integers(0, vocab, 6).astype(np.int64)} for _ in range(4)]
    q = onnxq.quantize(model, feeds, progress=False, objective="size").model
    inits = {t.name: t for t in q.graph.initializer}
    codes = [t for t in inits.values() if t.data_type == onnx.TensorProto.UINT8 and t.dims]
    assert [tuple(t.dims) for t in codes] == [(vocab, 1)]
    assert q.ByteSize() < vocab * dim + 2 * vocab  # int8 rows + less than fp16 scales
    feed = {"ids": np.array([0, 1, 2047, 4000, 4095, 7], np.int64)}
    q.graph.output.append(helper.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, None))
    got = ort.InferenceSession(q.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(["rows"], feed)[0]
    want = table[feed["ids"]]
    assert (np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)).max() < 0.01
