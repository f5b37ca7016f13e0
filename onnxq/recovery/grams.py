"""Second-moment statistics of the inputs of the quantized compute nodes, kept in the
calibration run itself, for Hessian-based weight rounding (``rounding``).

For a layer ``y = W·x`` the output error of a weight change ``ΔW`` over the calibration data is
``Σ ‖ΔW·x‖² = tr(ΔW · H · ΔWᵀ)`` with ``H = Σ x·xᵀ`` over every input vector the weight sees:
for a convolution, every receptive-field patch (im2col), per group; for a MatMul/Gemm, every
row of the input. ``InputGrams`` wraps the range calibrator and accumulates ``H`` (float64, so
the result does not depend on the BLAS kernels of the CPU) for each watched layer; inputs that
several layers read with one geometry (Q/K/V projections) share one ``H``. Work per feed is
bounded by sampling at most ``MAX_ROWS`` patches (evenly spaced, deterministic; fewer for
wide layers, so one feed's patches stay ≤ 32 MB), and memory by ``max_bytes`` over all ``H``;
layers wider than ``MAX_WIDTH`` or beyond the memory bound are left out, and named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.qtypes import TensorRange
from onnxq.recovery.targets import Target

__all__ = ["Geometry", "InputGrams", "geometry", "patches", "MAX_GRAM_BYTES", "MAX_ROWS"]

#: all accumulated H matrices together never exceed this many bytes
MAX_GRAM_BYTES = 512 << 20
#: input vectors (patches or rows) sampled per feed and layer
MAX_ROWS = 8192
#: values (float64) of one feed's patch matrix: 32 MB, so wide layers sample fewer patches
MAX_PATCH_VALUES = 4 << 20
#: layers wider than this (K, per group) keep round-to-nearest: H would take K² memory and the
#: factorization K³ time (a 2048-wide H is 32 MB)
MAX_WIDTH = 2048
#: a layer stops taking rows once it has this many per input feature (and MAX_ROWS at least):
#: H is well determined by then, and the work stays O(K³)
ROWS_PER_FEATURE = 16


@dataclass(frozen=True, slots=True)
class Geometry:
    """How a layer turns its input into the vectors its weight multiplies."""

    kind: str                       # "conv" or "rows"
    width: int                      # K: the length of one vector (per group)
    groups: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[tuple[int, int], ...] = ()
    auto_pad: str = "NOTSET"

    @property
    def gram_bytes(self) -> int:
        return self.groups * self.width * self.width * 8


def geometry(node: gs.Node, target: Target) -> Geometry | None:
    """The geometry of ``target`` (``node`` is its compute node), or None where the weight
    rounding does not apply (ConvTranspose, a weight of unexpected rank)."""
    shape = G.constant_shape(node.inputs[target.weight_index])
    if not shape:
        return None
    if target.op == "Conv" and len(shape) >= 3:
        kernel = tuple(int(k) for k in shape[2:])
        n = len(kernel)
        pads = list(node.attrs.get("pads", [0] * 2 * n))
        auto = node.attrs.get("auto_pad", "NOTSET")
        return Geometry("conv", int(shape[1]) * int(np.prod(kernel)),
                        int(node.attrs.get("group", 1)), kernel,
                        tuple(int(v) for v in node.attrs.get("strides", [1] * n)),
                        tuple(int(v) for v in node.attrs.get("dilations", [1] * n)),
                        tuple((int(pads[i]), int(pads[i + n])) for i in range(n)),
                        auto.decode() if isinstance(auto, bytes) else str(auto))
    if target.op == "MatMul" and len(shape) == 2:
        return Geometry("rows", int(shape[0]))
    if target.op == "Gemm" and len(shape) == 2:
        return Geometry("rows", int(shape[1] if node.attrs.get("transB", 0) else shape[0]))
    return None


def _pads(g: Geometry, spatial: Sequence[int]) -> list[tuple[int, int]]:
    if g.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for size, k, st, d in zip(spatial, g.kernel, g.strides, g.dilations, strict=True):
            total = max(0, (-(-size // st) - 1) * st + d * (k - 1) + 1 - size)
            small = total // 2
            out.append((small, total - small) if g.auto_pad == "SAME_UPPER"
                       else (total - small, small))
        return out
    if g.auto_pad == "VALID":
        return [(0, 0)] * len(spatial)
    return list(g.pads)


def patches(x: np.ndarray, g: Geometry, max_rows: int = MAX_ROWS) -> np.ndarray | None:
    """The input vectors of one feed: [groups, K, P] (float64), at most ``max_rows`` of the
    P of them (evenly spaced), in the order the weight's flattened ``[C/g, *kernel]`` reads
    them. None when ``x`` does not fit the geometry."""
    x = np.asarray(x)
    if g.kind == "rows":
        if x.ndim < 1 or x.shape[-1] != g.width:
            return None
        rows = x.reshape(-1, g.width)
        return _sample(rows.T, max_rows)[None].astype(np.float64)
    n = len(g.kernel)
    if x.ndim != n + 2 or x.shape[1] * int(np.prod(g.kernel)) != g.width * g.groups:
        return None
    x = np.pad(x, [(0, 0), (0, 0), *_pads(g, x.shape[2:])])
    outs = [(x.shape[2 + i] - g.dilations[i] * (g.kernel[i] - 1) - 1) // g.strides[i] + 1
            for i in range(n)]
    if min(outs) < 1:
        return None
    total = x.shape[0] * int(np.prod(outs))
    pick = _picks(total, max_rows)
    taps = []
    for tap in np.ndindex(*g.kernel):
        window = tuple(slice(t * d, t * d + st * (o - 1) + 1, st)
                       for t, d, st, o in zip(tap, g.dilations, g.strides, outs, strict=True))
        part = x[(slice(None), slice(None), *window)]  # [B, C, *outs]
        part = np.moveaxis(part, 1, 0).reshape(x.shape[1], -1)
        taps.append(part if pick is None else part[:, pick])
    cols = np.stack(taps, axis=1)  # [C, taps, P]
    per = x.shape[1] // g.groups
    return cols.reshape(g.groups, per * len(taps), -1).astype(np.float64)


def _picks(total: int, limit: int) -> np.ndarray | None:
    if total <= limit:
        return None
    return np.linspace(0, total - 1, limit).round().astype(np.int64)


def _sample(cols: np.ndarray, limit: int) -> np.ndarray:
    pick = _picks(cols.shape[1], limit)
    return cols if pick is None else cols[:, pick]


class _Gram:
    __slots__ = ("geometry", "sum", "count", "broken")

    def __init__(self, g: Geometry) -> None:
        self.geometry = g
        self.sum: np.ndarray | None = None
        self.count = 0
        self.broken = False

    def add(self, x: np.ndarray) -> None:
        if self.broken:
            return
        g = self.geometry
        if self.count >= max(MAX_ROWS, ROWS_PER_FEATURE * g.width):
            return
        cols = patches(x, g, max(64, min(MAX_ROWS, MAX_PATCH_VALUES // (g.width * g.groups))))
        if cols is None:
            self.broken, self.sum = True, None
            return
        part = np.matmul(cols, np.swapaxes(cols, 1, 2))
        self.sum = part if self.sum is None else self.sum + part
        self.count += cols.shape[2]


def _merge_gram(mine: _Gram, theirs: _Gram) -> None:
    """Add a shard's sum (its rows count against the same bound)."""
    if mine.broken:
        return
    if theirs.broken:
        mine.broken, mine.sum = True, None
        return
    if theirs.sum is None or mine.count >= max(MAX_ROWS, ROWS_PER_FEATURE * mine.geometry.width):
        return
    mine.sum = theirs.sum.copy() if mine.sum is None else mine.sum + theirs.sum
    mine.count += theirs.count


class InputGrams:
    """A calibrator wrapper: ``H`` for each watched layer; every observation goes on to
    ``inner``. ``watch``: layer (compute node) → (its input tensor, its geometry)."""

    #: a layer's sum stops growing once it has enough rows, which blocks of feeds observed
    #: apart cannot know: one process observes this chain as one stream (``onnxq.calibrate``)
    STREAM_ONLY = True

    def __init__(self, inner, watch: Mapping[str, tuple[str, Geometry]],
                 max_bytes: int = MAX_GRAM_BYTES) -> None:
        self.inner = inner
        self.name = inner.name
        self.left_out: list[str] = []
        self._grams: dict[tuple[str, Geometry], _Gram] = {}
        self._layers: dict[str, tuple[str, Geometry]] = {}
        used = 0
        for layer, (tensor, g) in watch.items():
            key = (tensor, g)
            if key not in self._grams:
                if g.width > MAX_WIDTH or used + g.gram_bytes > max_bytes:
                    self.left_out.append(layer)
                    continue
                used += g.gram_bytes
                self._grams[key] = _Gram(g)
            self._layers[layer] = key
        self._by_tensor: dict[str, list[_Gram]] = {}
        for (tensor, _), gram in self._grams.items():
            self._by_tensor.setdefault(tensor, []).append(gram)

    @property
    def tensors(self) -> list[str]:
        return sorted(self._by_tensor)

    def observe(self, name: str, array: np.ndarray, *, index: int | None = None) -> None:
        for gram in self._by_tensor.get(name, ()):
            if array.size and array.ndim:
                gram.add(array)
        self.inner.observe(name, array, index=index)

    def compute(self) -> dict[str, TensorRange]:
        return self.inner.compute()

    def merge(self, other: InputGrams) -> None:
        """Add a shard's sums (and its calibrator's observations)."""
        for key, gram in other._grams.items():
            _merge_gram(self._grams[key], gram)
        self.inner.merge(other.inner)

    def grams(self) -> dict[str, np.ndarray]:
        """Layer → its mean ``H`` ([groups, K, K], float64), for the layers whose every
        input fitted their geometry."""
        out = {}
        for layer, key in self._layers.items():
            gram = self._grams[key]
            if gram.sum is not None and gram.count:
                out[layer] = gram.sum / gram.count
        return out
