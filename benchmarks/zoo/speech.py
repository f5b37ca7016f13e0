"""Speech models of the zoo: Silero VAD (the ONNX graphs shipped inside the ``silero-vad``
wheel), evaluated on speech-like audio synthesized here with frame-level ground truth.

==============  ===================================  ==========================================
name            graph (silero-vad wheel, data/)      evaluation
==============  ===================================  ==========================================
silero_vad      silero_vad.onnx: If on ``sr`` with   streaming, 512-sample chunks (+64 context),
                Conv1d/LSTM cells in the branches,   state fed back chunk by chunk; frame
                recurrent ``state`` in and out       accuracy at 0.5 vs generated labels
silero_vad_seq  silero_vad_16k_sequence.onnx: no If, whole clips as one [frames, 576] call, LSTM
                Conv over frames, one LSTM over the  over the frames (h/c in and out); same
                frame sequence                       metric
==============  ===================================  ==========================================

The audio (16 kHz) is made in code: utterances of syllables whose voiced nuclei are a
Rosenberg glottal pulse train (pitch contour with declination, vibrato-like drift and jitter)
through a cascade of time-varying formant resonators (vowel targets, speaker scaling), with
fricative / burst onsets, between stretches of non-speech (background only, sometimes beeps or
clicks), all over background noise (white, pink, brown, mains hum, or "room" noise) at SNRs of
30, 20, 10 and 5 dB. A 512-sample frame is labelled speech when at least half of it lies in an
utterance. Calibration clips and evaluation clips come from different seeds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from benchmarks.real_models import Bench, EvalResult, Run, Unavailable, _package_dir, need

PINS: list[str] = ["silero-vad==6.2.3"]

SR = 16000
CHUNK = 512  # samples per streaming chunk at 16 kHz (silero's OnnxWrapper)
CONTEXT = 64  # samples of the previous chunk prepended to each chunk
THRESHOLD = 0.5  # silero's default speech threshold
SNRS_DB = (30.0, 20.0, 10.0, 5.0)
NOISES = ("white", "pink", "brown", "hum", "room")

# (F1, F2, F3) in Hz of a few vowels (adult male averages); speakers scale them
VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410],
                   [300, 870, 2240], [660, 1720, 2410], [490, 1350, 1690], [640, 1190, 2390],
                   [440, 1020, 2240], [390, 1990, 2550]], np.float64)


# ================================================================== synthesis
def _resonator(freq: float, bw: float) -> tuple[np.ndarray, np.ndarray]:
    """Second-order digital resonator (Klatt) with unit gain at DC."""
    r = np.exp(-np.pi * bw / SR)
    c = -r * r
    b = 2.0 * r * np.cos(2.0 * np.pi * freq / SR)
    a0 = 1.0 - b - c
    return np.array([a0, 0.0, 0.0]), np.array([1.0, -b, -c])


def _formant_filter(src: np.ndarray, formants: np.ndarray, bws: np.ndarray,
                    block: int = 160) -> np.ndarray:
    """Cascade of resonators whose frequencies change every ``block`` samples.
    ``formants``/``bws``: [n_blocks, n_formants]."""
    from scipy.signal import lfilter

    out = src.astype(np.float64).copy()
    n_blocks = formants.shape[0]
    for k in range(formants.shape[1]):
        zi = np.zeros(2)
        y = np.empty_like(out)
        for j in range(n_blocks):
            s, e = j * block, min((j + 1) * block, len(out))
            if s >= e:
                break
            b, a = _resonator(formants[j, k], bws[j, k])
            y[s:e], zi = lfilter(b, a, out[s:e], zi=zi)
        out = y
    return out


def _glottal(f0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Differentiated Rosenberg pulse train following the per-sample pitch ``f0`` (Hz)."""
    jitter = 1.0 + 0.01 * rng.standard_normal(len(f0))
    phase = np.cumsum(f0 * jitter / SR)
    p = phase - np.floor(phase)
    tp, tn = rng.uniform(0.35, 0.5), rng.uniform(0.12, 0.2)
    g = np.where(p < tp, 0.5 * (1 - np.cos(np.pi * p / tp)),
                 np.where(p < tp + tn, np.cos(0.5 * np.pi * (p - tp) / tn), 0.0))
    dg = np.diff(g, prepend=g[0])  # lip radiation
    return dg / (np.std(dg) + 1e-9)


def _band_noise(n: int, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec[(f < lo) | (f > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / (np.std(x) + 1e-9)


def _envelope(n: int, rise: int, fall: int) -> np.ndarray:
    env = np.ones(n)
    rise, fall = min(rise, n // 2), min(fall, n // 2)
    if rise:
        env[:rise] = 0.5 * (1 - np.cos(np.pi * np.arange(rise) / rise))
    if fall:
        env[n - fall:] = 0.5 * (1 + np.cos(np.pi * np.arange(fall) / fall))
    return env


def _utterance(n: int, rng: np.random.Generator, speaker: dict) -> np.ndarray:
    """``n`` samples of syllables (voiced vowel nuclei, optional consonant onsets, short
    pauses); ends on the last syllable."""
    out = np.zeros(n)
    # pitch: declination + slow random drift, per sample
    t = np.arange(n) / SR
    knots = rng.normal(0, 0.08, int(n / SR * 4) + 2)
    drift = np.interp(t, np.linspace(0, t[-1] + 1e-9, len(knots)), knots)
    f0 = speaker["f0"] * (1.1 - 0.2 * t / max(t[-1], 1e-9)) * np.exp(drift)
    pos = 0
    while pos < n - int(0.08 * SR):
        onset = rng.random()
        if onset < 0.35:  # fricative
            m = int(rng.uniform(0.04, 0.12) * SR)
            lo = rng.uniform(1500, 4000)
            seg = _band_noise(m, lo, min(lo + rng.uniform(2000, 4000), 7900), rng)
            seg *= _envelope(m, m // 4, m // 4) * rng.uniform(0.15, 0.4)
            e = min(pos + m, n)
            out[pos:e] += seg[:e - pos]
            pos = e
        elif onset < 0.55:  # plosive: short closure then a burst
            pos += int(rng.uniform(0.01, 0.03) * SR)
            m = int(rng.uniform(0.01, 0.025) * SR)
            seg = _band_noise(m, 500, 7000, rng) * _envelope(m, 8, m // 2) * 0.4
            e = min(pos + m, n)
            out[pos:e] += seg[:e - pos]
            pos = e
        m = min(int(rng.uniform(0.08, 0.26) * SR), n - pos)
        if m <= 160:
            break
        n_blocks = (m + 159) // 160
        v0, v1 = VOWELS[rng.integers(len(VOWELS))], VOWELS[rng.integers(len(VOWELS))]
        w = np.linspace(0, 1, n_blocks)[:, None]
        f123 = ((1 - w) * v0 + w * v1) * speaker["scale"] * rng.uniform(0.95, 1.05, 3)
        f45 = np.tile(np.array([3500.0, 4500.0]) * speaker["scale"], (n_blocks, 1))
        forms = np.minimum(np.concatenate([f123, f45], axis=1), 7600)
        bws = np.tile(np.array([70.0, 90.0, 120.0, 180.0, 250.0]), (n_blocks, 1))
        src = _glottal(f0[pos:pos + m], rng) + 0.05 * rng.standard_normal(m)
        voiced = _formant_filter(src, forms, bws)
        voiced /= np.std(voiced) + 1e-9
        out[pos:pos + m] += voiced * _envelope(m, int(0.02 * SR), int(0.04 * SR)) \
            * rng.uniform(0.6, 1.0)
        pos += m
        pos += int(rng.choice([0, 0, rng.uniform(0.02, 0.08)]) * SR)  # pause in a phrase
    return out


def _background(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind in ("pink", "brown"):
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / SR)
        f[0] = f[1]
        spec /= np.sqrt(f) if kind == "pink" else f
        x = np.fft.irfft(spec, n)
    elif kind == "hum":
        t = np.arange(n) / SR
        base = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6))
                for k in range(1, 8))
        x = x / np.std(x) + 0.3 * rng.standard_normal(n)
    else:  # room: low-passed noise with slow amplitude modulation (fan / traffic)
        x = _band_noise(n, 40, rng.uniform(800, 2500), rng)
        t = np.arange(n) / SR
        x *= 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 2) * t)
    return x / (np.std(x) + 1e-9)


def _distractors(n: int, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Beeps and clicks placed in non-speech stretches only."""
    out = np.zeros(n)
    for _ in range(int(rng.integers(0, 3))):
        m = int(rng.uniform(0.1, 0.4) * SR)
        s = int(rng.integers(0, max(n - m, 1)))
        if mask[s:s + m].any():
            continue
        if rng.random() < 0.5:
            t = np.arange(m) / SR
            out[s:s + m] += np.sin(2 * np.pi * rng.uniform(400, 3000) * t) * _envelope(m, 80, 80)
        else:
            for c in rng.integers(s, s + m, 4):
                out[c:c + 40] += rng.standard_normal(min(40, n - c)) * np.exp(-np.arange(
                    min(40, n - c)) / 8)
    return out


def speech_clip(seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One clip: (float32 audio in [-1, 1], bool per-sample speech mask)."""
    n = int(seconds * SR)
    female = rng.random() < 0.5
    speaker = {"f0": rng.uniform(170, 240) if female else rng.uniform(90, 140),
               "scale": rng.uniform(1.08, 1.2) if female else rng.uniform(0.92, 1.05)}
    speech = np.zeros(n)
    mask = np.zeros(n, bool)
    pos = int(rng.uniform(0.3, 1.2) * SR)
    while pos < n - int(0.5 * SR):
        m = min(int(rng.uniform(0.6, 2.5) * SR), n - pos)
        utt = _utterance(m, rng, speaker)
        nz = np.flatnonzero(np.abs(utt) > 1e-6)
        if len(nz):
            speech[pos:pos + m] = utt * rng.uniform(0.5, 1.0)
            mask[pos + nz[0]:pos + nz[-1] + 1] = True
        pos += m + int(rng.uniform(0.4, 1.6) * SR)
    level = 10 ** (rng.uniform(-32, -18) / 20)  # speech RMS in dBFS
    rms = np.sqrt(np.mean(speech[mask] ** 2)) if mask.any() else 1.0
    speech *= level / rms
    snr = SNRS_DB[int(rng.integers(len(SNRS_DB)))]
    noise = _background(n, NOISES[int(rng.integers(len(NOISES)))], rng) * level / 10 ** (snr / 20)
    x = speech + noise + _distractors(n, mask, rng) * level * rng.uniform(0.3, 1.0)
    return np.clip(x, -1, 1).astype(np.float32), mask


def speech_clips(n: int, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` clips: audio [n, samples] float32 and frame labels [n, frames] bool (a frame of
    CHUNK samples is speech when at least half of it lies in an utterance)."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * SR) // CHUNK
    audio, labels = [], []
    for _ in range(n):
        x, m = speech_clip(seconds, rng)
        audio.append(x[:frames * CHUNK])
        labels.append(m[:frames * CHUNK].reshape(frames, CHUNK).mean(1) >= 0.5)
    return np.stack(audio), np.stack(labels)


def with_context(audio: np.ndarray) -> np.ndarray:
    """[n, samples] -> [n, frames, CONTEXT + CHUNK]: each chunk preceded by the last CONTEXT
    samples of the previous one (zeros before the first), as silero's OnnxWrapper feeds it."""
    n, s = audio.shape
    frames = s // CHUNK
    padded = np.concatenate([np.zeros((n, CONTEXT), np.float32), audio[:, :frames * CHUNK]], 1)
    idx = np.arange(frames)[:, None] * CHUNK + np.arange(CONTEXT + CHUNK)[None, :]
    return np.ascontiguousarray(padded[:, idx])


def _vad_scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    pred = probs >= THRESHOLD
    tp = float(np.sum(pred & labels))
    return {"accuracy": 100.0 * float(np.mean(pred == labels)),
            "f1": 100.0 * 2 * tp / (float(pred.sum()) + float(labels.sum()) + 1e-9)}


def _silero_path(name: str) -> str:
    root = _package_dir("silero_vad", "silero-vad==6.2.3")
    path = root / "data" / name
    if not path.exists():
        raise Unavailable(f"silero-vad has no data/{name} (its version changed?)")
    return str(path)


def _summary(labels: np.ndarray, seconds: float) -> str:
    return (f"{len(labels)} clips of {seconds:g} s, {labels.size} frames of 32 ms, "
            f"{100 * labels.mean():.0f}% speech; SNR {'/'.join(f'{s:g}' for s in SNRS_DB)} dB, "
            f"noise {'/'.join(NOISES)}")


# ================================================================== Silero VAD (streaming)
def silero_vad(quick: bool = False) -> Bench:
    need("scipy", "scipy")
    model = onnx.load(_silero_path("silero_vad.onnx"))
    sr = np.array(SR, np.int64)
    seconds = 8.0
    calib_audio, _ = speech_clips(6, seconds, seed=101)
    eval_audio, eval_labels = speech_clips(12 if quick else 48, seconds, seed=202)
    eval_x = with_context(eval_audio)  # [clips, frames, 576]

    def stream(run: Run, x: np.ndarray, keep_states: bool = False):
        """Run the clips [n, frames, 576] as n parallel streams, chunk after chunk, feeding
        the state back; returns probs [n, frames] (and the states fed at each chunk)."""
        state = np.zeros((2, x.shape[0], 128), np.float32)
        probs, states = [], []
        for f in range(x.shape[1]):
            if keep_states:
                states.append(state)
            out, state = run({"input": x[:, f], "state": state, "sr": sr})
            probs.append(out[:, 0])
        return np.stack(probs, 1), states

    # calibration: chunks of the calibration clips with the state FP32 had at that point
    from benchmarks.common import session

    fp32_run = session(model, threads=1).run
    calib_x = with_context(calib_audio)
    _, states = stream(lambda feed: fp32_run(None, feed), calib_x, keep_states=True)
    step = 4
    calib = [{"input": calib_x[c, f][None], "state": np.ascontiguousarray(states[f][:, c:c + 1]),
              "sr": sr}
             for f in range(1, calib_x.shape[1], step) for c in range(calib_x.shape[0])]

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        probs, _ = stream(run, eval_x)
        return _vad_result(probs, eval_labels, ref)

    mid = eval_x.shape[1] // 2
    state8 = np.zeros((2, 8, 128), np.float32)
    return Bench("silero_vad", "transformer", model, calib,
                 {"input": eval_x[0, mid][None], "state": state8[:, :1], "sr": sr},
                 {"input": eval_x[:8, mid], "state": state8, "sr": sr}, evaluate,
                 "frame accuracy %",
                 "Silero VAD v6 (silero-vad wheel, silero_vad.onnx): If on sr (8k/16k) with "
                 "STFT-as-Conv, Conv1d encoder, LSTM cell and decoder in the branches; streamed "
                 "in 512-sample chunks (+64 context) at 16 kHz, state [2,B,128] fed back; "
                 "speech when prob >= 0.5",
                 {"calibration": f"{len(calib)} chunks (every {step}th) of 6 synthesized 8 s "
                                 "clips (other seed), each with the state FP32 had there",
                  "evaluation": _summary(eval_labels, seconds) + "; streams run as a batch",
                  "calib_samples": len(calib), "eval_samples": int(eval_labels.size)},
                 classes=False,
                 dither_bits={"input": 16})


def _vad_result(probs: np.ndarray, labels: np.ndarray, ref: EvalResult | None) -> EvalResult:
    """Frame accuracy (and F1) against the labels; decision agreement with FP32's."""
    scores = _vad_scores(probs, labels)
    extra = {"f1": scores["f1"]}
    if ref is not None:
        extra["decision_agreement_with_fp32"] = 100.0 * float(np.mean(
            (probs >= THRESHOLD) == (ref.outputs >= THRESHOLD)))
        extra["prob_max_abs_diff"] = float(np.max(np.abs(probs - ref.outputs)))
    return EvalResult(scores["accuracy"], probs, extra)


# ================================================================== Silero VAD (sequence)
def silero_vad_seq(quick: bool = False) -> Bench:
    need("scipy", "scipy")
    model = onnx.load(_silero_path("silero_vad_16k_sequence.onnx"))
    seconds = 8.0
    calib_audio, _ = speech_clips(8, seconds, seed=103)
    eval_audio, eval_labels = speech_clips(12 if quick else 48, seconds, seed=204)
    calib_x, eval_x = with_context(calib_audio), with_context(eval_audio)
    zero = np.zeros((1, 1, 128), np.float32)

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        probs = np.stack([run({"input": clip, "h": zero, "c": zero})[0] for clip in eval_x])
        return _vad_result(probs, eval_labels, ref)

    return Bench("silero_vad_seq", "transformer", model,
                 [{"input": clip, "h": zero, "c": zero} for clip in calib_x],
                 {"input": eval_x[0], "h": zero, "c": zero}, None, evaluate,
                 "frame accuracy %",
                 "Silero VAD v6, sequence export (silero-vad wheel, "
                 "silero_vad_16k_sequence.onnx): no If; Conv1d encoder over all frames of a "
                 "clip, one LSTM over the frame sequence (h/c in and out); one call per 8 s clip "
                 "([250, 576] frames with 64-sample context); batch-1 feed is one clip",
                 {"calibration": f"{len(calib_x)} synthesized 8 s clips (other seed)",
                  "evaluation": _summary(eval_labels, seconds),
                  "calib_samples": len(calib_x), "eval_samples": int(eval_labels.size)},
                 classes=False,
                 dither_bits={"input": 16})


LOADERS: dict[str, Callable[..., Bench]] = {
    "silero_vad": silero_vad,
    "silero_vad_seq": silero_vad_seq,
}
