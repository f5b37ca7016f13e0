"""Run an INT8 model as another CPU would compute it (``onnxq compare --emulate avx2|vnni``).

onnxruntime picks its int8 kernels from the CPU it runs on: with VNNI (or AMX) u8 x s8 dot
products are exact; on AVX2-only and AVX-512-without-VNNI CPUs ``vpmaddubsw`` adds pairs of
products in int16 with saturation, so a model with full-range 8-bit weights can lose accuracy
there. ``EmulatedSession`` answers "how accurate is this model on a CPU I do not have?":

* a QDQ model is first lowered to onnxruntime's integer operators by onnxq's own
  ``QLinearLoweringPass`` (the same groups onnxruntime fuses at session creation);
* the int8 matrix products (QLinearConv, QLinearMatMul, com.microsoft QGemm and
  MatMulIntegerToFloat) run in ``onnxq.kernels.reference`` — bit-exact models of
  onnxruntime's MLAS kernels, with the int16 saturation for the saturating ISAs;
* every other node runs alone in an onnxruntime session (its own float/int8 kernels).

Slow (numpy, one session per node) but exact: on a CPU of the emulated kind the outputs match
onnxruntime's bit for bit (tests check both kinds where the machine is one of them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.errors import ConfigError, ModelError, OnnxqError
from onnxq.kernels import reference as ref
from onnxq.kernels.isa import exact_depthwise

__all__ = ["EMULATED_ISAS", "EmulatedSession", "lower_for_emulation", "full_range_weights",
           "for_target", "target_session"]

logger = logging.getLogger(__name__)

#: ISA name → whether its u8 x s8 kernels saturate pairs of products in int16.
EMULATED_ISAS: dict[str, bool] = {"avx2": True, "avx512": True, "vnni": False, "amx": False}

_MS = "com.microsoft"
_INT8 = (np.dtype(np.uint8), np.dtype(np.int8))


class _NodeSession(Protocol):
    """What ``EmulatedSession`` uses of the onnxruntime session ``make_session`` returns."""

    def run(self, output_names: Sequence[str] | None,
            input_feed: Mapping[str, np.ndarray]) -> list: ...


def lower_for_emulation(model: onnx.ModelProto) -> onnx.ModelProto:
    """The integer-operator form of ``model`` (a QDQ model is lowered, a QOperator model is
    returned as is); never modifies ``model``."""
    if not any(n.op_type == "DequantizeLinear" for n in model.graph.node):
        return model
    from onnxq.passes import CleanupPass, QLinearLoweringPass
    from onnxq.pipeline import Pipeline

    return Pipeline([QLinearLoweringPass(), CleanupPass()]).run(model).model


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv(node, v, no_vnni):
    at = _attrs(node)
    if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or len(v[3].shape) > 4:
        return None
    bias = v[8] if len(v) > 8 and v[8] is not None else None
    return [ref.qlinear_conv(*v[:8], bias, strides=at.get("strides"), pads=at.get("pads"),
                             dilations=at.get("dilations"), group=at.get("group", 1),
                             no_vnni=no_vnni)]


def _matmul(node, v, no_vnni):
    b_scale, b_zp = v[4], v[5]
    if np.ndim(b_scale) == 1 and np.size(b_scale) > 1:  # per column
        b_scale, b_zp = b_scale.reshape(1, -1), np.asarray(b_zp).reshape(1, -1)
    return [ref.qlinear_matmul(v[0], v[1], v[2], v[3], b_scale, b_zp, v[6], v[7],
                               no_vnni=no_vnni)]


def _qgemm(node, v, no_vnni):
    at = _attrs(node)
    v = list(v) + [None] * (9 - len(v))
    return [ref.qgemm(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8],
                      alpha=at.get("alpha", 1.0), trans_a=at.get("transA", 0),
                      trans_b=at.get("transB", 0), no_vnni=no_vnni)]


def _matmul_to_float(node, v, no_vnni):
    v = list(v) + [None] * (7 - len(v))
    a, b, a_scale, b_scale, a_zp, b_zp, bias = v
    b_zp = 0 if b_zp is None else b_zp
    acc = ref.matmul_accumulators(a, 0 if a_zp is None else a_zp, b, b_zp, no_vnni=no_vnni)
    scale = (np.asarray(a_scale, np.float32).reshape(()) * np.asarray(b_scale, np.float32))
    out = acc.astype(np.float32) * scale.astype(np.float32)
    if bias is not None:
        out = out + np.asarray(bias, np.float32)
    return [out.astype(np.float32)]


#: (domain, op) → (kernel, index of the activation input, index of the weight input)
_KERNELS = {("", "QLinearConv"): (_conv, 0, 3), ("", "QLinearMatMul"): (_matmul, 0, 3),
            (_MS, "QGemm"): (_qgemm, 0, 3), (_MS, "MatMulIntegerToFloat"): (_matmul_to_float, 0, 1)}


@dataclass
class _Counts:
    emulated: int = 0
    host: int = 0
    notes: list[str] = field(default_factory=list)


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads but does not define: its outer-scope captures."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(i for i in node.input if i and i not in defined)
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                used.update(n for n in _outer_names(sub) if n not in defined)
        defined.update(node.output)
    return used


def _check_emulable(model: onnx.ModelProto) -> None:
    """Integer kernels inside If/Loop/Scan bodies, and onnxruntime's dynamic LSTM, would run
    on this CPU's own kernels: refuse rather than report them as emulated."""
    from onnxq.scopes import proto_subgraphs

    integer = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm",
               "MatMulIntegerToFloat", "DynamicQuantizeLSTM"}

    def has_integer(g: onnx.GraphProto) -> bool:
        return any(n.op_type in integer for n in g.node) or any(
            has_integer(sub) for sub in proto_subgraphs(g))

    if any(n.op_type == "DynamicQuantizeLSTM" for n in model.graph.node) or any(
            has_integer(sub) for sub in proto_subgraphs(model.graph)):
        raise ModelError("this model has int8 kernels that --emulate does not model (inside "
                         "If/Loop/Scan bodies, or DynamicQuantizeLSTM): they would run with this "
                         "CPU's kernels; compare it on a machine of the target kind instead")


class EmulatedSession:
    """Duck-types ``InferenceSession.run(names, feed)`` for an INT8 model on ``isa``."""

    def __init__(self, model: onnx.ModelProto, isa: str) -> None:
        if isa not in EMULATED_ISAS:
            raise ConfigError(f"--emulate {isa!r} is not an ISA onnxq models; choose one of "
                              f"{', '.join(EMULATED_ISAS)}")
        self.isa, self.no_vnni = isa, EMULATED_ISAS[isa]
        _check_emulable(model)
        self.model = lower_for_emulation(model)
        graph = self.model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.counts = _Counts()
        self._sessions: dict[tuple, _NodeSession] = {}
        self._opsets = list(self.model.opset_import)
        if not any(o.domain == _MS for o in self._opsets):
            self._opsets.append(helper.make_opsetid(_MS, 1))

    # -- public ----------------------------------------------------------------------------
    def run(self, names: Sequence[str] | None, feed: Mapping[str, np.ndarray]) -> list:
        values: dict[str, np.ndarray | None] = dict(self.consts)
        values.update({k: np.asarray(v) for k, v in feed.items()})
        values[""] = None
        for node in self.model.graph.node:
            values.update(self._node(node, values))
        wanted = names or [o.name for o in self.model.graph.output]
        missing = [n for n in wanted if n not in values]
        if missing:
            raise ModelError(f"the emulated model does not produce {missing}")
        return [values[n] for n in wanted]

    def summary(self) -> str:
        c = self.counts
        text = (f"emulated {self.isa}: {c.emulated} int8 matrix product(s) in onnxq's reference "
                f"kernels, {c.host} other node run(s) on this CPU's onnxruntime kernels")
        return "; ".join([text, *sorted(set(c.notes))])

    # -- one node --------------------------------------------------------------------------
    def _node(self, node: onnx.NodeProto, values: dict) -> dict[str, np.ndarray]:
        kernel = _KERNELS.get((node.domain or "", node.op_type))
        if kernel is not None:
            fn, ai, wi = kernel
            v = [values.get(i) if i else None for i in node.input]
            a, w = np.asarray(v[ai]), np.asarray(v[wi])
            if a.dtype in _INT8 and w.dtype in _INT8:
                if self.no_vnni and a.dtype == np.int8:
                    self.counts.notes.append("s8 x s8 products are not modelled for "
                                             f"{self.isa}; computed exactly")
                no_vnni = self.no_vnni and a.dtype == np.uint8
                out = fn(node, v, no_vnni)
                if out is not None:
                    self.counts.emulated += 1
                    return {node.output[0]: out[0]}
            self.counts.notes.append(f"{node.op_type} with these inputs ran on this CPU")
        self.counts.host += 1
        return dict(zip([o for o in node.output if o], self._host(node, values), strict=True))

    def _host(self, node: onnx.NodeProto, values: dict) -> list:
        names = [i for i in node.input if i]
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                names += sorted(n for n in _outer_names(sub) if n in values and n not in names)
        arrays = {n: values[n] for n in names}
        key = (id(node), tuple((n, a.dtype.str, a.shape) for n, a in arrays.items()))
        sess = self._sessions.get(key)
        if sess is None:
            sess = self._sessions[key] = self._build(node, arrays)
        feeds = {n: a for n, a in arrays.items() if n not in self.consts}
        return sess.run(None, feeds)

    def _build(self, node: onnx.NodeProto, arrays: Mapping[str, np.ndarray]) -> _NodeSession:
        from onnxq.runtime import make_session

        inputs, inits = [], []
        for name, arr in arrays.items():
            if name in self.consts:
                inits.append(numpy_helper.from_array(arr, name))
            else:
                elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
                inputs.append(helper.make_tensor_value_info(name, elem, arr.shape))
        outputs = [onnx.ValueInfoProto(name=o) for o in node.output if o]
        graph = helper.make_graph([node], f"emulate_{node.op_type}", inputs, outputs, inits)
        model = helper.make_model(graph, opset_imports=self._opsets,
                                  ir_version=self.model.ir_version)
        return make_session(model.SerializeToString(), threads=1, optimize=None)


#: the weight inputs of the run-time-quantized int8 ops (u8 x s8 products, same saturation)
_DYNAMIC_WEIGHTS = {("", "MatMulInteger"): (1,), (_MS, "DynamicQuantizeMatMul"): (1,),
                    (_MS, "QAttention"): (1,), (_MS, "DynamicQuantizeLSTM"): (1, 2)}


def _depthwise(conv: onnx.NodeProto, weight: onnx.TensorProto | None) -> bool:
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    return weight is not None and exact_depthwise(tuple(weight.dims), group)


def full_range_weights(model: onnx.ModelProto) -> list[str]:
    """Signed 8-bit weights of int8 matrix products that use more than 7 bits: the tensors
    whose u8 x s8 products can saturate on a CPU without VNNI (``vpmaddubsw``). Depthwise
    convs' weights are not among them: their kernels are exact everywhere."""
    consts = {t.name: t for t in model.graph.initializer}
    weights: set[str] = set()
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    depthwise: set[str] = set()  # exact on every CPU (``exact_depthwise``)
    for node in model.graph.node:
        kernel = _KERNELS.get((node.domain or "", node.op_type))
        dynamic = _DYNAMIC_WEIGHTS.get((node.domain or "", node.op_type), ())
        weights.update(node.input[i] for i in dynamic if i < len(node.input))
        if kernel is not None and len(node.input) > kernel[2]:
            weights.add(node.input[kernel[2]])
            if node.op_type == "QLinearConv" and _depthwise(node, consts.get(node.input[3])):
                depthwise.add(node.input[3])
        elif node.op_type == "DequantizeLinear" and any(
                r.op_type in ("Conv", "MatMul", "Gemm") and r.input[1:2] == [node.output[0]]
                for r in readers.get(node.output[0], [])):
            weights.add(node.input[0])
            if all(r.op_type == "Conv" and _depthwise(r, consts.get(node.input[0]))
                   for r in readers[node.output[0]]):
                depthwise.add(node.input[0])
    wide = []
    for name in sorted(weights - depthwise):
        t = consts.get(name)
        if t is not None and t.data_type == onnx.TensorProto.INT8:
            w = numpy_helper.to_array(t)
            if w.size and (w.min() < -64 or w.max() > 63):
                wide.append(name)
    return wide


def target_session(int8: onnx.ModelProto, threads: int = 0):
    """A session computing what ``int8``'s target CPU computes, on this CPU (``tune``'s
    built-in metrics score with it: a ``vnni`` model tuned on an AVX2 machine is scored as a
    VNNI CPU runs it, not with this CPU's saturating kernels)."""
    from onnxq.runtime import make_session

    return for_target(int8, make_session(int8, threads=threads))[0]


def for_target(int8: onnx.ModelProto, session) -> tuple[object, str | None]:
    """The session that computes what the model's target CPU computes (``session`` or another),
    and the kind it emulates (None: ``session`` itself).

    Where this CPU's u8 x s8 kernels saturate pairs of products in int16 and the target's do
    not (or the other way round), a model with full 8-bit weights gives other outputs here
    than on its target: the self-check, ``auto``'s calibrator choice made from it, and
    ``tune``'s scores would depend on the machine quantizing. For an exact target
    onnxruntime's own exact kernels run it (``make_session(exact_int8=True)``: every int8 op,
    dynamic ones included); for a saturating target from an exact CPU, onnxq's reference
    kernels (``EmulatedSession``). With weights within 7 bits both kinds compute the same and
    ``session`` is kept."""
    from onnxq.config_resolve import TARGET_KEY
    from onnxq.kernels.isa import host_target, target_of
    from onnxq.runtime import make_session

    target = next((p.value for p in int8.metadata_props if p.key == TARGET_KEY), None)
    try:
        saturates = target_of(target).saturates if target else None
    except OnnxqError:
        return session, None
    if saturates is None or saturates == target_of(host_target()).saturates or \
            not full_range_weights(int8):
        return session, None
    if not saturates:
        del session
        return make_session(int8, exact_int8=True), "vnni"
    try:
        emulated = EmulatedSession(int8, "avx2")
    except OnnxqError:  # int8 kernels in subgraphs: the CPU's own results stand
        return session, None
    del session
    return emulated, "avx2"
