"""A 1-D convolution over a one-channel signal that yields few frames per row becomes one
MatMul over the framed signal (CPU EP; runs before planning).

Audio models often open with a filter bank or STFT written as ``Conv1d(1 → C, kernel k,
stride s)`` on raw samples. onnxruntime's CPU EP runs a Conv one batch row at a time: an
im2col of that row, then a GEMM whose column count is the row's frame count. Silero VAD's
sequence export calls it on [rows, 1, 832] with k = 256, s = 128: five frames per row, so 250
GEMMs of five columns each. It was 57 % of the int8 model's time.

Where ``k`` is a multiple ``m·s`` of the stride (m ≤ ``MAX_BLOCKS``), frame ``f`` is the
concatenation of blocks ``f … f+m−1`` of the signal cut into blocks of ``s``. So the Conv is
``Reshape`` into blocks → ``m`` Slices → ``Concat`` → ``MatMul(W[:, 0, :]ᵀ)`` (+ bias, unless
it is zero) → ``Transpose``: one GEMM over every row's frames. The products and sums are the
Conv's own (onnxruntime's Conv is an im2col GEMM too); on Silero the float outputs are
bit-identical.

When every reader of the Conv's output is a Slice (a Slice of other axes passes the question
on to its readers), only the frames they pick are computed, and the Slices are re-pointed (or
bypassed where they then pick everything). Silero's magnitude drops the first of its five
frames: a fifth less GEMM and framing.

It runs before planning, so the plan sees a MatMul. An STFT's MatMul is then int8 with its
output float (onnxruntime's ``MatMulIntegerToFloat``): only the samples and the basis are
rounded, not the real and imaginary parts, whose requantization is what a Conv form would need
(``QLinearConv`` requantizes its output) and what swamps the quiet bins. Measured on Silero
VAD (AVX-512 VNNI): frame accuracy drop 0.32 against 0.35 with the bank float, and about 10 %
less time for the whole model. A bank whose magnitude is log-compressed still stays float
(``quant_ops.spectrum_reason``), as does a bank this rewrite does not take
(``filter_bank_reason``).

It applies only to a float Conv with a constant weight, one input channel and group 1, no
padding or dilation, a static signal length, at most ``MAX_FRAMES`` frames per row (longer
rows already make wide GEMMs), at least ``MIN_WEIGHTS`` weights, and a row count that is not
the literal 1 (a symbolic one counts as many: Silero's is its sequence of chunks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.graph_shapes import infer_shapes
from onnxq.pipeline import PassResult

__all__ = ["FramedConvPass", "MAX_BLOCKS", "MAX_FRAMES", "MIN_WEIGHTS"]

#: kernel / stride: the Slices the frames are assembled from
MAX_BLOCKS = 8
#: frames per row up to which the Conv's per-row GEMMs lose to one MatMul, and the weight size
#: (output channels × kernel) from which the framing pays for its copies. Measured with
#: onnxruntime 1.32, 2 threads, AVX-512 VNNI, one Conv alone: 250 rows × 5 frames of
#: k = 256 → 258 channels 2.2× faster, 8 frames 1.8×, 16 frames 1.2×; 32 rows × 8 frames of
#: 128 → 64 channels 2.0×; but a single row is a GEMM of the same shape either way (0.86–1.10×
#: for 3–8 frames), so a row count of exactly 1 keeps the Conv
MAX_FRAMES = 8
MIN_WEIGHTS = 1 << 14


@dataclass(frozen=True, slots=True)
class _Shape:
    length: int  # samples per row
    kernel: int
    stride: int
    frames: int


def _kernel(node: gs.Node) -> tuple[int, int] | None:
    """(kernel, stride) of a float Conv1d over one channel that the rewrite could take, from
    its attributes and weight alone; None otherwise."""
    if node.op != "Conv" or node.domain not in (None, "", "ai.onnx") or len(node.inputs) < 2:
        return None
    weight = G.constant_value(node.inputs[1])
    if weight is None or weight.dtype != np.float32 or weight.ndim != 3 or weight.shape[1] != 1:
        return None
    if len(node.inputs) > 2 and node.inputs[2].name and G.constant_value(node.inputs[2]) is None:
        return None
    attrs = node.attrs
    if int(attrs.get("group", 1)) != 1 or any(int(d) != 1 for d in attrs.get("dilations", [1])):
        return None
    if any(int(p) for p in attrs.get("pads", [0, 0])) or attrs.get("auto_pad", "NOTSET") not in (
            "NOTSET", "VALID", b"NOTSET", b"VALID"):
        return None
    kernel, stride = int(weight.shape[2]), int((attrs.get("strides") or [1])[0])
    if stride < 1 or kernel % stride or not 1 <= kernel // stride <= MAX_BLOCKS:
        return None
    return kernel, stride


def _geometry(node: gs.Node) -> _Shape | None:
    """The Conv's framing (its input's shape inferred), or None where it does not apply."""
    found, shape = _kernel(node), node.inputs[0].shape
    if found is None or shape is None or len(shape) != 3 or shape[1] != 1 or not isinstance(
            shape[2], int):
        return None
    (kernel, stride), length = found, int(shape[2])
    weights = int(np.prod(G.constant_shape(node.inputs[1]) or (0,)))
    if length < kernel or shape[0] == 1 or weights < MIN_WEIGHTS:
        return None
    frames = (length - kernel) // stride + 1
    return _Shape(length, kernel, stride, frames) if frames <= MAX_FRAMES else None


def _int64(graph: gs.Graph, base: str, values) -> gs.Constant:
    return gs.Constant(G.unique_name(graph, base), np.array(values, dtype=np.int64))


#: the output's frame axis ([rows, channels, frames])
_TIME = 2


def _normalized(start: int, end: int, size: int) -> tuple[int, int]:
    """A Slice's [start, end) on an axis of ``size`` (step 1), as ONNX clamps it."""
    start, end = start + size if start < 0 else start, end + size if end < 0 else end
    return min(max(start, 0), size), min(max(end, 0), size)


def _slice_args(node: gs.Node) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """(starts, ends, axes, steps) of a Slice with constant arguments, or None."""
    if node.op != "Slice" or "starts" in node.attrs or len(node.inputs) < 3:
        return None
    args = [G.constant_value(t) if t.name else None for t in node.inputs[1:5]]
    if args[0] is None or args[1] is None or any(
            a is None and t.name for a, t in zip(args[2:], node.inputs[3:5], strict=False)):
        return None
    starts, ends = args[0].ravel().tolist(), args[1].ravel().tolist()
    axes = args[2].ravel().tolist() if len(args) > 2 and args[2] is not None \
        else list(range(len(starts)))
    steps = args[3].ravel().tolist() if len(args) > 3 and args[3] is not None \
        else [1] * len(starts)
    return starts, ends, [a % 3 for a in axes], steps


def _frames_read(graph: gs.Graph, y: gs.Tensor, frames: int
                 ) -> tuple[int, int, list[tuple[gs.Node, int]], list[gs.Tensor]] | None:
    """The frames [first, last) that ``y``'s readers use, when every reader is a Slice (a
    Slice of other axes passes the question on to its own readers), with the Slices that pick
    frames and their frame-axis position, and the tensors that keep ``y``'s frame axis; None
    when some reader needs every frame. An STFT's magnitude often drops its first or last
    frame (Silero VAD's drops the first)."""
    first, last, picks, tensors, kept = frames, 0, [], [y], []
    while tensors:
        tensor = tensors.pop()
        kept.append(tensor)
        if tensor in graph.outputs or not tensor.outputs:
            return None
        for reader in tensor.outputs:
            args = _slice_args(reader)
            if args is None or reader.inputs[0] is not tensor:
                return None
            starts, ends, axes, steps = args
            if _TIME not in axes:
                tensors.append(reader.outputs[0])
                continue
            i = axes.index(_TIME)
            start, end = _normalized(int(starts[i]), int(ends[i]), frames)
            if steps[i] != 1 or start >= end:
                return None
            first, last = min(first, start), max(last, end)
            picks.append((reader, i))
    return (first, last, picks, kept) if picks else None


def _shift_reads(graph: gs.Graph, picks: list[tuple[gs.Node, int]], span: tuple[int, int],
                 frames: int) -> None:
    """Re-point the frame-picking Slices at an output that holds frames ``span`` only; one
    that then picks every frame and nothing else is bypassed."""
    first = span[0]
    for reader, i in picks:
        starts, ends, axes, _ = _slice_args(reader) or ([], [], [], [])
        start, end = _normalized(int(starts[i]), int(ends[i]), frames)
        out = reader.outputs[0]
        if (start, end) == span and len(axes) == 1 and out not in graph.outputs:
            for user in list(out.outputs):
                for k, t in enumerate(user.inputs):
                    if t is out:
                        user.inputs[k] = reader.inputs[0]
            continue
        starts[i], ends[i] = start - first, end - first
        kind = np.asarray(G.constant_value(reader.inputs[1])).dtype  # int32 or int64, as its axes
        for k, values in ((1, starts), (2, ends)):
            reader.inputs[k] = gs.Constant(G.unique_name(graph, f"{reader.name}_{k}"),
                                           np.array(values, dtype=kind))


def _framed(graph: gs.Graph, x: gs.Tensor, geo: _Shape, span: tuple[int, int], base: str
            ) -> tuple[gs.Tensor, list[gs.Node]]:
    """Frames ``span`` = [first, last) of ``x`` as [rows, last − first, kernel]."""
    (first, last), blocks = span, geo.kernel // geo.stride
    count = last + blocks - 1  # blocks of ``stride`` samples the frames read
    made: list[gs.Node] = []

    def var(suffix: str) -> gs.Variable:
        return gs.Variable(G.unique_name(graph, f"{base}_{suffix}"), dtype=np.float32)

    signal = x
    if count * geo.stride != geo.length:  # the samples after the last frame are never read
        signal = var("cut")
        made.append(gs.Node("Slice", inputs=[x, _int64(graph, f"{base}_cut_start", [0]),
                                             _int64(graph, f"{base}_cut_end",
                                                    [count * geo.stride]),
                                             _int64(graph, f"{base}_cut_axis", [2])],
                            outputs=[signal]))
    cut = var("blocks")
    made.append(gs.Node("Reshape", inputs=[signal, _int64(graph, f"{base}_blocks_shape",
                                                          [0, count, geo.stride])],
                        outputs=[cut]))
    if blocks == 1 and first == 0:
        return cut, made
    parts = []
    for j in range(blocks):
        part = var(f"block{j}")
        made.append(gs.Node("Slice", inputs=[
            cut, _int64(graph, f"{base}_b{j}_start", [j + first]),
            _int64(graph, f"{base}_b{j}_end", [j + last]),
            _int64(graph, f"{base}_b{j}_axis", [1])], outputs=[part]))
        parts.append(part)
    if blocks == 1:
        return parts[0], made
    frames = var("frames")
    made.append(gs.Node("Concat", inputs=parts, outputs=[frames], attrs={"axis": 2}))
    return frames, made


def _rewrite(graph: gs.Graph, node: gs.Node, geo: _Shape) -> bool:
    """Replace ``node``; True when only the frames its readers use are computed."""
    x, y = node.inputs[0], node.outputs[0]
    weight = np.asarray(G.constant_value(node.inputs[1]))
    bias = G.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name \
        else None
    base = node.name or y.name
    read = _frames_read(graph, y, geo.frames)
    span = (read[0], read[1]) if read else (0, geo.frames)
    frames, made = _framed(graph, x, geo, span, base)
    product = gs.Variable(G.unique_name(graph, f"{base}_product"), dtype=np.float32)
    matrix = gs.Constant(G.unique_name(graph, f"{base}_frame_weight"),
                         np.ascontiguousarray(weight[:, 0, :].T))
    made.append(gs.Node("MatMul", inputs=[frames, matrix], outputs=[product]))
    if bias is not None and np.any(bias):  # a zero bias (``AddZeroBiasPass``'s) adds nothing
        biased = gs.Variable(G.unique_name(graph, f"{base}_biased"), dtype=np.float32)
        made.append(gs.Node("Add", inputs=[product, gs.Constant(
            G.unique_name(graph, f"{base}_frame_bias"), bias.astype(np.float32))],
            outputs=[biased]))
        product = biased
    node.outputs.clear()
    node.inputs.clear()
    made.append(gs.Node("Transpose", inputs=[product], outputs=[y], attrs={"perm": [0, 2, 1]}))
    graph.nodes.extend(made)
    trimmed = span != (0, geo.frames)
    if read and trimmed:
        _shift_reads(graph, read[2], span, geo.frames)
        for tensor in read[3]:
            tensor.shape = None  # fewer frames than the Conv's output had
    return trimmed


@dataclass(frozen=True, slots=True)
class FramedConvPass:
    """Few-frame 1-D convolutions over one channel as one MatMul over the frames."""

    name: str = "conv_frames"

    def run(self, graph: gs.Graph) -> PassResult:
        if not any(_kernel(n) is not None for n in graph.nodes):
            return PassResult(graph=graph, modified=False)
        infer_shapes(graph)  # the signal's length (the output's tensors carry no shapes)
        found = [(n, geo) for n in graph.nodes if (geo := _geometry(n)) is not None]
        trimmed = sum(_rewrite(graph, node, geo) for node, geo in found)
        if found:
            graph.cleanup().toposort()
        notes = (f"{len(found)} float 1-D Conv(s) over one channel with ≤ {MAX_FRAMES} frames "
                 "per row run as one MatMul over the framed signal" + (
                     f" ({trimmed} computing only the frames their readers slice out)"
                     if trimmed else ""),) if found else ()
        return PassResult(graph=graph, modified=bool(found), notes=notes)
