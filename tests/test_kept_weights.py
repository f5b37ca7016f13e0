"""Large external weights stay in their files while onnxq works (``onnxq.external``): the
quantized model is byte-identical to the one made with the weights loaded, the source files
are never written, every path that hands the model to onnxruntime or to a file copies them,
and bad references are clean errors. The thresholds are lowered so small models take the
path (``make test-large`` runs a real 2.27 GB model)."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest

import onnxq
from onnxq import external, io
from onnxq.errors import ModelError
from onnxq.runtime import make_session
from tests import builders as B

_MODELS = {"conv_bn_relu": B.conv_bn_relu, "matmul_add": B.matmul_add,
           "residual_block": B.residual_block}


def _save_external(model: onnx.ModelProto, folder, name: str = "m") -> str:
    path = folder / f"{name}.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving with external data edits the proto
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.data", size_threshold=256)
    return str(path)


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def keep(monkeypatch):
    monkeypatch.setattr(external, "KEEP_BYTES", 0)
    monkeypatch.setattr(external, "KEEP_TENSOR_BYTES", 256)


def _quantize(path, model, **options) -> onnx.ModelProto:
    return onnxq.quantize(path, B.feeds(model, n=3), progress=False, target="vnni",
                          **options).model


@pytest.mark.parametrize("name", sorted(_MODELS))
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_kept_weights_give_the_same_model_and_leave_the_files_alone(tmp_path, monkeypatch,
                                                                     name, fmt):
    model = _MODELS[name]()
    path = _save_external(model, tmp_path)
    before = _digest(tmp_path / "m.data")
    loaded = _quantize(path, model, format=fmt)
    monkeypatch.setattr(external, "KEEP_BYTES", 0)
    monkeypatch.setattr(external, "KEEP_TENSOR_BYTES", 256)
    light = io.load_model(path)
    kept = external.kept_tensors(light)
    assert kept and not any(t.raw_data for t in kept)  # the weights were not read in
    result = _quantize(path, model, format=fmt)
    assert not external.has_kept(result)  # small enough: the result holds its weights
    assert result.SerializeToString() == loaded.SerializeToString()
    assert _digest(tmp_path / "m.data") == before


def test_a_weight_left_float_is_loaded_into_the_result(tmp_path, keep):
    model = B.matmul_add()
    path = _save_external(model, tmp_path)
    first = next(n.name for n in model.graph.node if n.op_type == "MatMul")
    result = _quantize(path, model, exclude_nodes=[first])
    assert not external.has_kept(result)
    assert any(t.data_type == onnx.TensorProto.FLOAT and t.raw_data and len(t.raw_data) > 256
               for t in result.graph.initializer)


def test_a_result_too_large_for_one_message_is_saved_file_to_file(tmp_path, keep,
                                                                  monkeypatch):
    model = B.matmul_add()
    path = _save_external(model, tmp_path)
    feeds = B.feeds(model, n=2)
    first = next(n.name for n in model.graph.node if n.op_type == "MatMul")
    reference = onnxq.quantize(path, feeds, progress=False, exclude_nodes=[first])
    want = make_session(reference.model, optimize=None).run(None, feeds[0])
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 64 * 2**20 + 300)  # nothing fits any more
    result = onnxq.quantize(path, feeds, progress=False, exclude_nodes=[first])
    assert external.has_kept(result.model)
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    result.save(out)
    assert (out.parent / "q.onnx.data").is_file()
    saved = onnx.load(str(out))
    assert not any(external.is_kept(t) for t in saved.graph.initializer)
    feed = feeds[0]
    got = make_session(str(out), optimize=None).run(None, feed)
    np.testing.assert_array_equal(got[0], want[0])
    # and a session made from the in-memory model reads the kept weights too
    np.testing.assert_array_equal(make_session(result.model, optimize=None).run(None, feed)[0],
                                  want[0])


def test_calibrate_and_compare_read_kept_weights(tmp_path, monkeypatch):
    model = B.conv_bn_relu()
    path = _save_external(model, tmp_path)
    feeds = B.feeds(model, n=2)
    plain = onnxq.calibrate(path, feeds, progress=False)
    monkeypatch.setattr(external, "KEEP_BYTES", 0)
    monkeypatch.setattr(external, "KEEP_TENSOR_BYTES", 256)
    assert onnxq.calibrate(path, feeds, progress=False) == plain
    light = io.load_model(path)
    assert external.has_kept(light)
    io.validate_model(light)
    got = make_session(light, optimize=None).run(None, feeds[0])[0]
    want = make_session(model, optimize=None).run(None, feeds[0])[0]
    np.testing.assert_array_equal(got, want)


def _edit_location(path: str, change) -> None:
    light = onnx.load(path, load_external_data=False)
    for t in light.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            change(t)
    onnx.save_model(light, path)


@pytest.mark.parametrize("keeping", [False, True])
def test_bad_external_references_are_clean_errors(tmp_path, monkeypatch, keeping):
    if keeping:
        monkeypatch.setattr(external, "KEEP_BYTES", 0)
    model = B.conv_bn_relu()
    path = _save_external(model, tmp_path)

    def escape(t):
        for e in t.external_data:
            if e.key == "location":
                e.value = "../m.data"

    _edit_location(path, escape)
    with pytest.raises(ModelError, match="inside the model's folder"):
        io.load_model(path)
    path = _save_external(model, tmp_path, "t")
    with open(tmp_path / "t.data", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ModelError, match="truncated"):
        io.load_model(path)


def test_an_absolute_location_from_elsewhere_is_not_trusted(tmp_path):
    """Found in review: a proto whose external data points at any absolute file (e.g. one
    loaded with load_external_data=False from an untrusted source) was read as kept weights."""
    model = B.matmul_add()
    path = _save_external(model, tmp_path)
    light = onnx.load(path, load_external_data=False)
    for t in light.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = str(tmp_path / "m.data")  # absolute, but not resolved by onnxq
    with pytest.raises(ModelError, match="not loaded"):
        onnxq.quantize(light, None, mode="dynamic", progress=False)


def test_a_streamed_save_keeps_the_model_metadata(tmp_path, keep, monkeypatch):
    model = B.matmul_add()
    onnx.helper.set_model_props(model, {"author": "me"})
    path = _save_external(model, tmp_path)
    first = next(n.name for n in model.graph.node if n.op_type == "MatMul")
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 64 * 2**20 + 300)
    result = onnxq.quantize(path, B.feeds(model, n=2), progress=False, exclude_nodes=[first])
    assert external.has_kept(result.model)
    result.save(tmp_path / "q.onnx")
    props = {p.key for p in onnx.load(str(tmp_path / "q.onnx")).metadata_props}
    assert {"author", "onnxq.target"} <= props
