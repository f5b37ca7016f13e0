"""Architectures real PyTorch models are built from, exported and quantized end to end with the
defaults: each must export, quantize (no refusal) and agree with FP32. Small random-weight
versions of shapes that broke or could break a graph tool: channel shuffle by reshape, window
attention with torch.roll and a gathered relative-position bias, T5's bucketed position bias
and RMSNorm, a conformer's GLU and depthwise Conv1d, YOLOv5's Focus slicing and SPPF, and a
stock nn.TransformerEncoder (which exported only once torch's fused fast path was turned off).
The 2026-11-30 sweep of larger versions is in docs/unseen-models.md."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

import onnxq  # noqa: E402
from onnxq.exporters import export_model  # noqa: E402
from tests.conftest import cosine, run_model  # noqa: E402


class Shuffle(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        h = c // 2
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        self.b = nn.Sequential(nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU(),
                               nn.Conv2d(h, h, 3, padding=1, groups=h), nn.Conv2d(h, h, 1),
                               nn.ReLU())
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        for _ in range(2):
            a, b = x.chunk(2, 1)
            x = torch.cat([a, self.b(b)], 1)
            n, c, h, w = x.shape
            x = x.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(x.mean((2, 3)))


class Window(nn.Module):
    def __init__(self, d=32, heads=2, ws=4, res=8):
        super().__init__()
        self.d, self.h, self.ws, self.res = d, heads, ws, res
        self.pe = nn.Conv2d(3, d, 4, 4)
        self.n1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.table = nn.Parameter(torch.randn((2 * ws - 1) ** 2, heads) * 0.1)
        c = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
        r = (c.flatten(1)[:, :, None] - c.flatten(1)[:, None, :]).permute(1, 2, 0) + ws - 1
        self.register_buffer("idx", r[..., 0] * (2 * ws - 1) + r[..., 1])

    def forward(self, x):
        x = self.pe(x).flatten(2).transpose(1, 2)
        b, length, c = x.shape
        ws, hw = self.ws, self.res
        y = torch.roll(self.n1(x).view(b, hw, hw, c), (-2, -2), (1, 2))
        y = y.view(b, hw // ws, ws, hw // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        y = y.reshape(-1, ws * ws, c)
        q, k, v = self.qkv(y).reshape(-1, ws * ws, 3, self.h, c // self.h).permute(2, 0, 3, 1, 4)
        bias = self.table[self.idx.view(-1)].view(ws * ws, ws * ws, -1).permute(2, 0, 1)
        a = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.h) + bias[None]
        y = (a.softmax(-1) @ v).transpose(1, 2).reshape(-1, ws * ws, c)
        y = self.proj(y).view(b, hw // ws, hw // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        y = torch.roll(y.reshape(b, hw, hw, c), (2, 2), (1, 2)).reshape(b, length, c)
        return (x + y).mean(1)


class T5Like(nn.Module):
    def __init__(self, vocab=300, d=32, heads=2):
        super().__init__()
        self.emb, self.h, self.rel = nn.Embedding(vocab, d), heads, nn.Embedding(32, heads)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.w = nn.Parameter(torch.ones(d))

    def forward(self, ids):
        b, t = ids.shape
        x = self.emb(ids)
        pos = torch.arange(t)
        n = pos[:, None] - pos[None]
        sign, n = (n < 0).long() * 16, n.abs()
        large = 8 + (torch.log(n.float().clamp(min=1) / 8) / math.log(16) * 8).long().clamp(max=15)
        bias = self.rel(sign + torch.where(n < 8, n, large)).permute(2, 0, 1)[None]
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w
        hd = x.shape[-1] // self.h
        q, k, v = (m(y).view(b, t, self.h, hd).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = (q @ k.transpose(-1, -2) + bias).softmax(-1)
        return x + self.o((a @ v).transpose(1, 2).reshape(b, t, -1))


class ConformerConv(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.ln, self.pw1 = nn.LayerNorm(d), nn.Conv1d(d, 2 * d, 1)
        self.dw, self.bn = nn.Conv1d(d, d, 15, padding=7, groups=d), nn.BatchNorm1d(d)
        self.pw2 = nn.Conv1d(d, d, 1)

    def forward(self, x):  # [B, T, d]
        y = F.glu(self.pw1(self.ln(x).transpose(1, 2)), dim=1)
        return x + self.pw2(F.silu(self.bn(self.dw(y)))).transpose(1, 2)


class Focus(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(12, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.SiLU())
        self.c2 = nn.Sequential(nn.Conv2d(64, 16, 1), nn.SiLU())
        self.out = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        x = self.c1(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2],
                               x[..., 1::2, 1::2]], 1))
        p1 = F.max_pool2d(x, 5, 1, 2)
        p2 = F.max_pool2d(p1, 5, 1, 2)
        y = self.c2(torch.cat([x, p1, p2, F.max_pool2d(p2, 5, 1, 2)], 1))
        up = F.interpolate(F.max_pool2d(y, 2), scale_factor=2.0, mode="nearest")
        return self.out(torch.cat([y, up], 1)).sigmoid()


class Encoder(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 2, 64, 0.0, activation="gelu", batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x):
        return self.enc(x)


ARCHS = {"channel_shuffle": (Shuffle, "image", (1, 3, 32, 32)),
         "shifted_windows": (Window, "image", (1, 3, 32, 32)),
         "t5_position_bias": (T5Like, "tokens", (1, 20)),
         "conformer_conv": (ConformerConv, "normal", (1, 40, 32)),
         "focus_sppf": (Focus, "image", (1, 3, 32, 32)),
         "transformer_encoder": (Encoder, "normal", (1, 12, 32))}


def _sample(kind: str, shape: tuple, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "tokens":
        return rng.integers(0, 300, shape).astype(np.int64)
    if kind == "image":  # smooth, image-like: low-frequency noise in [-1, 1]
        small = rng.uniform(-1, 1, (*shape[:2], shape[2] // 4, shape[3] // 4))
        return np.repeat(np.repeat(small, 4, 2), 4, 3).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_architecture_exports_quantizes_and_agrees(name):
    cls, kind, shape = ARCHS[name]
    torch.manual_seed(0)
    net = cls().eval()
    example = torch.from_numpy(_sample(kind, shape, 0))
    fp32 = export_model(net, example_inputs=(example,))
    with torch.no_grad():
        want = net(example).numpy()
    x = fp32.graph.input[0].name
    assert np.allclose(run_model(fp32, {x: example.numpy()})[0], want, atol=1e-4)
    calib = [{x: _sample(kind, shape, s)} for s in range(1, 9)]
    # int8 wherever onnxq can (the latency placement would keep such small models float)
    result = onnxq.quantize(fp32, calib, progress=False, objective="size")
    assert len(result.report.quantized) >= 2, name
    for s in (20, 21):
        feed = {x: _sample(kind, shape, s)}
        assert cosine(run_model(result.model, feed)[0], run_model(fp32, feed)[0]) > 0.99, name
