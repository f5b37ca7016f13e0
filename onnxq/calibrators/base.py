"""The calibrator protocol: pure numpy, no model, no session, no files."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from onnxq.qtypes import TensorRange

__all__ = ["Calibrator"]


@runtime_checkable
class Calibrator(Protocol):
    """Observes activation batches tensor by tensor and turns them into ranges.

    ``observe`` is called once per tensor per batch, in a deterministic order, with the feed's
    ``index`` (for messages naming the feed); memory must not grow with the number of
    batches. ``compute`` may be called more than once.
    """

    name: str

    def observe(self, name: str, array: np.ndarray, *, index: int | None = None) -> None: ...

    def compute(self) -> dict[str, TensorRange]: ...
