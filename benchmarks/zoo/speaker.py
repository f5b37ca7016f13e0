"""Speaker encoder: Resemblyzer's GE2E LSTM (weights shipped in the ``resemblyzer`` wheel).

============  ==========================================  ======================================
name          package(s)                                  evaluation
============  ==========================================  ======================================
resemblyzer   resemblyzer (pretrained.pt only; its        speaker-identification accuracy of
              webrtcvad/librosa preprocessing is not      synthesized speakers: nearest enrolled
              imported)                                   centroid by cosine of the embeddings
============  ==========================================  ======================================

The wheel's ``pretrained.pt`` holds a 3-layer LSTM (40 -> 256, hidden 256) + Linear(256, 256)
+ ReLU + L2 norm (GE2E). The module is rebuilt here in torch with those hyper-parameters, the
state dict loaded from the file (``weights_only=True``), and exported with onnxq's TorchScript
exporter at opset 17: one ONNX ``LSTM`` node per layer, input ``mels`` [batch, 160, 40].

Resemblyzer's input is the *power* mel spectrogram (librosa ``melspectrogram``: 16 kHz, 25 ms
Hann window, 10 ms hop, centred with zero padding, 40 Slaney mel bands, power 2; not a log-mel)
of a waveform normalized to -30 dBFS. That is recomputed here with numpy (own STFT and Slaney
filterbank), so the model sees the feature scale it was trained on.

Data: "speakers" synthesized in code. Each has its own glottal pitch (and intonation range),
vocal-tract length (formant scale), per-vowel formant idiosyncrasies, upper formants,
bandwidths, source spectral tilt, breathiness and speaking rate; each utterance is a different
random phone sequence (vowels, nasals, fricatives, stops, pauses) with a random channel tilt
and background noise at 15-35 dB SNR. Calibration speakers are disjoint from evaluation
speakers (different seeds). Ground truth is the speaker label. Extras: embedding cosine vs
FP32, prediction agreement, and the accuracy of this model's test embeddings against
FP32-enrolled centroids.

Note: the first LSTM's input is the raw power mel (heavy-tailed: most values are below 1/255
of the maximum), which ``DynamicQuantizeLSTM``'s per-run u8 quantization of X flattens;
quantizing that LSTM costs most of the embedding fidelity (cosine ~0.72 vs FP32), the two
deeper LSTMs (inputs in [-1, 1]) cost almost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from benchmarks.real_models import (
    Bench,
    EvalResult,
    Run,
    Unavailable,
    _batches,
    _export_torch,
    _package_dir,
    _stack,
    need,
)

SR = 16000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
FRAMES = 160  # resemblyzer's partial utterance: 1.6 s
N_SAMPLES = (FRAMES - 1) * HOP  # centred STFT: 1 + len // hop frames
TARGET_DBFS = -30.0
SNR_DB = (15.0, 35.0)  # background noise of each utterance
CHANNEL_TILT = 0.3  # first-order channel filter coefficient, uniform in +-this


# ================================================================== features (numpy)
def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    lin = f / (200.0 / 3)
    logstep = np.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / logstep, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), m * (200.0 / 3))


def mel_filterbank(sr: int = SR, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters equally spaced on the Slaney mel scale from
    0 to sr/2, each scaled to unit area (Slaney normalization)."""
    fft_hz = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    lower = (fft_hz[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    upper = (edges[2:, None] - fft_hz[None, :]) / np.diff(edges)[1:, None]
    fb = np.maximum(0.0, np.minimum(lower, upper))
    fb *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return fb.astype(np.float32)


_FB = mel_filterbank()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT))  # periodic Hann


def mel_frames(wav: np.ndarray) -> np.ndarray:
    """Power mel spectrogram [frames, 40] (centred frames, zero padding), as resemblyzer's
    ``wav_to_mel_spectrogram``."""
    x = np.pad(np.asarray(wav, np.float64), N_FFT // 2)
    n = 1 + (len(x) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * _WINDOW, axis=1)) ** 2
    return (spec @ _FB.T.astype(np.float64)).astype(np.float32)


def normalize_volume(wav: np.ndarray, dbfs: float = TARGET_DBFS) -> np.ndarray:
    rms = np.sqrt(np.mean(wav ** 2)) + 1e-12
    return wav * (10 ** (dbfs / 20) / rms)


# ================================================================== speaker synthesis
# Vowel formants F1-F3 (Hz) of an adult male voice (Peterson & Barney averages).
VOWELS = {"iy": (270, 2290, 3010), "ih": (390, 1990, 2550), "eh": (530, 1840, 2480),
          "ae": (660, 1720, 2410), "ah": (520, 1190, 2390), "aa": (730, 1090, 2440),
          "ao": (570, 840, 2410), "uh": (440, 1020, 2240), "uw": (300, 870, 2240),
          "er": (490, 1350, 1690)}
NASALS = {"m": (250, 1100, 2300), "n": (250, 1500, 2500), "ng": (250, 2000, 2700)}
FRICATIVES = {"s": (4500, 7500), "sh": (2000, 5000), "f": (1000, 7800), "th": (1500, 7000),
              "h": None}  # h: breath noise through the next vowel's formants
STOPS = ("p", "t", "k", "b", "d", "g")


def _speaker(rng: np.random.Generator) -> dict:
    female = rng.random() < 0.5
    vtl = rng.uniform(1.08, 1.25) if female else rng.uniform(0.88, 1.06)  # formant scale
    return {
        "f0": float(np.exp(rng.uniform(np.log(165), np.log(255)) if female
                           else rng.uniform(np.log(85), np.log(155)))),
        "f0_range": rng.uniform(0.02, 0.10),  # intonation excursion (fraction of f0)
        "vtl": vtl,
        "vowel_dev": rng.normal(1.0, 0.10, size=(len(VOWELS) + len(NASALS), 3)),
        "f45": (rng.uniform(3300, 3900) * vtl, rng.uniform(4200, 5000) * vtl),
        "bw": rng.uniform(0.7, 1.6),  # formant bandwidth scale
        "tilt": rng.uniform(0.80, 0.97),  # glottal low-pass pole: source spectral tilt
        "breath": rng.uniform(0.005, 0.12),
        "jitter": rng.uniform(0.003, 0.02),
        "rate": rng.uniform(0.75, 1.35),  # phone-duration scale
        "nasal_gain": rng.uniform(0.2, 0.6),
        "fric_gain": rng.uniform(0.05, 0.3),
    }


def _resonator(x: np.ndarray, freq: float, bw: float) -> np.ndarray:
    from scipy.signal import lfilter

    freq = min(freq, 0.45 * SR)
    r = np.exp(-np.pi * bw / SR)
    c = 2 * r * np.cos(2 * np.pi * freq / SR)
    return lfilter([1 - c + r * r], [1.0, -c, r * r], x)  # unit gain at DC


def _formant_filter(x: np.ndarray, formants, bw_scale: float) -> np.ndarray:
    for f in formants:
        x = _resonator(x, f, bw_scale * (50 + 0.06 * f))
    return x


def _glottal_source(spk: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pulse train at a jittered, declining, wavy f0, low-passed (tilt), plus breath noise."""
    from scipy.signal import lfilter

    t = np.arange(n) / SR
    wave = np.sin(2 * np.pi * rng.uniform(0.6, 2.5) * t + rng.uniform(0, 2 * np.pi))
    f0 = spk["f0"] * (1 + spk["f0_range"] * wave) * np.linspace(1.05, 0.92, n)
    f0 *= np.exp(np.cumsum(rng.normal(0, spk["jitter"] / 30, n)))
    phase = np.cumsum(f0 / SR)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    src = lfilter([1.0], [1.0, -spk["tilt"]], lfilter([1.0], [1.0, -spk["tilt"]], pulses))
    src = np.diff(src, prepend=0.0)  # lip radiation
    src /= np.sqrt(np.mean(src ** 2)) + 1e-12
    return src + spk["breath"] * 3 * rng.normal(size=n)


def _utterance(spk: dict, rng: np.random.Generator) -> np.ndarray:
    """One utterance: a random phone sequence of this speaker, channel tilt and noise."""
    from scipy.signal import butter, lfilter

    n = N_SAMPLES
    src = _glottal_source(spk, n + SR // 2, rng)
    out = np.zeros(n + SR // 2)
    fade = int(0.015 * SR)
    pos = int(rng.integers(0, int(0.1 * SR)))
    names = list(VOWELS) + list(NASALS)
    while pos < n:
        kind = rng.choice(["v", "n", "f", "s", "p"], p=[.7, .1, .1, .05, .05])
        if kind == "v" or kind == "n":
            table = VOWELS if kind == "v" else NASALS
            ph = rng.choice(list(table))
            dur = int(SR * spk["rate"] * (rng.uniform(0.06, 0.18) if kind == "v" else
                                          rng.uniform(0.04, 0.09)))
            dev = spk["vowel_dev"][names.index(ph)]
            fs = [f * spk["vtl"] * d for f, d in zip(table[ph], dev, strict=True)]
            seg = _formant_filter(src[pos:pos + dur + 2 * fade], fs + list(spk["f45"]),
                                  spk["bw"] * (1.8 if kind == "n" else 1.0))
            seg *= spk["nasal_gain"] if kind == "n" else 1.0
        elif kind == "f":
            ph = rng.choice(list(FRICATIVES))
            dur = int(SR * spk["rate"] * rng.uniform(0.05, 0.12))
            noise = rng.normal(size=dur + 2 * fade)
            if FRICATIVES[ph] is None:
                v = VOWELS[rng.choice(list(VOWELS))]
                seg = _formant_filter(noise, [f * spk["vtl"] for f in v], spk["bw"] * 1.5)
            else:
                lo, hi = FRICATIVES[ph]
                b, a = butter(2, [lo * min(spk["vtl"], 1.05) / (SR / 2), hi / (SR / 2) * 0.99],
                              btype="band")
                seg = lfilter(b, a, noise)
            seg *= spk["fric_gain"] * 3
        elif kind == "s":  # stop: closure, then a short burst
            dur = int(SR * rng.uniform(0.04, 0.08))
            seg = np.zeros(dur + 2 * fade)
            burst = int(0.012 * SR)
            seg[-burst - fade:-fade] = rng.normal(size=burst) * spk["fric_gain"] * 4
        else:  # pause
            dur = int(SR * rng.uniform(0.05, 0.15))
            seg = np.zeros(dur + 2 * fade)
        env = np.ones(len(seg))
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        env[:fade], env[-fade:] = ramp, ramp[::-1]
        end = min(pos + len(seg), len(out))
        out[pos:end] += (seg * env)[:end - pos]
        pos += dur + fade
    wav = out[:n]
    # channel: a random first-order tilt, then background noise at 15-35 dB SNR
    k = rng.uniform(-CHANNEL_TILT, CHANNEL_TILT)
    wav = lfilter([1.0, -k], [1.0], wav) if k > 0 else lfilter([1.0], [1.0, k], wav)
    noise = rng.normal(size=n)
    if rng.random() < 0.5:  # brown-ish noise half of the time
        noise = lfilter([1.0], [1.0, -0.95], noise)
    snr = rng.uniform(*SNR_DB)
    noise *= np.sqrt(np.mean(wav ** 2) / (np.mean(noise ** 2) * 10 ** (snr / 10)))
    return normalize_volume(wav + noise).astype(np.float32)


def speakers_mels(n_speakers: int, per_speaker: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[n_speakers * per_speaker, 160, 40] power-mel inputs and the speaker labels."""
    rng = np.random.default_rng(seed)
    mels, labels = [], []
    for s in range(n_speakers):
        spk = _speaker(rng)
        for _ in range(per_speaker):
            m = mel_frames(_utterance(spk, rng))
            assert m.shape == (FRAMES, N_MELS), m.shape
            mels.append(m)
            labels.append(s)
    return np.stack(mels).astype(np.float32), np.asarray(labels)


# ================================================================== the model
def _encoder(weights: Path):
    import torch

    class Encoder(torch.nn.Module):  # resemblyzer's VoiceEncoder.forward
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(N_MELS, 256, 3, batch_first=True)
            self.linear = torch.nn.Linear(256, 256)

        def forward(self, mels):
            _, (hidden, _) = self.lstm(mels)
            raw = torch.relu(self.linear(hidden[-1]))
            return raw / torch.norm(raw, dim=1, keepdim=True).clamp_min(1e-12)

    ckpt = torch.load(str(weights), map_location="cpu", weights_only=True)
    state = {k: v for k, v in ckpt["model_state"].items() if k.startswith(("lstm.", "linear."))}
    net = Encoder()
    net.load_state_dict(state, strict=True)  # every LSTM/Linear tensor must be there
    return net.eval()


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
                                    + 1e-30)


def resemblyzer(quick: bool = False) -> Bench:
    need("torch", "torch (onnxq[torch])")
    need("scipy", "scipy")
    root = _package_dir("resemblyzer", "resemblyzer==0.1.4")
    weights = root / "pretrained.pt"
    if not weights.is_file():
        raise Unavailable(f"resemblyzer has no pretrained.pt at {weights}")
    import torch

    net = _encoder(weights)
    model: onnx.ModelProto = _export_torch(net, torch.zeros(1, FRAMES, N_MELS), ["mels"],
                                           ["embedding"])
    n_spk, n_enroll, n_test = (8, 4, 5) if quick else (16, 6, 14)
    calib_x, _ = speakers_mels(8, 4, seed=101)  # 8 other speakers, 4 utterances each
    eval_x, eval_y = speakers_mels(n_spk, n_enroll + n_test, seed=202)
    per = n_enroll + n_test
    enroll = (np.arange(len(eval_x)) % per) < n_enroll
    test = ~enroll

    def centroids(e: np.ndarray) -> np.ndarray:
        c = np.stack([e[enroll & (eval_y == s)].mean(0) for s in range(n_spk)])
        return c / (np.linalg.norm(c, axis=1, keepdims=True) + 1e-12)

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        emb = _stack([run({"mels": b})[0] for b in _batches(eval_x, 16)])
        e = emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12)
        pred = (e[test] @ centroids(e).T).argmax(1)
        extra = {}
        if ref is not None:
            cos = _cosine_rows(emb, ref.outputs)
            re = ref.outputs / (np.linalg.norm(ref.outputs, axis=1, keepdims=True) + 1e-12)
            ref_cent = centroids(re)
            extra = {"embedding_cosine_mean": float(cos.mean()),
                     "embedding_cosine_min": float(cos.min()),
                     "prediction_agreement": 100.0 * float(np.mean(
                         pred == (re[test] @ ref_cent.T).argmax(1))),
                     # test embeddings of this model against speakers enrolled with FP32
                     "accuracy_vs_fp32_enrollment": 100.0 * float(np.mean(
                         (e[test] @ ref_cent.T).argmax(1) == eval_y[test]))}
        return EvalResult(100.0 * float(np.mean(pred == eval_y[test])), emb, extra)

    calib = [{"mels": c[None]} for c in calib_x]
    return Bench("resemblyzer", "transformer", model, calib, {"mels": eval_x[:1]},
                 {"mels": eval_x[:8]}, evaluate, "speaker-ID accuracy %",
                 "Resemblyzer GE2E speaker encoder (3-layer LSTM 40->256 + Linear + ReLU + L2, "
                 "weights from the resemblyzer wheel), TorchScript export at opset 17: "
                 "3 ONNX LSTM nodes, 160 power-mel frames x 40",
                 {"calibration": f"{len(calib)} utterances of 8 other synthesized speakers",
                  "evaluation": f"{n_spk} synthesized speakers x ({n_enroll} enrollment + "
                                f"{n_test} test utterances); test utterance -> nearest "
                                "enrolled centroid by cosine",
                  "calib_samples": len(calib), "eval_samples": int(test.sum())},
                 classes=False)


LOADERS: dict[str, Callable[..., Bench]] = {"resemblyzer": resemblyzer}
PINS: list[str] = ["resemblyzer==0.1.4"]
