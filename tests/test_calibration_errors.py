"""Calibration failures are clean errors that name the feed file and onnxruntime's reason
(they were tracebacks, or named only "feed #4")."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.cli import main


def _reshape_model() -> onnx.ModelProto:
    """A Reshape to a fixed [4, 18] in front of a MatMul: a feed whose batch is not 2 fails
    inside onnxruntime, not in onnxq's input checks (the batch axis is dynamic)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
         helper.make_node("MatMul", ["r", "w"], ["y"], name="fc")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])],
        [numpy_helper.from_array(np.array([4, 54], np.int64), "shape"),
         numpy_helper.from_array(rng.standard_normal((54, 5)).astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _folder(tmp_path, batches):
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, n in enumerate(batches):
        np.savez(folder / f"sample_{i:03d}.npz", x=rng.uniform(0, 1, (n, 3, 6, 6)).astype(
            np.float32))
    return folder


def _run(tmp_path, model, folder, capsys) -> str:
    onnx.save(model, tmp_path / "m.onnx")
    assert main(["quantize", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"),
                 "--calib-data", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "q.onnx").exists()
    return err


def test_onnxruntime_failure_names_the_feed_file(tmp_path, capsys):
    err = _run(tmp_path, _reshape_model(), _folder(tmp_path, [2, 2, 3, 2]), capsys)
    assert "calibration feed #2 (sample_002.npz)" in err and "onnxruntime failed" in err


def test_bad_feed_file_is_named(tmp_path, capsys):
    folder = _folder(tmp_path, [2, 2])
    np.savez(folder / "sample_002.npz", y=np.zeros((2, 3, 6, 6), np.float32))
    err = _run(tmp_path, _reshape_model(), folder, capsys)
    assert "(sample_002.npz) is missing input(s) ['x']" in err
    bad = np.full((2, 3, 6, 6), np.nan, np.float32)
    np.savez(folder / "sample_002.npz", x=bad)
    err = _run(tmp_path, _reshape_model(), folder, capsys)
    assert "(sample_002.npz): input 'x' has 216 NaN/Inf" in err


def test_split_npz_feeds_name_their_samples(tmp_path, capsys):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "calib.npz", x=rng.uniform(0, 1, (5, 3, 6, 6)).astype(np.float32))
    onnx.save(_reshape_model(), tmp_path / "m.onnx")
    assert main(["quantize", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"),
                 "--calib-data", str(tmp_path / "calib.npz"), "--calib-batch", "2",
                 "--quiet"]) == 2
    assert "(calib.npz, samples 4-4)" in capsys.readouterr().err


def test_a_model_onnxruntime_cannot_load_is_a_clean_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("Mystery", ["c"], ["y"], name="custom", domain="com.example")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    err = _run(tmp_path, model, _folder(tmp_path, [2]), capsys)
    assert "onnxruntime" in err and "Mystery" in err


def test_ir_version_99_and_dilated_same_upper_are_clean_errors(tmp_path, capsys):
    from tests import builders as B

    model = B.conv_bn_relu()
    model.ir_version = 99
    folder = tmp_path / "c"
    folder.mkdir()
    np.savez(folder / "f.npz", **B.feeds(B.conv_bn_relu(), n=1)[0])
    err = _run(tmp_path, model, folder, capsys)
    assert "IR version: 99" in err
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="c", dilations=[2, 2],
                          auto_pad="SAME_UPPER", kernel_shape=[3, 3])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    dilated = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    err = _run(tmp_path, dilated, _folder(tmp_path, [2]), capsys)
    assert "(sample_000.npz)" in err and "Dilation not supported" in err
