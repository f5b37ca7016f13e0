"""Hessian-based weight rounding (``recipe.rounding = "gptq"``): choose each int8 weight's
rounding so that the layer's *output* error on the calibration data is small, instead of each
weight's own error (round to nearest).

For ``y = W·x`` the output error of the int8 weights is ``tr(ΔW·H·ΔWᵀ)``, ``H = E[x·xᵀ]``
(``grams.InputGrams``). Following Optimal Brain Quantization / GPTQ (Frantar et al.), the
columns of ``W`` (input features, or conv taps) are quantized one at a time, largest
``diag(H)`` first, and the rounding error of each is spread over the columns not yet quantized
by the optimal least-squares update ``−err · H⁻¹[i, j] / H⁻¹[i, i]`` (via the Cholesky factor of
``H⁻¹``, in blocks of 128 columns). It is the closed-form, deterministic relative of AdaRound
(which learns the same choice by gradient descent): no learning rate, no seed, one pass.

The scales stay those of onnxq's weight quantization: the per-channel (or per-tensor) abs-max
of each row is *pinned* (never moved, so it stays on ±levels) and every other value is
clipped to ±levels, so quantizing the returned weights again gives exactly the chosen
integers with the same scale — every output form (QDQ, QLinear) carries the choice unchanged.
This is checked row by row; a row that does not survive the round trip keeps round-to-nearest.
A layer keeps the new rounding only where its output error is lower than round-to-nearest's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.qtypes import QType
from onnxq.quant_math import quantize, weight_params
from onnxq.recovery.targets import Target

__all__ = ["Rounded", "gptq", "round_weights", "output_error"]

BLOCK = 128
DAMP = 0.01  # of the mean diagonal of H, added to it


@dataclass
class Rounded:
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # node → on-grid weight
    error_ratio: dict[str, float] = field(default_factory=dict)   # node → new / nearest
    skipped: dict[str, str] = field(default_factory=dict)         # node → why
    stopped: bool = False                                          # the time budget ran out


def _layout(target: Target, node: gs.Node, w: np.ndarray) -> tuple[np.ndarray, int]:
    """``w`` as [groups, rows, K] (rows: output channels), and the weight axis of the rows."""
    if target.op == "Conv":
        group = int(node.attrs.get("group", 1))
        return w.reshape(group, w.shape[0] // group, -1), 0
    if target.op == "Gemm" and node.attrs.get("transB", 0):
        return w[None], 0
    return w.T[None], 1


def _restore(target: Target, node: gs.Node, wg: np.ndarray, shape: tuple[int, ...]
             ) -> np.ndarray:
    if target.op == "Conv" or (target.op == "Gemm" and node.attrs.get("transB", 0)):
        return wg.reshape(shape)
    return np.ascontiguousarray(wg[0].T)


def output_error(delta: np.ndarray, h: np.ndarray) -> float:
    """``Σ_g tr(ΔW_g · H_g · ΔW_gᵀ)`` for ``delta`` [groups, rows, K] and ``h`` [groups, K, K]."""
    return float(np.einsum("grk,gkl,grl->", delta, h, delta))


def _upper_inverse_factor(h: np.ndarray) -> np.ndarray | None:
    """Upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = Uᵀ·U``) per group, with damping on
    ``diag(H)`` (more of it where ``H`` is too ill-conditioned); None if that fails."""
    k = h.shape[1]
    diag = np.einsum("gkk->gk", h)
    scale = np.maximum(diag.mean(axis=1), 1e-12)[:, None, None]
    eye = np.eye(k)[None]
    for damp in (DAMP, 0.1, 1.0):
        try:
            inverse = np.linalg.inv(h + damp * scale * eye)
            return np.swapaxes(np.linalg.cholesky(inverse), 1, 2)
        except np.linalg.LinAlgError:
            continue
    return None


def gptq(wg: np.ndarray, h: np.ndarray, scale: np.ndarray, levels: int) -> np.ndarray | None:
    """Integers [groups, rows, K] for weights ``wg`` with per-row ``scale`` [groups, rows] on
    the symmetric grid ±``levels``, chosen against ``h``; None when ``H`` cannot be factored."""
    w = np.array(wg, np.float64)
    h = np.array(h, np.float64)
    groups, rows, k = w.shape
    dead = np.einsum("gkk->gk", h) <= 0
    gi, ki = np.nonzero(dead)
    h[gi, ki, ki] = 1.0  # a column no input reaches: rounded to nearest, nothing moves onto it
    order = np.argsort(-np.einsum("gkk->gk", h), axis=1, kind="stable")
    w = np.take_along_axis(w, order[:, None, :], axis=2)
    h = np.take_along_axis(np.take_along_axis(h, order[:, :, None], axis=1),
                           order[:, None, :], axis=2)
    pinned_col = np.argmax(np.abs(w), axis=2)  # the row's abs-max keeps the scale
    free = np.ones_like(w)
    np.put_along_axis(free, pinned_col[..., None], 0.0, axis=2)
    u = _upper_inverse_factor(h)
    if u is None:
        return None
    s = np.asarray(scale, np.float64)
    q = np.empty(w.shape, np.int64)
    for b0 in range(0, k, BLOCK):
        b1 = min(b0 + BLOCK, k)
        err = np.zeros((groups, rows, b1 - b0))
        for j in range(b1 - b0):
            i = b0 + j
            qi = np.clip(np.rint(w[:, :, i] / s), -levels, levels)
            q[:, :, i] = qi
            e = (w[:, :, i] - qi * s) / u[:, i, i][:, None]
            err[:, :, j] = e
            if i + 1 < b1:
                w[:, :, i + 1:b1] -= (e[:, :, None] * u[:, None, i, i + 1:b1]) \
                    * free[:, :, i + 1:b1]
        if b1 < k:
            w[:, :, b1:] -= np.matmul(err, u[:, b0:b1, b1:]) * free[:, :, b1:]
    out = np.empty_like(q)
    np.put_along_axis(out, order[:, None, :], q, axis=2)
    return out


def _round_one(target: Target, node: gs.Node, h: np.ndarray, qtype: QType,
               reduce_range: bool) -> tuple[np.ndarray | None, float, str]:
    """(on-grid weight or None, error ratio vs nearest, why not)."""
    w = G.constant_value(node.inputs[target.weight_index])
    if w is None or w.dtype != np.float32:
        return None, 1.0, "its weight is not a float constant"
    wg, row_axis = _layout(target, node, w)
    if target.axis is not None and target.axis % w.ndim != row_axis:
        return None, 1.0, "its weight is quantized per channel along its input axis"
    if h.shape != (wg.shape[0], wg.shape[2], wg.shape[2]):
        return None, 1.0, "its input statistics do not match its weight"
    params = weight_params(w, qtype, axis=target.axis, reduce_range=reduce_range)
    if np.any(params.zero_point != 0):
        return None, 1.0, "u8 weights (an offset grid) keep round-to-nearest"
    levels = 63 if reduce_range else 127
    flat = np.asarray(params.scale, np.float64).reshape(-1)
    scale = np.broadcast_to(flat, (wg.shape[0] * wg.shape[1],)).reshape(wg.shape[:2])
    nearest = np.clip(np.rint(wg / scale[..., None]), -levels, levels)
    chosen = gptq(wg, h, scale, levels)
    if chosen is None:
        return None, 1.0, "its input statistics are singular"
    kept = _survives(target, node, chosen, scale, w.shape, qtype, reduce_range)
    chosen = np.where(kept[..., None], chosen, nearest)
    s = scale[..., None]
    before = output_error(nearest * s - wg, h)
    after = output_error(chosen * s - wg, h)
    if not after < before:
        return None, 1.0, "round-to-nearest is already as good on the calibration data"
    grid = (chosen.astype(np.float32) * s.astype(np.float32)).astype(np.float32)
    return _restore(target, node, grid, w.shape), after / max(before, 1e-300), ""


def _survives(target: Target, node: gs.Node, chosen: np.ndarray, scale: np.ndarray,
              shape: tuple[int, ...], qtype: QType, reduce_range: bool) -> np.ndarray:
    """Per row: quantizing the on-grid weight again gives back exactly ``chosen``."""
    grid = (chosen.astype(np.float32) * scale[..., None].astype(np.float32))
    w = _restore(target, node, grid.astype(np.float32), shape)
    params = weight_params(w, qtype, axis=target.axis, reduce_range=reduce_range)
    again, _ = _layout(target, node, quantize(w, params).astype(np.int64))
    same = np.all(again == chosen, axis=2)
    if target.axis is None:  # one scale for all: all rows or none
        return np.full(same.shape, bool(same.all()))
    return same


def round_weights(graph: gs.Graph, found: Sequence[Target], grams: Mapping[str, np.ndarray],
                  qtype: QType, reduce_range: bool, *, budget_s: float = float("inf"),
                  progress: bool = False) -> Rounded:
    """On-grid weights for the targets with statistics, within ``budget_s`` seconds."""
    from tqdm import tqdm

    nodes = {n.name: n for n in graph.nodes}
    out = Rounded()
    start = time.perf_counter()
    todo = [t for t in found if t.node in grams and t.node in nodes]
    for t in found:
        if t.node not in grams:
            out.skipped[t.node] = ("no input statistics (a ConvTranspose, wider than "
                                   "grams.MAX_WIDTH, or past the memory bound): rounded to "
                                   "nearest")
    for t in tqdm(todo, desc="weight rounding", unit="layer", disable=not progress,
                  leave=False):
        if time.perf_counter() - start > budget_s:
            out.stopped = True
            break
        grid, ratio, why = _round_one(t, nodes[t.node], grams[t.node], qtype,
                                     reduce_range and not t.exact)
        if grid is None:
            out.skipped[t.node] = why
        else:
            out.weights[t.node], out.error_ratio[t.node] = grid, ratio
    return out
