"""Calibration (and evaluation) feeds from raw data: a folder of images, a text file with a
tokenizer, a folder of ``.wav`` files. The model's inputs (names, ranks, fixed dims, element
types) are read first and every mismatch is an error naming it, before anything runs.

Images follow a small preprocessing spec (``ImageSpec``: a preset name or a TOML file):
decode (Pillow), RGB or BGR, resize the shorter side, centre crop, scale, mean/std, NCHW or
NHWC. Text goes through a ``tokenizers`` ``tokenizer.json``; ``input_ids``,
``attention_mask`` and ``token_type_ids`` are found by name. Audio is read with the standard
library (PCM ``.wav``), mixed to mono, resampled linearly and cut or padded to the model's
length. Pillow and tokenizers are the ``[data]`` extra, imported only when used.
"""

from __future__ import annotations

import dataclasses
import tomllib
import wave
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnxq.errors import CalibrationError, ConfigError, ModelError

__all__ = ["ImageSpec", "PRESETS", "ModelInput", "model_inputs", "raw_feeds", "image_spec",
           "feeds_from", "raw_inputs"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True, slots=True)
class ImageSpec:
    resize: int | None = 256          # shorter side, before the crop (None: straight to size)
    crop: int | None = 224            # centre square; None: the model's height and width
    scale: float = 1 / 255            # applied to 0..255 values first
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    layout: str = "NCHW"              # or NHWC
    channels: str = "RGB"             # or BGR


PRESETS = MappingProxyType({
    "imagenet": ImageSpec(),
    "unit": ImageSpec(resize=None, crop=None, mean=(0.0,), std=(1.0,)),
    "raw": ImageSpec(resize=None, crop=None, scale=1.0, mean=(0.0,), std=(1.0,)),
})


def image_spec(name_or_file: str) -> ImageSpec:
    """A preset (``imagenet``, ``unit``, ``raw``) or a TOML file with ``ImageSpec``'s keys."""
    if name_or_file in PRESETS:
        return PRESETS[name_or_file]
    path = Path(name_or_file)
    if not path.is_file():
        raise ConfigError(f"--preprocess {name_or_file!r} is neither a preset "
                          f"({', '.join(PRESETS)}) nor a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read preprocessing spec {str(path)!r}: {exc}") from None
    valid = [f.name for f in dataclasses.fields(ImageSpec)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {str(path)!r}; valid: {valid}")
    try:
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
                if len(data[key]) not in (1, 3) or (key == "std" and 0.0 in data[key]):
                    raise ValueError(f"{key} needs 1 or 3 values (std non-zero)")
        for key in ("resize", "crop"):
            if data.get(key) is not None and (type(data[key]) is not int or data[key] < 1):
                raise ValueError(f"{key} must be a positive integer")
        if "scale" in data:
            data["scale"] = float(data["scale"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"preprocessing spec {str(path)!r}: {exc}") from None
    spec = dataclasses.replace(PRESETS["imagenet"], **data)
    if spec.layout not in ("NCHW", "NHWC") or spec.channels not in ("RGB", "BGR"):
        raise ConfigError(f"{str(path)!r}: layout must be NCHW or NHWC and channels RGB or "
                          "BGR")
    return spec


@dataclass(frozen=True, slots=True)
class ModelInput:
    name: str
    dims: tuple[int | None, ...]  # None: free
    dtype: np.dtype


def model_inputs(model: str | Path | onnx.ModelProto) -> list[ModelInput]:
    """The model's data inputs (names, dims, element types), read without its weights."""
    try:
        proto = model if isinstance(model, onnx.ModelProto) else \
            onnx.load(str(model), load_external_data=False)
    except (OSError, ValueError, DecodeError) as exc:
        raise ModelError(f"cannot read the inputs of model {str(model)!r}: {exc}") from None
    inits = {t.name for t in proto.graph.initializer}
    out = []
    for i in proto.graph.input:
        if i.name in inits or not i.type.HasField("tensor_type"):
            continue
        tt = i.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in tt.shape.dim)
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        except (KeyError, ValueError):
            raise ModelError(f"model input {i.name!r} has element type {tt.elem_type}, which "
                             "numpy cannot hold; fix the model") from None
        out.append(ModelInput(i.name, dims, dtype))
    return out


class _Feeds:
    """A sized, re-iterable sequence of feeds made on the fly."""

    def __init__(self, items: Sequence, make) -> None:
        self.items, self.make = list(items), make

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[dict]:
        return (self.make(item) for item in self.items)


def raw_feeds(path: str | Path, inputs: list[ModelInput], *, preprocess: str | None = None,
              tokenizer: str | None = None, sample_rate: int = 16000) -> _Feeds:
    """Feeds for ``inputs`` from ``path``: an image folder (needs ``preprocess``), a text file
    (needs ``tokenizer``) or a ``.wav`` folder."""
    src = Path(path)
    if src.is_file() and src.suffix.lower() == ".txt":
        if tokenizer is None:
            raise ConfigError(f"{str(src)!r} is text: give --tokenizer tokenizer.json")
        return _text_feeds(src, Path(tokenizer), inputs)
    files = sorted(p for p in src.iterdir() if p.is_file()) if src.is_dir() else []
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    sounds = [p for p in files if p.suffix.lower() == ".wav"]
    if images:
        if preprocess is None:
            raise ConfigError(f"{str(src)!r} holds images: give --preprocess "
                              f"({', '.join(PRESETS)} or a FILE.toml) so they are prepared as "
                              "the model was trained")
        return _image_feeds(images, image_spec(preprocess), inputs)
    if sounds:
        return _audio_feeds(sounds, inputs, sample_rate)
    raise ConfigError(f"{str(src)!r} has no .npz, image ({', '.join(IMAGE_SUFFIXES)}), .wav "
                      "or .txt data")


def _one(inputs: list[ModelInput], rank: int, what: str) -> ModelInput:
    fitting = [i for i in inputs if len(i.dims) == rank]
    if len(inputs) != 1 or not fitting:
        shapes = ", ".join(f"{i.name} {list(i.dims)}" for i in inputs)
        raise CalibrationError(f"{what} make one rank-{rank} input, but the model takes "
                               f"{shapes}; write .npz feeds for it instead")
    return fitting[0]


def _image_feeds(files: list[Path], spec: ImageSpec, inputs: list[ModelInput]) -> _Feeds:
    x = _one(inputs, 4, "images")
    c_axis, hw = (1, x.dims[2:4]) if spec.layout == "NCHW" else (3, x.dims[1:3])
    if x.dims[c_axis] not in (None, 3):
        raise CalibrationError(f"the model's input {x.name!r} {list(x.dims)} has "
                               f"{x.dims[c_axis]} channels in layout {spec.layout}; images "
                               "give 3: set layout in the preprocessing spec")
    if np.issubdtype(x.dtype, np.integer) and (spec.scale != 1.0 or any(spec.mean)
                                               or any(v != 1.0 for v in spec.std)):
        raise CalibrationError(f"the model's input {x.name!r} is {x.dtype} (raw pixels), but "
                               "the preprocessing scales or normalizes them: use --preprocess "
                               "raw (or scale = 1, mean = [0], std = [1])")
    if not spec.crop and None in hw:
        raise CalibrationError(f"the model's input {x.name!r} {list(x.dims)} has a free "
                               "height/width: set crop in the preprocessing spec")
    size: tuple[int, int] = (spec.crop, spec.crop) if spec.crop else (int(hw[0] or 0),
                                                                    int(hw[1] or 0))
    if any(m is not None and m != s for m, s in zip(hw, size, strict=True)):
        raise CalibrationError(f"the preprocessing makes {size[0]}x{size[1]} images but the "
                               f"model's input {x.name!r} takes {list(x.dims)}: set crop = "
                               f"{hw[0]} (or resize) in the preprocessing spec")
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("image calibration data needs Pillow: pip install 'onnxq[data]'") \
            from None

    def make(path: Path) -> dict:
        try:
            img = Image.open(path).convert("RGB")
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"cannot decode image {str(path)!r}: {exc}") from None
        if spec.resize:
            w, h = img.size
            k = spec.resize / min(w, h)
            img = img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BILINEAR)
        if spec.crop:
            w, h = img.size
            left, top = (w - size[1]) // 2, (h - size[0]) // 2
            img = img.crop((left, top, left + size[1], top + size[0]))
        else:
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        a: np.ndarray = np.asarray(img, np.float32) * np.float32(spec.scale)
        a = np.subtract(a, np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        if spec.channels == "BGR":
            a = a[..., ::-1]
        if spec.layout == "NCHW":
            a = a.transpose(2, 0, 1)
        return {x.name: np.ascontiguousarray(a[None]).astype(x.dtype)}

    return _Feeds(files, make)


_TEXT_INPUTS = {"input_ids": "ids", "attention_mask": "attention_mask",
                "token_type_ids": "type_ids"}


def _text_feeds(src: Path, tokenizer_file: Path, inputs: list[ModelInput]) -> _Feeds:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError("text calibration data needs tokenizers: pip install "
                          "'onnxq[data]'") from None
    try:
        tok = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own types
        raise ConfigError(f"cannot load tokenizer {str(tokenizer_file)!r}: {exc}") from None
    unknown = [i.name for i in inputs if i.name not in _TEXT_INPUTS]
    if unknown or not inputs:
        raise CalibrationError(f"text feeds fill {', '.join(_TEXT_INPUTS)}, but the model also "
                               f"takes {unknown}; write .npz feeds for it instead")
    length = next((i.dims[1] for i in inputs if len(i.dims) == 2 and i.dims[1]), None)
    try:
        lines = [t for t in src.read_text(encoding="utf-8").splitlines() if t.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"cannot read {str(src)!r} as UTF-8 text: {exc}") from None

    def make(line: str) -> dict:
        enc = tok.encode(line)
        cut = length or min(len(enc.ids), 512)
        feed = {}
        for i in inputs:
            values = list(getattr(enc, _TEXT_INPUTS[i.name]))[:cut]
            values += [0] * (cut - len(values))
            feed[i.name] = np.asarray([values], dtype=i.dtype)
        return feed

    return _Feeds(lines, make)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    try:
        with wave.open(str(path), "rb") as w:
            width, rate, channels = w.getsampwidth(), w.getframerate(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise CalibrationError(f"cannot read {str(path)!r} as PCM .wav: {exc}") from None
    a: np.ndarray
    if width == 1:
        a = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width in (2, 4):
        a = np.frombuffer(raw, f"<i{width}").astype(np.float32) / float(2 ** (8 * width - 1))
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        a = ((b[:, 0] | b[:, 1] << 8 | b[:, 2] << 16) << 8 >> 8).astype(np.float32) / 2 ** 23
    else:
        raise CalibrationError(f"{str(path)!r}: {width}-byte samples are not PCM")
    return a.reshape(-1, channels).mean(axis=1), rate


def _audio_feeds(files: list[Path], inputs: list[ModelInput], rate: int) -> _Feeds:
    x = next((i for i in inputs if len(i.dims) in (2, 3)), None)
    if x is not None and not np.issubdtype(x.dtype, np.floating):
        raise CalibrationError(f"the model's audio input {x.name!r} is {x.dtype}; .wav data "
                               "is given as float samples in [-1, 1]: write .npz feeds instead")
    if x is None or len(inputs) != 1:
        shapes = ", ".join(f"{i.name} {list(i.dims)}" for i in inputs)
        raise CalibrationError(f"audio makes one [1, samples] (or [1, 1, samples]) input, but "
                               f"the model takes {shapes}; write .npz feeds for it instead")

    def make(path: Path) -> dict:
        a: np.ndarray
        a, r = _read_wav(path)
        if r != rate and a.size:
            n = max(1, round(a.size * rate / r))
            a = np.interp(np.linspace(0, a.size - 1, n), np.arange(a.size), a)
        length = x.dims[-1]
        if length:
            a = np.pad(a[:length], (0, max(0, length - a.size)))
        return {x.name: np.asarray(a, np.float32).reshape((1,) * (len(x.dims) - 1) + (-1,))
                .astype(x.dtype)}

    return _Feeds(files, make)


def feeds_from(args) -> Iterable[dict]:
    """The feeds of the CLI's ``--calib-data``: ``.npz`` files as ``data.load_feeds`` reads
    them, else raw data prepared for the inputs of the model ``args.input`` (``raw_feeds``,
    with ``--preprocess``, ``--tokenizer``, ``--sample-rate``)."""
    from onnxq.data import load_feeds

    src, model, batch = Path(args.calib_data), args.input, args.calib_batch
    preprocess, tokenizer, sample_rate = args.preprocess, args.tokenizer, args.sample_rate
    raw = (src.is_file() and src.suffix.lower() == ".txt") or (
        src.is_dir() and not any(src.glob("*.npz")))
    if not raw:
        if preprocess or tokenizer:
            raise ConfigError("--preprocess/--tokenizer apply to raw data (images, text, "
                              f".wav); {str(src)!r} holds .npz feeds: drop them")
        return load_feeds(src, batch=batch)
    if isinstance(model, (str, Path)) and Path(model).suffix.lower() != ".onnx":
        raise ConfigError("raw calibration data (images, text, .wav) needs an ONNX model to "
                          "read its inputs from: export it first (onnxq export)")
    return raw_feeds(src, model_inputs(model), preprocess=preprocess, tokenizer=tokenizer,
                     sample_rate=sample_rate)


def raw_inputs(args) -> list[str]:
    """The files ``--preprocess``/``--tokenizer`` name (outputs must never overwrite them)."""
    spec, tok = getattr(args, "preprocess", None), getattr(args, "tokenizer", None)
    return [p for p in (tok, spec if spec and spec not in PRESETS else None) if p]
