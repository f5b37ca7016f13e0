"""The op-handler table: how each operator's inputs and outputs are quantized.

Handlers only *declare*; ``onnxq/plan.py`` decides and ``InsertQDQPass`` materializes.
Roles:

* ``ANCHOR`` — compute ops with an int8 kernel in onnxruntime (QLinearConv, QGemm,
  QLinearMatMul / MatMulIntegerToFloat). Always quantized when supported.
* ``ELECTIVE`` — ops with an int8 kernel (QLinearAdd, QLinearConcat, QLinearAveragePool …) that
  are quantized only when all their inputs are already int8, so they never add a conversion.
* ``SHARED`` — data movement; runs on int8 with its input's parameters (onnxruntime drops the
  Q/DQ around it when both sides share parameters).
* ``FOLD`` — Relu and Clip(0, x): absorbed into the producer's output quantization range.
* ``DYNAMIC`` — recurrent ops with a dynamic-quantization kernel (LSTM → onnxruntime's
  DynamicQuantizeLSTM): int8 weights offline, activations quantized by the kernel per run.
* ``WEIGHT_ONLY`` — ops with no int8 kernel whose constant weights are stored int8 behind a
  DequantizeLinear (Gather on an embedding table: the DequantizeLinear follows the Gather).

The table is a read-only mapping; extend it by copying into a new dict.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G

__all__ = ["Role", "OpHandler", "HANDLERS", "OPENVINO_HANDLERS", "zero_padding", "pads_channels", "weight_axis", "FLOAT_ONLY", "filter_bank_reason", "spectrum_reason", "openvino_residual",
           "FILTER_BANK_TAPS"]


class Role(enum.Enum):
    ANCHOR = "anchor"
    ELECTIVE = "elective"
    SHARED = "shared"
    FOLD = "fold"
    DYNAMIC = "dynamic"
    WEIGHT_ONLY = "weight_only"


@dataclass(frozen=True, slots=True, kw_only=True)
class OpHandler:
    role: Role
    #: indices of data inputs (activations or constants); None = every input
    data_inputs: tuple[int, ...] | None = (0,)
    #: input holding a weight that may be quantized per channel
    weight_input: int | None = None
    #: input holding a bias that becomes int32 (scale = input scale × weight scale)
    bias_input: int | None = None
    #: True when onnxruntime only fuses the op with a QuantizeLinear on its output
    output_required: bool = False
    #: number of leading outputs that are data (rest: e.g. MaxPool indices)
    data_outputs: int | None = 1
    domain_min_opset: int = 10


def weight_axis(node: gs.Node, weight_ndim: int) -> int | None:
    """The output-channel axis of ``node``'s weight, or None when only per-tensor works."""
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":  # [Cin, Cout/group, k...]: axis 1 is Cout only for group 1
        return 1 if int(node.attrs.get("group", 1)) == 1 else None
    if node.op == "Gemm":
        return 0 if int(node.attrs.get("transB", 0)) else 1
    if node.op == "MatMul":
        return 1 if weight_ndim == 2 else None
    return None


_A = Role.ANCHOR
_E = Role.ELECTIVE
_S = Role.SHARED

HANDLERS: MappingProxyType[str, OpHandler] = MappingProxyType({
    "Conv": OpHandler(role=_A, data_inputs=(0, 1), weight_input=1, bias_input=2,
                      output_required=True),
    "Gemm": OpHandler(role=_A, data_inputs=(0, 1), weight_input=1, bias_input=2),
    "MatMul": OpHandler(role=_A, data_inputs=(0, 1), weight_input=1),
    "Add": OpHandler(role=_E, data_inputs=(0, 1), output_required=True),
    "Mul": OpHandler(role=_E, data_inputs=(0, 1), output_required=True),
    "Concat": OpHandler(role=_E, data_inputs=None, output_required=True),
    "AveragePool": OpHandler(role=_E, output_required=True),
    "GlobalAveragePool": OpHandler(role=_E, output_required=True),
    "Sigmoid": OpHandler(role=_E, output_required=True),
    "LeakyRelu": OpHandler(role=_E, output_required=True),
    "Softmax": OpHandler(role=_E, output_required=True, domain_min_opset=13),
    # No int8 kernel in onnxruntime, but both decompose exactly into int8 ops it has:
    # HardSigmoid(x) = clip(a·x + b, 0, 1) is a QLinearAdd of x read at scale a·s plus b,
    # saturated by a [0, 1] output range; HardSwish(x) = x · HardSigmoid(x) adds a QLinearMul.
    "HardSigmoid": OpHandler(role=_E, output_required=True),
    "HardSwish": OpHandler(role=_E, output_required=True),
    "MaxPool": OpHandler(role=_S),
    "Reshape": OpHandler(role=_S),
    "Transpose": OpHandler(role=_S),
    "Flatten": OpHandler(role=_S),
    "Squeeze": OpHandler(role=_S),
    "Unsqueeze": OpHandler(role=_S),
    "Resize": OpHandler(role=_S),
    "Split": OpHandler(role=_S, data_outputs=None),
    "Slice": OpHandler(role=_S),
    "Relu": OpHandler(role=Role.FOLD),
    "Clip": OpHandler(role=Role.FOLD),
    "LSTM": OpHandler(role=Role.DYNAMIC, weight_input=1),
    "Gather": OpHandler(role=Role.WEIGHT_ONLY, data_inputs=(0,), weight_input=0),
    "GRU": OpHandler(role=Role.WEIGHT_ONLY, weight_input=1),
    "RNN": OpHandler(role=Role.WEIGHT_ONLY, weight_input=1),
})

#: Ops only the OpenVINO EP runs on int8 (``annotate(inputs_only=True)``):
#: - a Pad before a conv (TF-style "same" padding) keeps the quantizer above it, where
#:   OpenVINO folds the padding into the int8 conv (measured on EfficientNet-Lite0: a float Pad
#:   and an unfused quantizer after it cost half the int8 speed-up);
#: - ConvTranspose, which onnxruntime's CPU EP has no int8 kernel for, runs int8 there with
#:   an activation after it fused (PP-OCR det's upsampling head with its Sigmoid: 1.65 + 1.0
#:   ms float against 1.2 ms int8 at 480x480); its float bias stays float
OPENVINO_HANDLERS: MappingProxyType[str, OpHandler] = MappingProxyType({
    "Pad": OpHandler(role=_S, data_inputs=(0,)),
    "ConvTranspose": OpHandler(role=_A, data_inputs=(0, 1), weight_input=1),
})

#: Ops that onnxruntime's CPU EP has no int8 kernel for: quantizing them would only add a
#: DequantizeLinear/QuantizeLinear pair, so they stay float (reported as skipped).
FLOAT_ONLY: MappingProxyType[str, str] = MappingProxyType({
    "ConvTranspose": "onnxruntime's CPU EP has no int8 ConvTranspose kernel (measured: DQ → "
                     "float ConvTranspose → Q); kept in float",
    "Pad": "onnxruntime does not fuse Pad on int8 (DQ → Pad → Q stays float); kept in float",
    "LayerNormalization": "normalization stays float for accuracy",
    "Erf": "GELU/Erf stays float for accuracy",
    "Gelu": "GELU stays float for accuracy",
})


#: a Conv reading one channel with a 1-D kernel of at least this many taps is a filter bank
FILTER_BANK_TAPS = 64
#: ops that make a spectrum's magnitude (or compress it) from a filter bank's output
MAGNITUDE_OPS = frozenset({"Pow", "Sqrt", "Log", "Abs", "ReduceSumSquare", "ReduceL1",
                           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp"})
#: linear ops and data movement a bank's output may pass on its way to a magnitude
_LINEAR_OPS = frozenset({"Reshape", "Transpose", "Slice", "Unsqueeze", "Squeeze", "Flatten",
                         "Concat", "Split", "Pad", "Neg", "Identity", "Cast", "Gather",
                         "Add", "Sub", "Mul", "Div", "ReduceSum", "ReduceMean", "Conv",
                         "MatMul", "Gemm", "Expand", "Tile"})
#: how far (nodes) the search for a magnitude goes
_MAGNITUDE_SEARCH = 512


def _feeds_magnitude(conv: gs.Node) -> str | None:
    """The op that turns ``conv``'s output into a magnitude (Sqrt, Log, Pow, Abs, a square
    ``Mul(x, x)`` …) through linear ops and data movement only; None when a nonlinearity
    (ReLU, a sigmoid …) comes first, as after a learned front end."""
    frontier, seen = list(conv.outputs), set[int]()
    while frontier and len(seen) < _MAGNITUDE_SEARCH:
        tensor = frontier.pop(0)
        for user in tensor.outputs:
            if id(user) in seen:
                continue
            seen.add(id(user))
            if user.op in MAGNITUDE_OPS:
                return user.op
            if user.op == "Mul" and len(user.inputs) == 2 and user.inputs[0] is user.inputs[1]:
                return "Mul(x, x)"
            if user.op in _LINEAR_OPS:
                frontier.extend(user.outputs)
    return None


def filter_bank_reason(conv: gs.Node) -> str | None:
    """Why ``conv`` stays float when it is the FIR filter bank of a spectrum on a raw signal:
    it reads one channel (group 1) with a 1-D kernel of at least ``FILTER_BANK_TAPS`` taps
    ([out, 1, k], [out, 1, k, 1] or [out, 1, 1, k]; never a depthwise or a 2-D kernel) and its
    output reaches a magnitude (``_feeds_magnitude``) before any nonlinearity. Rounding then
    swamps the quiet bins the magnitude (and the log after it) keeps (measured: Basic Pitch's
    CQT front end, 1.5 pt note F1). A learned raw-waveform front end (a bank followed by a
    ReLU, as in CREPE) is quantized like any conv: measured on CREPE full, no accuracy change
    and 2.1× → 2.9× FP32 on the CPU EP, 1.24× → 1.6× on the OpenVINO EP."""
    shape = G.constant_shape(conv.inputs[1]) if len(conv.inputs) > 1 else None
    if shape is None or len(shape) < 3 or shape[1] != 1 or int(conv.attrs.get("group", 1)) != 1:
        return None
    spatial = [d for d in shape[2:] if d != 1]
    if len(spatial) != 1 or spatial[0] < FILTER_BANK_TAPS:
        return None
    magnitude = _feeds_magnitude(conv)
    if magnitude is None:
        return None
    return (f"the FIR filter bank of a spectrum on a raw signal (one input channel, "
            f"{spatial[0]} taps, its output reaches {magnitude}): int8 rounding swamps the "
            "quiet bins the magnitude keeps (measured: a CQT front end, 1.5 pt drop); kept in "
            "float")


#: ops that compress a spectrum's dynamic range (the log of a log spectrogram)
COMPRESSION_OPS = frozenset({"Log", "ReduceLogSum", "ReduceLogSumExp"})
#: what a spectrum may pass between its transform and the compression: linear ops, data
#: movement, magnitudes and the clamps that floor them (``Max(eps, x)`` before a ``Log``)
_SPECTRUM_OPS = (_LINEAR_OPS | MAGNITUDE_OPS | {"Max", "Min", "Clip", "AveragePool",
                                                "GlobalAveragePool"}) - COMPRESSION_OPS


def _exponent(node: gs.Node) -> float | None:
    """The power ``node`` raises its input to (a square ``Mul(x, x)`` 2, ``Sqrt`` 0.5, ``Pow``
    by a constant scalar), or None."""
    if node.op == "Mul" and len(node.inputs) == 2 and node.inputs[0] is node.inputs[1]:
        return 2.0
    if node.op == "Sqrt":
        return 0.5
    if node.op == "Pow" and len(node.inputs) == 2:
        value = G.constant_value(node.inputs[1])
        if value is not None and value.size == 1 and np.isfinite(value).all():
            return float(value.ravel()[0])
    return None


def _magnitude_above(node: gs.Node) -> tuple[str, float] | None:
    """The magnitude (its name and power) ``node``'s activation input descends from through
    data movement and linear ops with constants only (a mel filter bank's MatMul over |X|):
    never through another transform (Conv, MatMul, Gemm), a nonlinearity, or a divisor (an
    RMS norm's √ divides: a normalization, not a spectrum)."""
    frontier = [t for t in node.inputs[:1] if G.constant_value(t) is None]
    seen: set[int] = set()
    while frontier and len(seen) < _MAGNITUDE_SEARCH:
        producer = G.producer(frontier.pop(0))
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        exponent = _exponent(producer)
        if exponent is not None and exponent > 0:
            return ("Mul(x, x)" if producer.op == "Mul" else producer.op), exponent
        if producer.op in MAGNITUDE_OPS - COMPRESSION_OPS:
            return producer.op, 1.0
        if producer.op in _LINEAR_OPS - {"Conv", "MatMul", "Gemm"}:
            data = producer.inputs[:1] if producer.op == "Div" else producer.inputs
            frontier += [t for t in data if G.constant_value(t) is None]
    return None


def _log_spectrum(node: gs.Node) -> str | None:
    """"<magnitude> → <compression>" when ``node``'s output reaches a compression through
    ``_SPECTRUM_OPS`` only, with a magnitude (a square, ``Pow``, ``Sqrt``, ``Abs`` …) on the
    way; None when a nonlinearity (ReLU, a sigmoid …) comes first. A compression is a ``Log``
    (``COMPRESSION_OPS``) or powers whose product falls below 1 after the magnitude: a power-law
    compressed spectrum (BirdNET's mel energies squared, then ``Pow`` 0.23), where |x| itself,
    √(re² + im²), is not one. A transform that reads a magnitude (``_magnitude_above``: a mel
    filter bank over |X|) has it on the way from the start."""
    above = _magnitude_above(node) if node.op in ("MatMul", "Gemm", "Conv") else None
    magnitude0, power0 = above or ("", 1.0)
    frontier = [(t, magnitude0, power0) for t in node.outputs]
    seen: set[tuple[int, str, float]] = set()
    while frontier and len(seen) < _MAGNITUDE_SEARCH:
        tensor, magnitude, power = frontier.pop(0)
        for user in tensor.outputs:
            if (id(user), magnitude, power) in seen:
                continue
            seen.add((id(user), magnitude, power))
            if user.op in COMPRESSION_OPS:
                if magnitude:
                    return f"{magnitude} → {user.op}"
                continue
            exponent = _exponent(user)
            if exponent is not None and power * exponent <= 0.0:
                continue  # a reciprocal (an RMS norm's rsqrt): a normalization, not a spectrum
            if exponent is not None and magnitude and power * exponent < 1.0 - 1e-6:
                return f"{magnitude} → {user.op} (overall power {power * exponent:.3g})"
            if exponent is not None or user.op in MAGNITUDE_OPS:
                found = magnitude or (f"{user.op}({exponent:g})" if user.op == "Pow"
                                      else "Mul(x, x)" if user.op == "Mul" else user.op)
                frontier.extend((o, found, power * (exponent or 1.0)) for o in user.outputs)
            elif user.op in _SPECTRUM_OPS:
                frontier.extend((o, magnitude, power) for o in user.outputs)
    return None


def spectrum_reason(node: gs.Node) -> str | None:
    """Why ``node`` stays float when it computes a spectrum: a raw signal's FIR filter bank
    (``filter_bank_reason``), or any Conv/MatMul/Gemm whose output is squared (or otherwise
    made a magnitude) and then log-compressed before any nonlinearity, such as a DFT written as
    a pointwise conv over framed samples. The log keeps the quiet bins' relative precision,
    which int8's linear grid does not have: measured on DNSMOS (speechmos 0.0.1.1), whose STFT
    is a 1×1 conv over 320-sample frames, int8 there gave MOS errors of 1.2–1.8 on a 1–5 scale
    and no rank correlation with FP32."""
    if node.op == "Conv" and (why := filter_bank_reason(node)):
        return why
    if node.op not in ("Conv", "MatMul", "Gemm"):
        return None
    found = _log_spectrum(node)
    if found is None:
        return None
    return (f"the transform of a compressed spectrum (its output reaches {found} through "
            "linear ops and magnitudes only, or it reads that magnitude): int8 rounding "
            "swamps the quiet bins the compression keeps; kept in float")


#: single-input data movement an embedding lookup may pass before an Add
_MOVES = frozenset({"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Slice", "Expand", "Cast",
                    "Identity", "Flatten"})


def table_lookup(t: gs.Tensor) -> bool:
    """``t`` is rows of a constant table (an embedding ``Gather``, maybe reshaped)."""
    for _ in range(8):
        p = G.producer(t)
        if p is None or not p.inputs:
            return False
        if p.op == "Gather":
            return G.constant_shape(p.inputs[0]) is not None
        if p.op not in _MOVES:
            return False
        t = p.inputs[0]
    return False


#: consumers that normalize what they read (they run in float on the OpenVINO EP)
_NORMALIZING = frozenset({"LayerNormalization", "SimplifiedLayerNormalization",
                          "SkipLayerNormalization", "Softmax", "LogSoftmax",
                          "InstanceNormalization", "GroupNormalization"})


def openvino_residual(node: gs.Node, acts: list[gs.Tensor]) -> bool:
    """``node`` (an Add of two activations) is a residual sum whose inputs the OpenVINO EP
    wants int8 (it fuses the sum into the int8 convs around it; measured on ResNet-style
    CNNs), not one of the Adds that keep float inputs:
    - a sum read by a normalization or Softmax (a transformer's residual stream before its
      LayerNorm, the attention mask before Softmax): per-tensor int8 flattens the stream's
      outlier channels (MiniLM: cosine 0.92 against 0.99 with them float) and OpenVINO runs
      these in float anyway, so int8 inputs only add conversions (1.9x against 2.6x FP32);
    - a sum of embedding lookups (``table_lookup``): onnxruntime-openvino 1.24.1's compiler
      crashed on MiniLM's (AddTransformation, "index '0' out of range");
    - a sum of squares or one read by a magnitude (re² + im² → Sqrt in an STFT front end):
      not a residual, and int8 there swamps the quiet bins (Silero VAD: 5.9 pt)."""
    if node.op != "Add" or len(acts) != 2 or any(table_lookup(t) for t in acts):
        return False
    readers = {c.op for o in node.outputs for c in o.outputs}
    decomposed_norm = {"ReduceMean", "Sub"} <= readers  # x - mean(x): a LayerNorm, spelt out
    squares = any(getattr(G.producer(t), "op", "") == "Pow" for t in acts)
    return not (readers & (_NORMALIZING | MAGNITUDE_OPS) or decomposed_norm or squares)


def clip_bounds(node: gs.Node) -> tuple[float | None, float | None] | None:
    """(min, max) of a Clip node when they are constants; None when they are not."""
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return node.attrs.get("min"), node.attrs.get("max")
    bounds: list[float | None] = []
    for idx in (1, 2):
        if len(node.inputs) > idx and node.inputs[idx].name:
            value = G.constant_value(node.inputs[idx])
            if value is None:
                return None
            bounds.append(float(value))
        else:
            bounds.append(None)
    return bounds[0], bounds[1]


def zero_padding(node: gs.Node) -> bool:
    """A Pad that adds zeros, or repeats its edge: int8 keeps it exact (0 is on the grid)."""
    if node.op != "Pad":
        return True
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    value = G.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name \
        else np.zeros(1)
    return mode in ("edge", "reflect") or (value is not None and not np.any(value))


def pads_channels(node: gs.Node) -> bool:
    """A ``Pad`` whose constant pads widen the batch or channel axis (a TFLite residual
    widening 16 → 32 channels, as in MediaPipe's face models); False for spatial padding and
    for pads unknown before run time."""
    if node.op != "Pad":
        return False
    pads = node.attrs.get("pads") if "pads" in node.attrs else (  # an attribute before opset 11
        G.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None)
    if pads is None or len(node.inputs) > 3 and node.inputs[3].name:  # axes given: unknown
        return False
    pads = np.asarray(pads).reshape(2, -1)
    return pads.shape[1] >= 2 and bool(np.any(pads[:, :2]))
