"""Bad input: each case raises an OnnxqError subclass naming the problem and the fix, the CLI
exits 2 with one line on stderr, nothing is written and the input model is unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxq
from onnxq.cli import main
from onnxq.errors import CalibrationError, ConfigError, ModelError, OnnxqError
from tests import builders as B
from tests.conftest import run_model


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def workdir(tmp_path):
    model = B.conv_bn_relu()
    model_path = tmp_path / "model.onnx"
    onnx.save(model, str(model_path))
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).standard_normal((6, 3, 16, 16)).astype(
        np.float32))
    return tmp_path, model_path, calib


def _cli_fails(capsys, args: list[str], out: Path, model_path: Path, match: str) -> str:
    digest = _sha(model_path)
    assert main(args) == 2
    err = capsys.readouterr().err.split("\r")[-1].strip()  # after the cleared progress bar
    assert err.startswith("onnxq: error:") and len(err.splitlines()) == 1, err
    assert match.lower() in err.lower(), err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".onnxq-")]
    assert _sha(model_path) == digest
    return err


def test_missing_model_path(workdir, capsys):
    tmp, model_path, calib = workdir
    out = tmp / "out.onnx"
    _cli_fails(capsys, ["quantize", str(tmp / "nope.onnx"), str(out), "--calib-data",
                        str(calib)], out, model_path, "does not exist")
    with pytest.raises(ModelError, match="check the path"):
        onnxq.quantize(tmp / "nope.onnx", [])


def test_file_that_is_not_onnx(workdir, capsys):
    tmp, model_path, calib = workdir
    bogus = tmp / "bogus.onnx"
    bogus.write_text("this is not a model\n" * 20)
    out = tmp / "out.onnx"
    _cli_fails(capsys, ["quantize", str(bogus), str(out), "--calib-data", str(calib)], out,
               model_path, "not a valid ONNX model")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_model(workdir, capsys, fraction):
    tmp, model_path, calib = workdir
    data = model_path.read_bytes()
    cut = tmp / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * fraction)])
    out = tmp / "out.onnx"
    _cli_fails(capsys, ["quantize", str(cut), str(out), "--calib-data", str(calib)], out,
               model_path, "re-export")


@pytest.mark.parametrize("where", ["initializer", "constant"])
def test_undefined_tensor_type_is_a_corrupt_file(workdir, capsys, where):
    """Found by the long fuzz run (12000 graphs + 1000 mutations): a bit flip gave a weight
    element type 0, and graphsurgeon stopped with an internal error (exit 1)."""
    tmp, model_path, calib = workdir
    model = onnx.load(str(model_path))
    if where == "initializer":
        model.graph.initializer[-1].data_type = 0
    else:
        value = helper.make_tensor("k", TensorProto.FLOAT, [1], [1.0])
        value.data_type = 99
        model.graph.node.insert(0, helper.make_node("Constant", [], ["k_out"], value=value))
    bad = tmp / "bad.onnx"
    bad.write_bytes(model.SerializeToString())
    out = tmp / "out.onnx"
    _cli_fails(capsys, ["quantize", str(bad), str(out), "--calib-data", str(calib)], out,
               model_path, "does not define")


@pytest.mark.parametrize("what", ["input", "op_type", "metadata"])
def test_text_that_is_not_utf8_is_a_corrupt_file(workdir, capsys, what):
    """Found by the long fuzz run (4000 graphs + 400 mutations): a bit flip in a name made it
    invalid UTF-8; protobuf hands such a name back as bytes, and onnxq stopped with a
    traceback (exit 1) or a pass failure naming a TypeError."""
    tmp, model_path, calib = workdir
    model = onnx.load(str(model_path))
    if what == "metadata":
        model.metadata_props.add(key="author", value="x")
    marker = {"input": model.graph.node[0].input[0], "op_type": model.graph.node[0].op_type,
              "metadata": "author"}[what].encode()
    data = bytearray(model.SerializeToString())
    data[data.find(marker) + 1] = 0xFF  # no longer UTF-8
    bad = tmp / "bad.onnx"
    bad.write_bytes(bytes(data))
    out = tmp / "out.onnx"
    _cli_fails(capsys, ["quantize", str(bad), str(out), "--calib-data", str(calib)], out,
               model_path, "not valid UTF-8")
    with pytest.raises(ModelError, match="not valid UTF-8"):  # a parsed ModelProto, too
        onnxq.quantize(onnx.load_from_string(bytes(data)), progress=False)


def test_calibration_missing_an_input(workdir, capsys):
    tmp, model_path, _ = workdir
    wrong = tmp / "wrong.npz"
    np.savez(wrong, other=np.zeros((2, 3, 16, 16), np.float32))
    out = tmp / "out.onnx"
    _cli_fails(capsys, ["quantize", str(model_path), str(out), "--calib-data", str(wrong)],
               out, model_path, "missing input(s) ['input']")


def test_calibration_wrong_dtype(workdir, capsys):
    tmp, model_path, _ = workdir
    wrong = tmp / "wrong.npz"
    np.savez(wrong, input=np.zeros((2, 3, 16, 16), np.float64))
    out = tmp / "out.onnx"
    err = _cli_fails(capsys, ["quantize", str(model_path), str(out), "--calib-data",
                              str(wrong)], out, model_path, "dtype float64")
    assert "astype" in err


def test_calibration_wrong_rank_and_size(workdir):
    _, model_path, _ = workdir
    with pytest.raises(CalibrationError, match="rank 3"):
        onnxq.quantize(model_path, [{"input": np.zeros((3, 16, 16), np.float32)}],
                       progress=False)
    with pytest.raises(CalibrationError, match="axis 1"):
        onnxq.quantize(model_path, [{"input": np.zeros((1, 4, 16, 16), np.float32)}],
                       progress=False)


def test_empty_calibration_data(workdir, capsys):
    tmp, model_path, _ = workdir
    with pytest.raises(CalibrationError, match="empty"):
        onnxq.quantize(model_path, [], progress=False)
    empty_dir = tmp / "empty"
    empty_dir.mkdir()
    out = tmp / "out.onnx"
    _cli_fails(capsys, ["quantize", str(model_path), str(out), "--calib-data",
                        str(empty_dir)], out, model_path, "no .npz")


def test_nan_and_inf_in_calibration(workdir, capsys):
    tmp, model_path, _ = workdir
    data = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    data[2, 0, 0, 0] = np.inf
    bad = tmp / "bad.npz"
    np.savez(bad, input=data)
    out = tmp / "out.onnx"
    _cli_fails(capsys, ["quantize", str(model_path), str(out), "--calib-data", str(bad)], out,
               model_path, "feed #2")
    assert main(["quantize", str(model_path), str(out), "--calib-data", str(bad),
                 "--ignore-nonfinite", "--quiet"]) == 0
    assert out.exists()


def test_nan_activation_names_the_tensor(workdir):
    """A NaN produced inside the graph (log of a negative) names the tensor and the feed."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["lx"], name="log"),
                               helper.make_node("MatMul", ["lx", "w"], ["y"], name="mm")],
                              "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": np.ones((2, 4), np.float32)}, {"x": -np.ones((2, 4), np.float32)}]
    with pytest.raises(CalibrationError, match=r"'lx'.*feed #1"):
        onnxq.quantize(model, feeds, progress=False)


def _sigmoid_model(domain: str = "") -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 16, 16])
    nodes = [helper.make_node("Sigmoid", ["input"], ["s"], name="sig"),
             helper.make_node("ReorderInput" if domain else "Identity", ["s"], ["y"],
                              name="last", domain=domain)]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[
        helper.make_opsetid("", 17), *([helper.make_opsetid(domain, 1)] if domain else [])])


def test_model_with_nothing_to_quantize_is_written_float(workdir, capsys):
    """A front end with no Conv/Gemm/MatMul (a pipeline's mel spectrogram, say) is written
    float with a note, as the placement writes a model whose int8 form would be slower: a
    pipeline of models quantizes as a whole. Before, it exited 2."""
    tmp, _, calib = workdir
    path, out = tmp / "plain.onnx", tmp / "out.onnx"
    onnx.save(_sigmoid_model(), str(path))
    digest = _sha(path)
    assert main(["quantize", str(path), str(out), "--calib-data", str(calib)]) == 0
    assert "nothing onnxq can quantize" in capsys.readouterr().out
    assert _sha(path) == digest
    written = onnx.load(str(out))
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in written.graph.node}
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    got = run_model(written, {"input": x})[0]
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-x)), rtol=1e-6, atol=1e-6)
    # a ConvTranspose (no int8 kernel on the CPU EP) is named with its reason
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4, 2, 2], np.ones(48, np.float32))
    up = helper.make_model(helper.make_graph(
        [helper.make_node("ConvTranspose", ["input", "w"], ["y"], name="up", strides=[2, 2])],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w]),
        opset_imports=[helper.make_opsetid("", 17)])
    notes = onnxq.quantize(up, [{"input": x[:1]}], progress=False).report.notes
    assert any("nothing onnxq can quantize (up (ConvTranspose): " in n for n in notes), notes


def test_nothing_to_quantize_with_a_fix_is_refused(workdir, capsys):
    """Where the input has a fix, it is refused: a model saved from onnxruntime's ALL level
    (NCHWc operators: the exported model quantizes), or exclusions that leave nothing."""
    tmp, model_path, calib = workdir
    path, out = tmp / "nchwc.onnx", tmp / "out.onnx"
    onnx.save(_sigmoid_model("com.microsoft.nchwc"), str(path))
    _cli_fails(capsys, ["quantize", str(path), str(out), "--calib-data", str(calib)], out,
               path, "EXTENDED level")
    _cli_fails(capsys, ["quantize", str(model_path), str(out), "--calib-data", str(calib),
                        "--exclude-op-types", "Conv", "MatMul", "Gemm"], out, model_path,
               "configuration leaves nothing")


def test_output_in_missing_folder(workdir, capsys):
    tmp, model_path, calib = workdir
    out = tmp / "no" / "such" / "out.onnx"
    digest = _sha(model_path)
    assert main(["quantize", str(model_path), str(out), "--calib-data", str(calib)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists() and _sha(model_path) == digest


def test_output_equal_to_input_is_refused(workdir, capsys):
    _, model_path, calib = workdir
    digest = _sha(model_path)
    assert main(["quantize", str(model_path), str(model_path), "--calib-data",
                 str(calib)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert _sha(model_path) == digest


def test_bad_config_options(workdir, tmp_path, capsys):
    _, model_path, calib = workdir
    with pytest.raises(ConfigError, match="valid options"):
        onnxq.quantize(model_path, [], progress=False, per_chanel=True)
    cfg = tmp_path / "bad.toml"
    cfg.write_text('format = "qdq"\nbogus = 1\n')
    out = tmp_path / "o.onnx"
    _cli_fails(capsys, ["quantize", str(model_path), str(out), "--calib-data", str(calib),
                        "--config", str(cfg)], out, model_path, "valid keys")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quantize"])
    assert exc.value.code == 2
    assert "onnxq: error:" in capsys.readouterr().err


def test_every_error_is_an_onnxq_error():
    for cls in (ConfigError, ModelError, CalibrationError):
        assert issubclass(cls, OnnxqError)


def test_excluding_a_node_the_model_lacks_is_refused_with_close_names(caplog):
    import onnxq
    from onnxq.errors import ConfigError
    from tests import builders as B

    model = B.conv_bn_relu()
    feeds = B.feeds(model, batch=2, n=2, seed=1)
    names = [n.name for n in model.graph.node if n.op_type == "Conv"]
    with pytest.raises(ConfigError, match=f"did you mean '{names[0]}'"):
        onnxq.quantize(model, feeds, progress=False, exclude_nodes=[names[0] + "x"])
    with pytest.raises(ConfigError, match="'nothing_like_it'"):
        onnxq.quantize(model, feeds, progress=False, exclude_nodes=["nothing_like_it"])
    result = onnxq.quantize(model, feeds, progress=False, exclude_op_types=["LSTM"])
    assert result.report.quantized and "LSTM" in caplog.text
