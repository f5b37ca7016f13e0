"""Value types shared by every layer: quantized data types, ranges and parameters."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from onnxq.errors import CalibrationError

__all__ = ["QType", "TensorRange", "QParams", "QTYPES"]


class QType(enum.Enum):
    """An integer type a tensor is quantized to."""

    U8 = "u8"
    S8 = "s8"
    S32 = "s32"

    @property
    def numpy(self) -> type[np.integer]:
        table: dict[QType, type[np.integer]] = {
            QType.U8: np.uint8, QType.S8: np.int8, QType.S32: np.int32}
        return table[self]

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.numpy).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.numpy).max)

    @classmethod
    def parse(cls, text: str) -> QType:
        aliases = {"u8": cls.U8, "uint8": cls.U8, "s8": cls.S8, "int8": cls.S8, "s32": cls.S32}
        try:
            return aliases[str(text).lower()]
        except KeyError:
            raise ValueError(f"unknown quantized type {text!r}; use 'u8' or 's8'") from None


@dataclass(frozen=True, slots=True)
class TensorRange:
    """The real-valued range [lo, hi] a tensor is expected to take."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            raise CalibrationError(
                f"range [{self.lo}, {self.hi}] is not finite; check the calibration data for "
                "NaN/Inf values"
            )
        if self.lo > self.hi:
            raise CalibrationError(f"range [{self.lo}, {self.hi}] has lo > hi")

    def to_dict(self) -> dict[str, float]:
        return {"min": float(self.lo), "max": float(self.hi)}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> TensorRange:
        return cls(float(data["min"]), float(data["max"]))


@dataclass(frozen=True, slots=True, eq=False)
class QParams:
    """Scale and zero point (per tensor, or per channel along ``axis``)."""

    scale: np.ndarray
    zero_point: np.ndarray
    qtype: QType
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def same_as(self, other: QParams) -> bool:
        return (
            self.qtype is other.qtype
            and self.axis == other.axis
            and self.scale.shape == other.scale.shape
            and bool(np.array_equal(self.scale, other.scale))
            and bool(np.array_equal(self.zero_point, other.zero_point))
        )


#: The types a user may choose for activations and weights (``--activation-type``,
#: ``weight.dtype``): name → ``QType``. Read-only.
QTYPES: Mapping[str, QType] = MappingProxyType({"u8": QType.U8, "s8": QType.S8})
