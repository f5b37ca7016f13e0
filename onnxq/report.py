"""The quantize report: what was quantized, what stayed float and why, how the graph changed."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["QuantReport", "input_notes", "stamp_float_reasons", "float_reasons",
           "FLOAT_REASONS_KEY", "COMPUTE_OPS"]

#: model metadata key: JSON {node: why it stayed float} for the compute nodes kept in float
FLOAT_REASONS_KEY = "onnxq.float_reasons"
#: the ops whose float or int8 form decides most of a model's time
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantReport:
    """What was quantized, what was skipped and why, and how the graph changed."""

    quantized: tuple[tuple[str, str], ...]   # (node, op type)
    skipped: tuple[tuple[str, str], ...]     # (node, reason)
    folded: tuple[str, ...]                  # absorbed Relu/Clip nodes
    op_histogram: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    activation_type: str = "u8"
    weight_type: str = "s8"
    per_channel: bool = True
    target: str = ""
    weight_bits: int = 8
    #: the placement's decision (``Placement.to_dict``): predicted times, float regions
    placement: dict | None = None
    #: accuracy recovery (``onnxq.recovery``): algorithm → what it did
    recovery: dict | None = None
    #: the INT8 model against FP32 on kept calibration feeds (``onnxq.self_check``)
    self_check: dict | None = None

    def summary(self) -> str:
        ops = Counter(op for _, op in self.quantized)
        lines = [f"quantized {len(self.quantized)} node(s): "
                 + ", ".join(f"{op}×{n}" for op, n in sorted(ops.items())),
                 f"types: activations {self.activation_type}, weights {self.weight_type} "
                 f"({self.weight_bits}-bit, "
                 f"{'per-channel' if self.per_channel else 'per-tensor'})"
                 + (f", target {self.target}" if self.target else "")]
        if self.folded:
            lines.append(f"absorbed {len(self.folded)} Relu/Clip into quantization ranges")
        lines.extend(self.notes)
        if self.skipped:
            lines.append(f"kept in float ({len(self.skipped)}):")
            lines.extend(f"  {node}: {reason}" for node, reason in self.skipped)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "quantized": [{"node": n, "op": o} for n, o in self.quantized],
            "skipped": [{"node": n, "reason": r} for n, r in self.skipped],
            "folded": list(self.folded),
            "op_histogram": dict(self.op_histogram),
            "activation_type": self.activation_type,
            "weight_type": self.weight_type,
            "per_channel": self.per_channel,
            "target": self.target,
            "weight_bits": self.weight_bits,
            "placement": self.placement,
            "recovery": self.recovery,
            "self_check": self.self_check,
        }


def input_notes(ranges: Mapping, calibrated: Sequence[str], before, after) -> tuple[str, ...]:
    """Report notes (and a log warning) about the data: ranges of zero width, and inputs with
    a default value that quantization turned into constants (``before``/``after``: the float
    and the quantized ``ModelProto``)."""
    wanted = set(calibrated)
    flat = sorted(t for t, r in ranges.items() if r.hi == r.lo and t in wanted)
    notes: tuple[str, ...] = ()
    if flat:
        logging.getLogger("onnxq.api").warning(
            "tensor(s) %s were constant (%s) in every calibration feed: their int8 range has "
            "no width, so other values will saturate; check the calibration data",
            ", ".join(flat[:5]), ranges[flat[0]].lo)
        notes += (f"warning: {len(flat)} tensor(s) had a zero-width calibrated range (e.g. "
                  f"{flat[0]!r}: constant in every feed); values outside it saturate — check "
                  "the calibration data",)
    kept = {i.name for i in after.graph.input}
    lost = [i.name for i in before.graph.input if i.name not in kept]
    if lost:
        notes += (f"input(s) {', '.join(lost)} had a default value (an initializer) and were "
                  "quantized as constants: feeding them no longer changes the model (exclude "
                  "their consumers with exclude_nodes to keep them overridable)",)
    return notes


def stamp_float_reasons(model, skipped: Sequence[tuple[str, str]]) -> None:
    """Record why each main-graph compute node of ``model`` stayed float (the first reason
    given for it) in its metadata, so that ``onnxq compare`` can say why without the plan."""
    compute = {n.name for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name}
    reasons: dict[str, str] = {}
    for node, why in skipped:
        if node in compute and node not in reasons:
            reasons[node] = why[:300]
    keep = [p for p in model.metadata_props if p.key != FLOAT_REASONS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    if reasons:
        model.metadata_props.add(key=FLOAT_REASONS_KEY,
                                 value=json.dumps(reasons, sort_keys=True))


def float_reasons(model) -> dict[str, str]:
    """The reasons ``stamp_float_reasons`` recorded (empty for other models)."""
    for p in model.metadata_props:
        if p.key == FLOAT_REASONS_KEY:
            try:
                value = json.loads(p.value)
            except ValueError:
                return {}
            return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
    return {}
