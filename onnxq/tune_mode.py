"""The mode step of ``tune``: for a model whose quantized compute is all MatMul/Gemm (an encoder,
an MLP, a recurrent net), dynamic mode (int8 weights, activations quantized at run time) is one
more trial. It is kept when it meets the accuracy target and measures faster than the static
choice in the same interleaved timing, or when no static model was good enough. A model with
convolutions stays static: dynamic mode keeps every Conv float (``docs/transformers.md``)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from onnxq.errors import ModelError
from onnxq.tune_runner import Outcome, Spec, score_all
from onnxq.tune_types import Trial

if TYPE_CHECKING:
    from onnxq.tune import _Search

__all__ = ["mode_pass", "DYNAMIC", "NOISE"]

logger = logging.getLogger(__name__)

DYNAMIC = "dynamic mode (run-time activation scales)"
#: the dynamic model must be this much faster than the static one to replace it: one
#: interleaved timing on a shared machine does not separate closer figures
NOISE = 1.03


def _matmul_only(s: _Search) -> bool:
    fused, plan = s.prepared(s.config)
    ops = {n.name: n.op_type for n in fused.model.graph.node}
    anchors = [ops.get(n.name) for n in plan.nodes if n.op in ("Conv", "ConvTranspose",
                                                                "MatMul", "Gemm")]
    return bool(anchors) and all(op in ("MatMul", "Gemm") for op in anchors)


def _dynamic_trial(s: _Search) -> Trial | None:
    from onnxq.api import quantize

    start = time.monotonic()
    try:
        result = quantize(s.model, config=s.config.with_overrides(mode="dynamic"),
                          progress=False)
    except ModelError as exc:  # nothing dynamic mode can quantize: not a trial
        logger.info("dynamic mode not tried: %s", exc)
        return None
    outcome = Outcome(Spec(DYNAMIC, "-", s.config.weight.per_channel, ()),
                      model=result.model, seconds=time.monotonic() - start)
    score_all([outcome], s.evaluate, s.pool)
    return s.record(outcome)


def mode_pass(s: _Search, chosen: Trial | None) -> Trial | None:
    """``chosen`` (the static choice, or None), or the dynamic trial where it is better."""
    if s.config.mode != "static" or s.out_of_budget() or not _matmul_only(s):
        return chosen
    t = _dynamic_trial(s)
    if t is None:
        return chosen
    if not t.meets_target:
        t.decision += "; rejected"
        return chosen
    from onnxq.score import measure_latency

    models = {"fp32": s.fp32, "dynamic": s.models[t.index]}
    if chosen is not None:
        models["static"] = s.models[chosen.index]
    times = measure_latency(models, s.latency_feed or s.calib[0], threads=s.target.threads,
                            min_seconds=1.5)
    t.latency_ratio = times["fp32"] / times["dynamic"]
    if chosen is not None:  # re-timed beside the dynamic model: one run, one comparison
        chosen.latency_ratio = times["fp32"] / times["static"]
        if times["static"] <= NOISE * times["dynamic"] or not s.target.latency:
            t.decision += "; not faster than the static choice"
            return chosen
    elif s.target.latency and t.latency_ratio < 1.0:
        t.decision += "; slower than FP32"
        return None
    t.decision += ("; faster than the static choice" if chosen is not None
                   else "; no static model met the target")
    return t
