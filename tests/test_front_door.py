"""One front door: framework models go through onnxq.quantize and the CLI unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxq
from onnxq.cli import main
from tests.conftest import cosine, run_model


def test_unknown_model_type_exits_2_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "model.bin"
    src.write_bytes(b"\x00" * 64)
    out = tmp_path / "out.onnx"
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3), np.float32))
    assert main(["quantize", str(src), str(out), "--calib-data", str(tmp_path / "c.npz")]) == 2
    assert "unknown model type" in capsys.readouterr().err
    assert main(["export", str(src), str(out)]) == 2
    assert not out.exists()


@pytest.mark.torch
def test_torch_module_and_torchscript_file(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}
             for _ in range(6)]
    result = onnxq.quantize(net, feeds, progress=False)
    assert result.source is not None and result.source.graph.input[0].name == "image"
    feed = feeds[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(feed["image"])).numpy()
    assert cosine(ref, run_model(result.model, feed)[0]) > 0.999

    scripted = tmp_path / "net.pt"
    torch.jit.trace(net, torch.from_numpy(feed["image"])).save(str(scripted))
    np.savez(tmp_path / "calib.npz", image=np.concatenate([f["image"] for f in feeds]))
    out, fp32 = tmp_path / "int8.onnx", tmp_path / "fp32.onnx"
    assert main(["quantize", str(scripted), str(out), "--calib-data",
                 str(tmp_path / "calib.npz"), "--calib-batch", "2", "--save-fp32", str(fp32),
                 "--quiet"]) == 0
    assert cosine(ref, run_model(onnx.load(str(out)), feed)[0]) > 0.999
    assert np.allclose(run_model(onnx.load(str(fp32)), feed)[0], ref, atol=1e-4)
    exported = tmp_path / "exported.onnx"
    assert main(["export", str(scripted), str(exported), "--input-shape", "1x3x16x16"]) == 0
    assert onnx.load(str(exported)).graph.node


@pytest.mark.torch
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_qat_model_needs_no_calibration(fmt):
    """A QAT model exported from torch goes through onnxq without calibration data; its INT8
    output matches torch's fake-quant output within 1 LSB of the output scale on >= 99 % of
    elements (measured: all of them)."""
    torch = pytest.importorskip("torch")
    aq = torch.ao.quantization

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = aq.QuantStub(), aq.DeQuantStub()
            self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(16)
            self.relu = torch.nn.ReLU()
            self.fc = torch.nn.Linear(16 * 8 * 8, 10)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(self.relu(self.bn(self.conv(self.quant(x)))), 2)
            return self.dequant(self.fc(torch.flatten(x, 1)))

    torch.manual_seed(0)
    net = Net().train()
    net.qconfig = aq.get_default_qat_qconfig("x86")
    aq.fuse_modules_qat(net, [["conv", "bn", "relu"]], inplace=True)
    aq.prepare_qat(net, inplace=True)
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(8, 3, 16, 16))
    net.apply(aq.disable_observer)
    net.eval()
    from onnxq.exporters import from_torch

    x = torch.randn(4, 3, 16, 16)
    qat_onnx = from_torch(net, x)
    result = onnxq.quantize(qat_onnx, progress=False, format=fmt)
    assert any("already quantized" in n for n in result.report.notes)
    with torch.no_grad():
        ref = net(x).numpy()
    got = run_model(result.model, {qat_onnx.graph.input[0].name: x.numpy()})[0]
    step = float(net.fc.activation_post_process.scale)
    assert np.mean(np.abs(got - ref) <= step * (1 + 1e-4)) >= 0.99
    if fmt == "qlinear":  # torch's QAT graph (Conv→Div→Add→BN, integer Clip) stays QDQ
        assert all("kept in QDQ form" in reason for _, reason in result.report.skipped)
