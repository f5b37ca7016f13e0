"""Is run-time (dynamic) quantization of an op's input accurate enough?

onnxruntime's DynamicQuantizeLSTM quantizes its input X to u8 on every call, with that call's
own min and max. A heavy-tailed input (raw power spectra, un-normalised features) then loses
most of its values: measured on a speaker encoder reading a power mel spectrogram, 85 % of the
inputs fell below one step and the embedding cosine against FP32 dropped to 0.72 (an
energy-weighted SQNR still read 39 dB: the loud values dominate it, so it is not the test).
This check watches those inputs during calibration, simulates exactly that quantization and
counts the values that vanish; ops losing more than ``MAX_LOST`` of them stay float.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from onnxq.calibrators.base import Calibrator
from onnxq.plan import QuantPlan
from onnxq.qtypes import TensorRange

__all__ = ["DynamicInputCheck", "MAX_LOST", "LOSSY", "keep_accurate", "dynamic_u8_loss"]

#: share of non-zero input values that may vanish (round to the zero point) at run time
MAX_LOST = 0.25
LOSSY = "its input, quantized at run time to u8"


def dynamic_u8_loss(x: np.ndarray) -> tuple[int, int]:
    """(non-zero values, of them lost) when ``x`` is quantized as DynamicQuantizeLinear does:
    u8 over [min(x, 0), max(x, 0)]; a value is lost when it lands on the zero point (its
    information is gone, whatever its size relative to the largest value)."""
    x = np.asarray(x, np.float64).ravel()
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    nonzero = int(np.count_nonzero(x))
    if hi == lo:
        return nonzero, 0
    scale = (hi - lo) / 255.0
    zp = np.clip(np.round(-lo / scale), 0, 255)
    q = np.clip(np.round(x / scale) + zp, 0, 255)
    return nonzero, int(np.count_nonzero((q == zp) & (x != 0)))


class DynamicInputCheck:
    """A calibrator wrapper: tensors of ``watch`` are measured for the dynamic check, tensors
    of ``ranged`` go on to ``inner`` (the range calibrator) as usual."""

    def __init__(self, inner: Calibrator, watch: Iterable[str], ranged: Iterable[str]) -> None:
        self.inner = inner
        self.name = inner.name
        self.watch = set(watch)
        self.ranged = set(ranged)
        self.counts: dict[str, list[int]] = {}

    def observe(self, name: str, array: np.ndarray, *, index: int | None = None) -> None:
        if name in self.watch and array.size:
            nonzero, lost = dynamic_u8_loss(array)
            acc = self.counts.setdefault(name, [0, 0])
            acc[0] += nonzero
            acc[1] += lost
        if name in self.ranged:
            self.inner.observe(name, array, index=index)

    def compute(self) -> dict[str, TensorRange]:
        # only watched tensors (every static node placed float, a dynamic LSTM left): no range
        return self.inner.compute() if self.ranged else {}

    def merge(self, other: DynamicInputCheck) -> None:
        """Add a shard's counts (and its calibrator's observations)."""
        for name, (nonzero, lost) in other.counts.items():
            acc = self.counts.setdefault(name, [0, 0])
            acc[0] += nonzero
            acc[1] += lost
        self.inner.merge(other.inner)  # type: ignore[attr-defined]

    def lost(self) -> dict[str, float]:
        """Per watched tensor: the share of its non-zero values run-time u8 would zero."""
        return {name: lost / nonzero if nonzero else 0.0
                for name, (nonzero, lost) in self.counts.items()}


def keep_accurate(plan: QuantPlan, lost: dict[str, float]) -> QuantPlan:
    """``plan`` without the dynamic nodes whose input loses more than ``MAX_LOST`` of its
    values; they are reported as kept float, with the figure."""
    lossy = {n.name: lost[n.dynamic_input] for n in plan.nodes
             if n.dynamic_input is not None and lost.get(n.dynamic_input, 0.0) > MAX_LOST}
    if not lossy:
        return plan
    reasons = tuple((name, f"{LOSSY} (onnxruntime's dynamic kernel), would zero {share:.0%} "
                           f"of its non-zero values on the calibration data (a heavy-tailed "
                           f"input); kept in float") for name, share in lossy.items())
    return dataclasses.replace(plan, nodes=tuple(n for n in plan.nodes if n.name not in lossy),
                               skipped=plan.skipped + reasons)
