"""The ``auto`` calibration method's choice: the min/max model or the percentile one.

``quantize`` builds the model with min/max ranges, and with ``calibration.method = "auto"``
(the default) the same plan with the percentile ranges measured in the same calibration run
(``calibrators.auto``). Both run on the calibration feeds the self-check keeps; the percentile
model is kept when its error against FP32 (1 − cosine, per feed, averaged over the outputs) is
at most ``RATIO`` of the min/max model's. Measured on three zoo models, this error on the
calibration feeds ranked the two the same way as each model's task metric on its own
evaluation data: EfficientNet-Lite0 (0.0022 → 0.0012; top-1 agreement 92.9 → 95.0 %),
PP-OCRv4 rec (0.027 → 0.0093; exact-match drop 0.67 → 0.33), NudeNet (0.00017 → 0.00078;
box F1 92.5 → 87.5, min/max kept).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import onnx

from onnxq import self_check

__all__ = ["RATIO", "MAX_CHECK_MACS", "second", "work", "error", "choose", "finish"]

R = TypeVar("R")

#: the percentile model must have at most this share of the min/max model's error: a clear
#: gain, not noise of a few feeds
RATIO = 0.8
#: multiply-accumulates the first comparison may take (FP32 and the min/max model on the kept
#: feeds) before the second is skipped: a slow model keeps min/max rather than doubling the
#: wait. About 30 s of FP32 on a 2-core AVX-512 host. Counted from the shapes, not timed, so
#: that the choice, and the output, are the same on every machine
MAX_CHECK_MACS = 1.5e12
#: the ops counted: they hold nearly all of a model's arithmetic
_COUNTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def second(alternative: Mapping | None, feeds: Sequence, model: self_check.Source
           ) -> Mapping | None:
    """The percentile ranges to try, or None: no second candidate (not ``auto``, nothing to
    calibrate), no kept feed to compare on, or weights too large to hold a second model."""
    if not alternative or not feeds:
        return None
    return alternative if self_check.weight_bytes(model) <= self_check.MAX_WEIGHT_BYTES else None


def work(model: self_check.Source, feeds: Sequence[Mapping[str, np.ndarray]]) -> float:
    """Multiply-accumulates of the first comparison: one FP32 and one int8 pass of the main
    graph's Conv/ConvTranspose/Gemm/MatMul per feed, at each feed's shapes (0 when the
    shapes cannot be inferred: the comparison runs)."""
    from onnxq.placement.shapes import feed_shapes

    if not isinstance(model, onnx.ModelProto):
        model = self_check.skeleton(model) or onnx.load(os.fspath(model),
                                                        load_external_data=False)
    total, by_shape = 0.0, {}  # feeds of one shape are counted once
    for feed in feeds:
        key = tuple(sorted((k, np.shape(v)) for k, v in feed.items()))
        if key not in by_shape:
            by_shape[key] = _macs(model, feed_shapes(model, dict(key)))
        total += by_shape[key]
    return 2.0 * total


def _macs(model: onnx.ModelProto, shapes: Mapping[str, tuple]) -> float:
    total = 0.0
    for node in model.graph.node:
        if node.op_type not in _COUNTED or len(node.input) < 2:
            continue
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        y = shapes.get(node.output[0])
        if a is None or b is None or y is None or not a or not b:
            continue
        if node.op_type == "ConvTranspose":  # each input element meets a c_out/g × kernel
            total += math.prod(a) * math.prod(b[1:])
        elif node.op_type == "Conv":  # each output element sums c_in/g × kernel
            total += math.prod(y) * math.prod(b[1:])
        else:  # a product's output element sums K terms
            trans = any(x.name == "transA" and x.i for x in node.attribute)
            total += math.prod(y) * (a[-2] if trans and len(a) > 1 else a[-1])
    return total


def error(found: Mapping) -> float | None:
    """Mean over outputs of 1 − (mean cosine over feeds); None when the check did not run."""
    outputs = found.get("outputs") or {}
    if not outputs:
        return None
    return float(np.mean([1.0 - v.get("mean_cosine", 0.0) for v in outputs.values()]))


def choose(result: R, alternative: Callable[[], R], fp32: self_check.Source,
           graph: self_check.Source, feeds: Sequence[Mapping[str, np.ndarray]]
           ) -> tuple[R, dict]:
    """``result`` (min/max ranges) or ``alternative()`` (percentile), whichever is closer to
    FP32 on ``feeds``, with a report note saying which and why; and the chosen model's
    self-check (so it is not run again)."""
    memo: dict = {}  # FP32 runs once
    other = alternative()  # first: building it frees the prepared model before any session
    first = self_check.check(fp32, result.model, feeds, graph=graph,  # type: ignore[attr-defined]
                             memo=memo)
    base, macs = error(first), work(graph, feeds)
    if base is None or macs > MAX_CHECK_MACS:
        why = (first.get("skipped", "no output could be compared") if base is None else
               f"checking the min/max model needs {macs / 1e9:.3g} G multiply-accumulates, "
               f"over the {MAX_CHECK_MACS / 1e9:.3g} G allowed; --calibrator percentile builds "
               "the other")
        return _noted(result, f"calibration auto: min/max ranges (the comparison did not "
                              f"run: {why})"), first
    second = self_check.check(fp32, other.model, feeds, graph=graph,  # type: ignore[attr-defined]
                              memo=memo)
    alt = error(second)
    how = f" (int8 products as a {first['emulated']} CPU computes them, emulated)" \
        if first.get("emulated") else ""
    figures = (f"error against FP32 (1 - cosine) on {first['feeds']} calibration feed(s){how}: "
               f"min/max {base:.3g}, percentile {alt if alt is None else f'{alt:.3g}'}")
    if alt is not None and alt <= RATIO * base and base > 0.0:
        return _noted(other, f"calibration auto: percentile ranges chosen; {figures}",
                      "percentile"), second
    return _noted(result, f"calibration auto: min/max ranges kept; {figures}"), first


def _noted(result: R, note: str, method: str = "minmax") -> R:
    """``result`` with ``note`` in its report and the method that made it in its config (the
    saved config reproduces the model)."""
    report = result.report  # type: ignore[attr-defined]
    config = result.config.with_overrides(calibrator=method)  # type: ignore[attr-defined]
    return dataclasses.replace(  # type: ignore[type-var]
        result, config=config, report=dataclasses.replace(report, notes=report.notes + (note,)))


def finish(result: R, fp32: self_check.Source, graph, feeds: Sequence[Mapping[str, np.ndarray]],
           alternative: Mapping | None, build: Callable[..., R], openvino: bool) -> R:
    """The end of ``quantize``: the ``auto`` choice (``alternative``: the percentile ranges),
    then ``self_check.finish`` (for OpenVINO with its u8 rebuild of the chosen ranges).
    ``build(ranges, consume, config=None)`` materializes the plan with other ranges."""
    found = None
    if alternative:
        result, found = choose(result, lambda: build(alternative, not openvino), fp32, graph,
                               feeds)
    elif result.config.calibration.method == "auto":  # type: ignore[attr-defined]
        result = dataclasses.replace(  # type: ignore[type-var]
            result, config=result.config.with_overrides(  # type: ignore[attr-defined]
                calibrator="minmax"))
    rebuild = (lambda: build(result.ranges, False,  # type: ignore[attr-defined]
                             result.config.with_overrides(  # type: ignore[attr-defined]
                                 activation_symmetric=False))) if openvino else None
    return self_check.finish(result, fp32, graph, feeds, rebuild, found)
