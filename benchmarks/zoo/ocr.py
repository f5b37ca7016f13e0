"""OCR models that ship inside PyPI wheels, beyond real_models' PP-OCRv4 det/rec.

============  ========================================  ========================================
name          package(s)                                evaluation
============  ========================================  ========================================
ddddocr_rec   ddddocr (common.onnx: CNN + BiLSTM, CTC   case-insensitive exact match of rendered
              over the 8210 characters of the wheel's   captcha-style strings (codes and words)
              CHARSET_BETA)
ddddocr_det   ddddocr (common_det.onnx: YOLOX-style     F1 of detected boxes vs rendered
              character detector, 416x416)              character boxes at IoU >= 0.5
ppocr_cls     rapidocr-onnxruntime (PP-OCR mobile v2.0  0/180 degree accuracy on rendered text
              text-direction classifier)                lines, each upright and rotated 180
============  ========================================  ========================================

ddddocr is never imported (its import needs OpenCV): the .onnx files are read from its
package folder and its character set is read from ``charsets.py`` as a literal. ddddocr also
ships ``common_old.onnx`` (its default model), which is already dynamically quantized
(ConvInteger, DynamicQuantizeLSTM) and so is no FP32 baseline: ``common.onnx`` (the "beta"
model, FP32) is used instead. Detection post-processing (grid decode, objectness x class
score > 0.1, NMS at 0.45) follows ddddocr's, reimplemented here in a few lines of numpy.
"""

from __future__ import annotations

import ast
import string
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
    _package_dir,
    _rapidocr_model,
    _rec_input,
    _render_line,
    _stack,
    font_path,
    word_list,
)

PINS: list[str] = ["ddddocr==1.6.1"]  # only its .onnx files and charsets.py are used
DDDDOCR_PIP = "ddddocr==1.6.1 (pip install --no-deps is enough)"


def _ddddocr_file(name: str) -> Path:
    path = _package_dir("ddddocr", DDDDOCR_PIP) / name
    if not path.exists():
        raise Unavailable(f"ddddocr has no {name} (its version changed?)")
    return path


def ddddocr_charset(name: str = "CHARSET_BETA") -> list[str]:
    """A character list of ddddocr's ``charsets.py``, read as a literal (no import)."""
    tree = ast.parse(_ddddocr_file("charsets.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == name):
            return list(ast.literal_eval(node.value))
    raise Unavailable(f"ddddocr's charsets.py has no {name}")


def _color(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _background(w: int, h: int, rng: np.random.Generator, lo: int, hi: int):
    """A left-to-right gradient between two random colours in [lo, hi), with pixel noise."""
    from PIL import Image

    t = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    c0 = rng.integers(lo, hi, 3).astype(np.float32)
    c1 = rng.integers(lo, hi, 3).astype(np.float32)
    base = c0 * (1 - t) + c1 * t + rng.normal(0, 10, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _glyph(ch: str, font, color, angle: float):
    """One character on a transparent tile, rotated by ``angle`` degrees; cropped to its ink."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(ch)
    tile = Image.new("RGBA", (right - left + 8, bottom - top + 8), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((4 - left, 4 - top), ch, font=font, fill=(*color, 255))
    tile = tile.rotate(angle, resample=Image.BICUBIC, expand=True)
    box = tile.getchannel("A").point(lambda a: 255 if a > 60 else 0).getbbox()
    return tile.crop(box) if box else tile


# ================================================================== ddddocr recognizer
CAPTCHA_CHARS = "".join(c for c in string.ascii_letters + string.digits if c not in "0oO1lIi")


def _captcha_texts(rng: np.random.Generator, pool: list[str], n: int) -> list[str]:
    """Half random 4–6 character codes, half words (4–8 letters) of ``pool``."""
    words = [w for w in pool if 4 <= len(w) <= 8]
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append("".join(rng.choice(list(CAPTCHA_CHARS), size=int(rng.integers(4, 7)))))
        else:
            out.append(str(rng.choice(words)))
    return out


def _render_captcha(text: str, fonts, rng: np.random.Generator) -> np.ndarray:
    """Captcha-style image: noisy light background, each character in its own dark colour,
    rotated (±15°) and jittered, a few interference lines and dots; HWC uint8."""
    from PIL import ImageDraw

    glyphs = [_glyph(c, fonts[int(rng.integers(len(fonts)))], _color(rng, 0, 140),
                     float(rng.uniform(-15, 15))) for c in text]
    gap = [int(rng.integers(1, 7)) for _ in glyphs]
    h = max(g.height for g in glyphs) + int(rng.integers(10, 20))
    w = sum(g.width for g in glyphs) + sum(gap) + int(rng.integers(12, 30))
    img = _background(w, h, rng, 170, 256)
    x = int(rng.integers(4, 12))
    for g, d in zip(glyphs, gap, strict=True):
        y = int(rng.integers(0, max(1, h - g.height)))
        img.paste(g, (x, y), g)
        x += g.width + d
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        draw.line([(int(rng.integers(0, w)), int(rng.integers(0, h))),
                   (int(rng.integers(0, w)), int(rng.integers(0, h)))],
                  fill=_color(rng, 60, 200), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(20, 80))):
        px, py = int(rng.integers(0, w)), int(rng.integers(0, h))
        draw.point((px, py), fill=_color(rng, 0, 256))
    return np.asarray(img)


def _dddd_rec_input(img: np.ndarray) -> np.ndarray:
    """ddddocr's preprocessing: height 64 keeping the aspect ratio (LANCZOS), grey, /255:
    [1, 1, 64, W] float32."""
    from PIL import Image

    pil = Image.fromarray(img)
    w = max(8, int(pil.width * (64 / pil.height)))
    grey = pil.resize((w, 64), Image.LANCZOS).convert("L")
    return (np.asarray(grey, np.float32) / 255.0)[None, None]


def _ctc_greedy(logits: np.ndarray, charset: list[str]) -> str:
    idx = logits.argmax(-1)
    keep = np.ones(len(idx), bool)
    keep[1:] = idx[1:] != idx[:-1]
    return "".join(charset[i] for i in idx[keep & (idx != 0)] if i < len(charset))


def ddddocr_rec(quick: bool = False) -> Bench:
    from PIL import ImageFont

    model = onnx.load(str(_ddddocr_file("common.onnx")))
    charset = ddddocr_charset("CHARSET_BETA")
    missing = [c for c in CAPTCHA_CHARS + string.ascii_lowercase if c not in charset]
    if missing:
        raise Unavailable(f"ddddocr's CHARSET_BETA lacks {''.join(missing)}")
    # logits kept for the output comparison: blank + every character the texts can contain
    kept = [0] + sorted({charset.index(c) for c in string.ascii_letters + string.digits})
    calib_pool, eval_pool = _split_words()
    fpath = font_path()
    fonts = [ImageFont.truetype(fpath, s) for s in (30, 36, 42, 48)]

    def make(pool, n, seed, avoid=frozenset()):
        r = np.random.default_rng(seed)
        texts = [t for t in _captcha_texts(r, pool, n + 16) if t not in avoid][:n]
        return texts, [_dddd_rec_input(_render_captcha(t, fonts, r)) for t in texts]

    calib_texts, calib_x = make(calib_pool, 32, 1)
    eval_texts, eval_x = make(eval_pool, 80 if quick else 400, 2, frozenset(calib_texts))
    name = model.graph.input[0].name
    fp32_text: list[str] = []  # FP32's strings, for the agreement of the quantized ones

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        logits = [run({name: x})[0].reshape(-1, len(charset)) for x in eval_x]
        text = [_ctc_greedy(lg, charset) for lg in logits]
        exact = np.mean([t.lower() == w.lower() for t, w in zip(text, eval_texts, strict=True)])
        outs = _stack([lg[:, kept] for lg in logits])  # [sum of steps, 1 + 62]
        extra = {"examples": [f"{w}->{t}" for w, t in zip(eval_texts[:4], text[:4],
                                                          strict=True)],
                 "case_sensitive_exact_match": 100.0 * float(np.mean(
                     [t == w for t, w in zip(text, eval_texts, strict=True)]))}
        if ref is None:
            fp32_text[:] = text
        else:
            if fp32_text:
                extra["string_agreement_with_fp32"] = 100.0 * float(np.mean(
                    [a.lower() == b.lower() for a, b in zip(text, fp32_text, strict=True)]))
            extra["frame_argmax_agreement_with_fp32"] = 100.0 * float(np.mean(
                outs.argmax(1) == ref.outputs.argmax(1)))
        return EvalResult(100.0 * float(exact), outs, extra)

    widths = [x.shape[-1] for x in eval_x]
    return Bench("ddddocr_rec", "transformer", model, [{name: x} for x in calib_x],
                 {name: eval_x[int(np.argsort(widths)[len(widths) // 2])]}, None, evaluate,
                 "captcha exact match % (case-insensitive)",
                 "ddddocr 1.6.1 common.onnx (captcha OCR: 21 Conv + SiLU-style Sigmoid*Mul, "
                 "bidirectional LSTM 512, Gemm to 8210 classes, CTC), input 1x1x64xW "
                 "(fixed batch 1, width dynamic); ddddocr's default common_old.onnx is already "
                 "dynamically quantized, so the FP32 common.onnx is used; outputs compared "
                 "on the logits of blank + 62 alphanumerics",
                 {"calibration": f"{len(calib_x)} captcha-style images (codes and words from "
                                 "a disjoint word list)",
                  "evaluation": f"{len(eval_x)} captcha-style images rendered with "
                                f"{Path(fpath).name} (half random codes, half words), "
                                "case-insensitive exact match",
                  "calib_samples": len(calib_x), "eval_samples": len(eval_x)},
                 classes=False,
                 dither_bits={name: 8})


# ================================================================== ddddocr detector
DET_SIZE = 416
DET_CHARS = ("ABCDEFGHJKLMNPQRSTUVWXYZabdeghkmnpqrsuvwxyz2345689"
             "ΔΘΛΞΣΦΨΩБГДЖЗИЛФЦЧШЩЭЮЯ")


def _render_click_captcha(fonts, rng: np.random.Generator, n: int):
    """A click-captcha-like picture: noisy gradient with coloured blobs, ``n`` characters
    (rotated ±25°, contrasting outline) that do not touch; returns (HWC uint8, boxes [k, 4]
    x1 y1 x2 y2 of each character's ink)."""
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(300, 400)), int(rng.integers(150, 260))
    img = _background(w, h, rng, 0, 256)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 10))):
        x0, y0 = int(rng.integers(-20, w)), int(rng.integers(-20, h))
        draw.ellipse((x0, y0, x0 + int(rng.integers(15, 80)), y0 + int(rng.integers(15, 80))),
                     fill=_color(rng, 0, 256))
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(60):
        if len(boxes) >= n:
            break
        font = fonts[int(rng.integers(len(fonts)))]
        ch = DET_CHARS[int(rng.integers(len(DET_CHARS)))]
        col = _color(rng, 0, 256)
        g = _glyph(ch, font, col, float(rng.uniform(-25, 25)))
        # a 1-pixel outline of the opposite colour keeps the glyph visible on any background
        halo = Image.new("RGBA", (g.width + 2, g.height + 2), (0, 0, 0, 0))
        alpha = g.getchannel("A")
        inv = Image.new("RGBA", g.size, (255 - col[0], 255 - col[1], 255 - col[2], 255))
        for dx, dy in ((0, 1), (2, 1), (1, 0), (1, 2)):
            halo.paste(inv, (dx, dy), alpha)
        halo.paste(g, (1, 1), g)
        if halo.width >= w - 4 or halo.height >= h - 4:
            continue
        x, y = int(rng.integers(2, w - halo.width - 2)), int(rng.integers(2, h - halo.height - 2))
        box = (x, y, x + halo.width, y + halo.height)
        if any(box[0] < o[2] + 6 and o[0] < box[2] + 6 and box[1] < o[3] + 6
               and o[1] < box[3] + 6 for o in boxes):
            continue
        img.paste(halo, (x, y), halo)
        boxes.append(box)
    return np.asarray(img), np.asarray(boxes, np.float32).reshape(-1, 4)


def _det_input(img: np.ndarray) -> tuple[np.ndarray, float]:
    """ddddocr's/YOLOX's preprocessing: BGR, scaled to fit 416x416 (bilinear), padded with
    114 at the bottom/right, raw 0–255 values: ([3, 416, 416] float32, scale)."""
    from PIL import Image

    r = min(DET_SIZE / img.shape[0], DET_SIZE / img.shape[1])
    nw, nh = int(img.shape[1] * r), int(img.shape[0] * r)
    out = np.full((DET_SIZE, DET_SIZE, 3), 114, np.uint8)
    out[:nh, :nw] = np.asarray(Image.fromarray(np.ascontiguousarray(img[..., ::-1]))
                               .resize((nw, nh), Image.BILINEAR))
    return out.transpose(2, 0, 1).astype(np.float32), r


def _yolox_grid():
    grids, strides = [], []
    for s in (8, 16, 32):
        n = DET_SIZE // s
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def yolox_boxes(pred: np.ndarray, scale: float, score_thr: float = 0.1,
                nms_thr: float = 0.45) -> np.ndarray:
    """ddddocr's post-processing of one [3549, 6] output: grid/stride decode, score =
    objectness x class, threshold, greedy NMS; boxes [k, 4] in the original image."""
    grid, stride = _yolox_grid()
    xy = (pred[:, :2] + grid) * stride
    wh = np.exp(pred[:, 2:4]) * stride
    score = pred[:, 4] * pred[:, 5]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1) / scale
    keep = score > score_thr
    boxes, score = boxes[keep], score[keep]
    order, out = np.argsort(-score), []
    while order.size:
        i, rest = order[0], order[1:]
        out.append(i)
        order = rest[_iou(boxes[i:i + 1], boxes[rest])[0] <= nms_thr]
    return boxes[out].reshape(-1, 4)


def _match(gt: np.ndarray, det: np.ndarray, thr: float = 0.5) -> int:
    """Greedy one-to-one matching (highest IoU first); the number of pairs with IoU >= thr."""
    if not len(gt) or not len(det):
        return 0
    m = _iou(gt, det)
    tp = 0
    while True:
        i, j = np.unravel_index(int(m.argmax()), m.shape)
        if m[i, j] < thr:
            return tp
        tp += 1
        m[i, :], m[:, j] = -1, -1


def ddddocr_det(quick: bool = False) -> Bench:
    from PIL import ImageFont

    model = onnx.load(str(_ddddocr_file("common_det.onnx")))
    fpath = font_path()
    fonts = [ImageFont.truetype(fpath, s) for s in (26, 32, 38, 46)]
    name = model.graph.input[0].name

    def make(n, seed):
        r = np.random.default_rng(seed)
        pages = [_render_click_captcha(fonts, r, int(r.integers(3, 7))) for _ in range(n)]
        feeds = [_det_input(p) for p, _ in pages]
        return np.stack([f for f, _ in feeds]), [s for _, s in feeds], [b for _, b in pages]

    calib_x, _, _ = make(16, 1)  # other pictures (other seed) than the evaluation's
    eval_x, eval_scale, eval_gt = make(30 if quick else 150, 2)
    n_gt = sum(len(g) for g in eval_gt)
    fp32_preds: list[np.ndarray] = []  # FP32's raw outputs, for the box agreement

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        preds = _stack([run({name: x[None]})[0] for x in eval_x])  # [N, 3549, 6]
        dets = [yolox_boxes(p, s) for p, s in zip(preds, eval_scale, strict=True)]
        if ref is None:
            fp32_preds[:] = [preds]
        tp = sum(_match(g, d) for g, d in zip(eval_gt, dets, strict=True))
        n_det = sum(len(d) for d in dets)
        precision, recall = tp / max(n_det, 1), tp / max(n_gt, 1)
        f1 = 2 * tp / max(n_det + n_gt, 1)
        extra = {"precision": 100.0 * precision, "recall": 100.0 * recall,
                 "detections": n_det, "characters": n_gt}
        if ref is not None and fp32_preds:
            ref_dets = [yolox_boxes(p, s) for p, s in zip(fp32_preds[0], eval_scale,
                                                          strict=True)]
            same = sum(_match(a, b, 0.9) for a, b in zip(ref_dets, dets, strict=True))
            extra["boxes_matching_fp32_iou0.9_%"] = 100.0 * 2 * same / max(
                n_det + sum(len(d) for d in ref_dets), 1)
        # compared with FP32: the scores (objectness x class) of all 3549 anchors; the raw
        # box regressions of background anchors differ a lot and do not matter
        return EvalResult(100.0 * f1, preds[..., 4] * preds[..., 5], extra)

    return Bench("ddddocr_det", "cnn", model, [{name: x[None]} for x in calib_x],
                 {name: eval_x[:1]}, None, evaluate, "character box F1 % (IoU 0.5)",
                 "ddddocr 1.6.1 common_det.onnx (YOLOX-style click-captcha character detector: "
                 "83 Conv, SiLU as Sigmoid*Mul, Focus Slice, MaxPool SPP, 2 Resize), fixed "
                 "1x3x416x416 BGR 0-255 input; ddddocr's decode + NMS reimplemented in numpy; "
                 "outputs compared on the anchor scores (objectness x class)",
                 {"calibration": f"{len(calib_x)} rendered click-captcha pictures (other seed)",
                  "evaluation": f"{len(eval_x)} rendered pictures with {n_gt} Latin/Greek/"
                                f"Cyrillic characters ({Path(fpath).name}, rotated +-25 deg); "
                                "F1 of ddddocr's boxes vs the characters' ink boxes, IoU 0.5",
                  "calib_samples": len(calib_x), "eval_samples": len(eval_x)},
                 classes=False,
                 dither_bits={name: 8})


# ================================================================== PP-OCR direction classifier
def _text_line(pool: list[str], font, rng: np.random.Generator) -> np.ndarray:
    words = " ".join(rng.choice(pool, size=int(rng.integers(1, 4))))
    return _render_line(words, font, rng)


def _split_words() -> tuple[list[str], list[str]]:
    """Calibration words (a third) and evaluation words (the rest): disjoint."""
    words = word_list()
    split = np.random.default_rng(0).permutation(len(words))
    return ([words[i] for i in split[: len(words) // 3]],
            [words[i] for i in split[len(words) // 3:]])


def ppocr_cls(quick: bool = False) -> Bench:
    from PIL import ImageFont

    model = _rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    calib_pool, eval_pool = _split_words()
    fpath = font_path()
    fonts = [ImageFont.truetype(fpath, s) for s in (20, 26, 32, 40)]

    def make(pool, n, seed):
        """``n`` lines, each upright (label 0) and rotated by 180 degrees (label 1); rapidocr's
        preprocessing (BGR, height 48, width <= 192, (x/255 - 0.5)/0.5, zero padding)."""
        r = np.random.default_rng(seed)
        xs, ys = [], []
        for _ in range(n):
            img = _text_line(pool, fonts[int(r.integers(len(fonts)))], r)
            for label, im in ((0, img), (1, img[::-1, ::-1])):
                xs.append(_rec_input(np.ascontiguousarray(im[..., ::-1]), 48, 192))
                ys.append(label)
        return np.stack(xs), np.asarray(ys)

    calib_x, _ = make(calib_pool, 16, 1)
    eval_x, eval_y = make(eval_pool, 60 if quick else 300, 2)

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        probs = _stack([run({"x": b})[0] for b in _batches(eval_x, 16)])
        acc = 100.0 * float(np.mean(probs.argmax(1) == eval_y))
        extra = {"accuracy_at_rapidocr_thresh_0.9": 100.0 * float(np.mean(
            (probs[:, 1] > 0.9) == (eval_y == 1)))}
        return EvalResult(acc, probs, extra)

    return Bench("ppocr_cls", "cnn", model, [{"x": c[None]} for c in calib_x],
                 {"x": eval_x[:1]}, {"x": eval_x[:8]}, evaluate, "0/180 accuracy %",
                 "PP-OCR mobile v2.0 text-direction classifier (rapidocr-onnxruntime 1.4.4; "
                 "MobileNetV3-small: depthwise Conv, BatchNormalization, HardSigmoid, "
                 "Clip-based hard-swish, squeeze-excite), 3x48x192, 2 classes",
                 {"calibration": f"{len(calib_x)} rendered lines (16, upright and rotated) of "
                                 "a disjoint word list",
                  "evaluation": f"{len(eval_x)} rendered lines of 1-3 words with "
                                f"{Path(fpath).name}: {len(eval_x) // 2} upright, "
                                f"{len(eval_x) // 2} rotated 180 degrees",
                  "calib_samples": len(calib_x), "eval_samples": len(eval_x)},
                 dither_bits={"x": 8})


LOADERS: dict[str, Callable[..., Bench]] = {
    "ddddocr_rec": ddddocr_rec,
    "ddddocr_det": ddddocr_det,
    "ppocr_cls": ppocr_cls,
}
