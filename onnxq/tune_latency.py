"""The latency step of ``tune``: a chosen model slower than FP32 gets groups of nodes whose
int8 form measures slower put back to float while that helps; one still slower is given up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxq.config import QuantConfig
from onnxq.quant_ops import Role
from onnxq.tune_types import Trial

if TYPE_CHECKING:
    from onnxq.tune import _Search

__all__ = ["latency_pass"]


def _latency_groups(s: _Search, config: QuantConfig) -> dict[str, list[str]]:
    from onnxq.quant_ops import FLOAT_ONLY

    fused, plan = s.prepared(config)
    graph = fused.model.graph
    quantized = {n.name: n for n in plan.nodes}
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    depthwise, near_float, elementwise = [], [], []
    for n in graph.node:
        if n.name not in quantized:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if n.op_type == "Conv" and group > 1:
            depthwise.append(n.name)
        touches = [producers.get(i) for i in n.input] + [r for o in n.output
                                                         for r in readers.get(o, [])]
        if any(t is not None and t.op_type in FLOAT_ONLY for t in touches):
            near_float.append(n.name)
        if quantized[n.name].role is Role.ELECTIVE:
            elementwise.append(n.name)
    groups = {"depthwise convs float": depthwise, "ops next to float-only ops float":
              near_float, "elementwise int8 ops float": elementwise}
    return {k: v for k, v in groups.items() if v}


def _speed(s: _Search, trial: Trial) -> float:
    from onnxq.score import measure_latency

    feed = s.latency_feed or s.calib[0]
    times = measure_latency({"fp32": s.fp32, "int8": s.models[trial.index]}, feed,
                            threads=s.target.threads, min_seconds=1.0)
    trial.latency_ratio = times["fp32"] / times["int8"]
    return trial.latency_ratio


def latency_pass(s: _Search, chosen: Trial) -> Trial | None:
    """Make the choice at least as fast as FP32, or give it up (None)."""
    if _speed(s, chosen) >= 1.0:
        return chosen
    chosen.decision += "; slower than FP32"
    for recipe, nodes in _latency_groups(s, s.config).items():
        if s.out_of_budget():
            break
        t = s.run(recipe, chosen.calibrator, chosen.per_channel,
                  tuple(dict.fromkeys(chosen.float_nodes + tuple(nodes))), chosen.recovery)
        if t.meets_target and _speed(s, t) > (chosen.latency_ratio or 0):
            t.decision += "; faster, kept"
            chosen = t
            assert t.latency_ratio is not None  # _speed(s, t) in the condition just set it
            if t.latency_ratio >= 1.0:
                return chosen
        else:
            t.decision += "; rejected"
    return chosen if (chosen.latency_ratio or 0) >= 1.0 else None
