"""onnxruntime users switch with one import (``onnxq.compat``): the same script, with its
``CalibrationDataReader``, runs on onnxq and gives a model at least as accurate as
onnxruntime's; options onnxq does differently are clear errors. (Speed is compared in
``benchmarks``, not in unit tests.)"""

from __future__ import annotations

import importlib

import onnx
import pytest

from onnxq.errors import ConfigError, ModelError
from tests import builders as B
from tests.conftest import cosine, run_model


def _port(module: str, src, dst, feeds, **options) -> None:
    """An onnxruntime quantization script; only ``module`` (the import) differs."""
    q = importlib.import_module(module)

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ,
                      per_channel=True, weight_type=q.QuantType.QInt8, **options)


def _agreement(fp32, path, feeds) -> float:
    model = onnx.load(str(path))
    return min(cosine(run_model(fp32, f)[0], run_model(model, f)[0]) for f in feeds)


@pytest.mark.parametrize("name", ["resnet18_shaped", "attention_block"])
def test_an_onnxruntime_script_ports_by_changing_the_import(tmp_path, name):
    kwargs = {"image": 64} if name == "resnet18_shaped" else {}
    model = getattr(B, name)(**kwargs)
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    calib, evals = B.feeds(model, n=8, seed=1), B.feeds(model, n=3, seed=7)
    _port("onnxruntime.quantization", src, tmp_path / "ort.onnx", calib)
    _port("onnxq.compat", src, tmp_path / "onnxq.onnx", calib)
    ours, theirs = (_agreement(model, tmp_path / f"{k}.onnx", evals) for k in ("onnxq", "ort"))
    assert ours >= theirs - 1e-4, (ours, theirs)
    assert ours >= 0.99


def test_onnxruntime_enums_and_options_map(tmp_path):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    from onnxq import compat

    model = B.conv_bn_relu()
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    feeds = B.feeds(model, n=4)
    reader = iter(feeds)

    class Reader:  # any object with get_next(), like onnxruntime's readers
        def get_next(self):
            return next(reader, None)

    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    result = compat.quantize_static(
        src, tmp_path / "q.onnx", Reader(), quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.Entropy,
        nodes_to_exclude=[first_conv], extra_options={"WeightSymmetric": True})
    assert result.config.format == "qlinear" and result.config.calibration.method == "entropy"
    assert first_conv in dict(result.report.skipped)
    assert any(n.op_type == "QLinearConv" for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
    only_gemm = compat.quantize_static(src, tmp_path / "g.onnx", _Feeds(feeds),
                                       op_types_to_quantize=["Gemm"])
    assert {op for _, op in only_gemm.report.quantized} <= {"Gemm", "Flatten",
                                                           "GlobalAveragePool"}
    for bad, match in (({"calibrate_method": CalibrationMethod.Distribution}, "Distribution"),
                       ({"extra_options": {"CalibMovingAverage": True}}, "CalibMovingAverage"),
                       ({"calibration_cache_path": "x"}, "calibration_cache_path")):
        with pytest.raises(ConfigError, match=match):
            compat.quantize_static(src, tmp_path / "x.onnx", _Feeds(feeds), **bad)
    assert not (tmp_path / "x.onnx").exists()


class _Feeds:
    def __init__(self, feeds):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def test_quantize_dynamic_drop_in(tmp_path):
    from onnxq import compat

    model = B.bert_embedded()
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    result = compat.quantize_dynamic(src, tmp_path / "d.onnx", per_channel=True)
    assert result.config.mode == "dynamic"
    out = onnx.load(str(tmp_path / "d.onnx"))
    assert sum(n.op_type == "DynamicQuantizeMatMul" for n in out.graph.node) == 12
    feed = B.feeds(model, n=1)[0]
    assert cosine(run_model(model, feed)[0], run_model(out, feed)[0]) >= 0.999


def test_onnxq_quantize_takes_an_onnxruntime_reader_directly():
    import onnxq

    model = B.conv_bn_relu()
    feeds = B.feeds(model, n=3)
    via_reader = onnxq.quantize(model, _Feeds(feeds), progress=False)
    via_list = onnxq.quantize(model, feeds, progress=False)
    assert via_reader.model.SerializeToString() == via_list.model.SerializeToString()


def test_node_and_op_selections_follow_onnxqs_graph(tmp_path):
    """Found in review: names were matched before onnxq's fusion (MatMul + Add is one Gemm
    there, keeping the MatMul's name) and unnamed nodes were never excluded."""
    from onnxq import compat

    model = B.matmul_add()
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    feeds = B.feeds(model, n=2)
    first = next(n.name for n in model.graph.node if n.op_type == "MatMul")
    one = compat.quantize_static(src, tmp_path / "one.onnx", _Feeds(feeds),
                                 nodes_to_quantize=[first])
    assert [n for n, _ in one.report.quantized] == [first]
    unnamed = B.matmul_add()
    for n in unnamed.graph.node:
        if n.name != first:
            n.name = ""
    onnx.save(unnamed, str(tmp_path / "u.onnx"))
    only = compat.quantize_static(tmp_path / "u.onnx", tmp_path / "u8.onnx", _Feeds(feeds),
                                  nodes_to_quantize=[first])
    assert [n for n, _ in only.report.quantized] == [first]
    with pytest.raises(ModelError, match="nothing onnxq can quantize"):
        compat.quantize_static(src, tmp_path / "c.onnx", _Feeds(feeds),
                               op_types_to_quantize=["Conv"])
    with pytest.raises(ModelError):
        compat.quantize_static(tmp_path / "missing.onnx", tmp_path / "x.onnx", _Feeds(feeds),
                               nodes_to_quantize=[first])
