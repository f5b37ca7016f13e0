"""The result types of scoring (``onnxq.score``): per-output agreement and per-tensor error.
A module of their own so that rendering (``score_render``) imports them without a cycle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["OutputStats", "OutputAgreement", "TensorError", "TensorReport"]


@dataclass(frozen=True, slots=True)
class OutputStats:
    """Agreement of one graph output over all feeds."""

    name: str
    top1_agreement: float | None  # argmax over the last axis; None for rank < 2
    cosine: float
    sqnr_db: float
    max_abs_error: float
    mean_abs_error: float
    max_error_lsb: float | None  # |error| / scale where the INT8 output comes from a DQ
    mean_error_lsb: float | None
    elements: int


@dataclass(frozen=True, slots=True)
class OutputAgreement:
    outputs: tuple[OutputStats, ...]
    feeds: int
    metric: float | None = None  # the user metric on the stacked outputs

    def __getitem__(self, name: str) -> OutputStats:
        found = next((s for s in self.outputs if s.name == name), None)
        if found is None:
            raise KeyError(f"no output {name!r}; outputs: {[s.name for s in self.outputs]}")
        return found

    @property
    def cosine(self) -> float:  # the worst output's
        return min(s.cosine for s in self.outputs)

    @property
    def top1_agreement(self) -> float | None:  # the worst output's of rank >= 2
        values = [s.top1_agreement for s in self.outputs if s.top1_agreement is not None]
        return min(values) if values else None


@dataclass(frozen=True, slots=True)
class TensorError:
    """Error of one quantized activation: FP32 value vs the INT8 model's dequantized value."""

    name: str
    sqnr_db: float
    cosine: float
    max_abs_error: float
    saturated_fraction: float  # FP32 values outside the representable range
    scale: float  # per-channel parameters: the largest scale, the first zero point
    zero_point: int
    elements: int


@dataclass(frozen=True, slots=True)
class TensorReport(Sequence):
    """``TensorError``s worst (lowest SQNR) first, as a sequence; ``missing``: quantized INT8
    tensors with no FP32 counterpart (e.g. removed by fusion) or a different shape."""

    tensors: tuple[TensorError, ...]
    missing: tuple[str, ...] = ()
    feeds: int = 0

    def __getitem__(self, index):
        return self.tensors[index]

    def __len__(self) -> int:
        return len(self.tensors)
