"""Inputs of the unseen models added on 2026-12-02 (session 29), for ``bench_unseen``: each
kind builds feeds the way the model's package prepares them, from synthesized signals (no
download). Where a model reads another model's output (a watermark decoder, openWakeWord's
embedding and wake-word heads), the FP32 upstream model from the same package makes it.

Kinds (``make(kind, model, path)`` returns ``make_feeds(n, seed) -> list[dict]``):

* ``watermark``: RivaGAN's encoder: a photo as a one-frame clip [1, 3, 1, H, W] in [-1, 1]
  and 32 random bits;
* ``watermarked``: RivaGAN's decoder: photos the package's FP32 encoder watermarked;
* ``pitch``: swift-f0: 1 s of synthesized speech at 16 kHz, and its fmin / fmax;
* ``oww_mel``: openWakeWord's mel front end: 1 s of speech as 16-bit sample values;
* ``oww_embedding``: its embedding model: 76-frame windows of that front end's output
  (scaled ``x / 10 + 2`` as openWakeWord does);
* ``oww_head``: a wake-word head: 16 embeddings of successive windows;
* ``tempo``: tempo-cnn: a 40-band magnitude mel spectrogram (11025 Hz, 1024-point STFT, hop
  512) of a click track over tones and noise at 60-200 BPM, 256 frames; normalized as the
  package does (zero mean, unit variance for the deeptemp / deepsquare / Mazurka models,
  max 1 for the others).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

Feeds = Callable[[int, int], list[dict]]

KINDS = ("watermark", "watermarked", "pitch", "oww_mel", "oww_embedding", "oww_head", "tempo")


def _inputs(model: onnx.ModelProto) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _photos(n: int, size: int, seed: int) -> list[np.ndarray]:
    from benchmarks.bench_unseen import _photos as photos

    return photos(n, size, size, True, seed)


def _speech(n: int, samples: int, seed: int) -> list[np.ndarray]:
    from benchmarks.zoo.speech import speech_clips

    clips, _ = speech_clips(n, samples / 16000 + 0.2, seed=seed + 1)
    return [c[:samples].astype(np.float32) for c in clips]


@functools.cache
def _session(path: str):
    """An FP32 session of a package's model (ONNX, or TFLite exported by onnxq)."""
    from onnxq.exporters import export_model
    from onnxq.runtime import make_session

    model = onnx.load(path) if path.endswith(".onnx") else export_model(path)
    return make_session(model, threads=2), _inputs(model)[0].name


def make(kind: str, model: onnx.ModelProto, path: Path) -> Feeds:
    inputs = _inputs(model)
    first = inputs[0].name
    if kind in ("watermark", "watermarked"):
        return _watermark(kind, inputs, path)
    if kind == "pitch":
        return lambda n, seed: [{first: a[None], "fmin": np.array(46.875, np.float32),
                                 "fmax": np.array(2093.75, np.float32)}
                                for a in _speech(n, 16000, seed)]
    if kind.startswith("oww_"):
        return _wakeword(kind, first, path)
    if kind == "tempo":
        std = any(k in path.stem for k in ("dt_maz", "deeptemp", "deepsquare", "shallowtemp"))
        return lambda n, seed: [{first: _tempo_features(seed * 1000 + k, std)}
                                for k in range(n)]
    raise ValueError(f"unknown feed kind {kind!r}")


def _watermark(kind: str, inputs: list, path: Path) -> Feeds:
    size = 256

    def encoder_feeds(n: int, seed: int) -> list[dict]:
        rng = np.random.default_rng(seed)
        return [{"frame": p[:, :, None], "data": rng.integers(0, 2, (1, 32)).astype(np.float32)}
                for p in _photos(n, size, seed)]

    if kind == "watermark":
        return encoder_feeds

    def decoder_feeds(n: int, seed: int) -> list[dict]:
        encoder, _ = _session(str(path.with_name("rivagan_encoder.onnx")))
        return [{inputs[0].name: encoder.run(None, f)[0]} for f in encoder_feeds(n, seed)]
    return decoder_feeds


def _mel_windows(audio: np.ndarray, folder: Path) -> np.ndarray:
    """openWakeWord's features: the mel model's [frames, 32] output, scaled x / 10 + 2."""
    mel, name = _session(str(folder / "melspectrogram.tflite"))
    out = mel.run(None, {name: (audio * 32767).astype(np.float32)[None]})[0]
    return np.squeeze(out).reshape(-1, 32) / 10 + 2


def _wakeword(kind: str, first: str, path: Path) -> Feeds:
    folder = path.parent
    if kind == "oww_mel":
        return lambda n, seed: [{first: (a * 32767)[None]} for a in _speech(n, 16000, seed)]

    def windows(audio: np.ndarray, count: int) -> list[np.ndarray]:
        mel = _mel_windows(audio, folder)
        step = max(1, (len(mel) - 76) // max(count - 1, 1))
        return [mel[k * step:k * step + 76][None, :, :, None].astype(np.float32)
                for k in range(count)]

    if kind == "oww_embedding":
        return lambda n, seed: [{first: windows(a, 1)[0]} for a in _speech(n, 24000, seed)]

    def head(n: int, seed: int) -> list[dict]:
        embed, name = _session(str(folder / "embedding_model.tflite"))
        out = []
        for audio in _speech(n, 48000, seed):
            rows = [np.ravel(embed.run(None, {name: w})[0]) for w in windows(audio, 16)]
            out.append({first: np.stack(rows)[None].astype(np.float32)})
        return out
    return head


def _tempo_features(seed: int, std: bool, frames: int = 256) -> np.ndarray:
    from benchmarks.zoo.speaker import mel_filterbank

    sr, n_fft, hop = 11025, 1024, 512
    rng = np.random.default_rng(seed)
    n = (frames - 1) * hop + n_fft
    t = np.arange(n) / sr
    beat = 60.0 / rng.uniform(60, 200)
    clicks = np.zeros(n)
    for start in np.arange(rng.uniform(0, beat), t[-1], beat):
        k = int(start * sr)
        length = min(400, n - k)
        clicks[k:k + length] += np.exp(-np.arange(length) / 60) * rng.standard_normal(length)
    tones = sum(rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(80, 2000) * t)
                for _ in range(3))
    audio = clicks + tones + 0.02 * rng.standard_normal(n)
    idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    magnitude = np.abs(np.fft.rfft(audio[idx] * window, axis=1))
    mel = (magnitude @ mel_filterbank(sr, n_fft, 40).T).T  # [40, frames], power 1
    if std:
        mel = (mel - mel.mean()) / (mel.std() or 1.0)
    else:
        mel = mel / (mel.max() or 1.0)
    return mel[None, :, :, None].astype(np.float32)
