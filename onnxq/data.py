"""Calibration data from files: a folder of ``.npz`` feeds, or one ``.npz`` whose arrays share
a leading sample axis. Feeds are read lazily, one at a time."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from onnxq.errors import CalibrationError

__all__ = ["Feed", "NpzFeeds", "load_feeds"]


class Feed(dict):
    """A feed (input name → array) that knows where it came from, so messages can name the
    file (``sample_004.npz``) rather than a position."""

    __slots__ = ("source",)

    def __init__(self, arrays: dict, source: str) -> None:
        super().__init__(arrays)
        self.source = source


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a .npy: one array, no input name
            raise CalibrationError(
                f"{str(path)!r} holds one array without an input name (a .npy); save feeds "
                "as .npz with input names: numpy.savez('calib.npz', input_name=array)")
        with data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"cannot read calibration file {str(path)!r}: {exc}; it must "
                               "be an .npz written by numpy.savez") from None


class NpzFeeds:
    """An iterable of feeds (dict input name → array) with a known length."""

    def __init__(self, path: str | Path, *, batch: int = 1) -> None:
        self.path = Path(path)
        if batch < 1:
            raise CalibrationError(f"calibration batch size must be >= 1, got {batch}")
        self.batch = batch
        if not self.path.exists():
            raise CalibrationError(f"calibration data {str(self.path)!r} does not exist; give "
                                   "a folder of .npz feeds or one .npz file")
        if self.path.is_dir():
            self.files = sorted(self.path.glob("*.npz"))
            if not self.files:
                raise CalibrationError(f"calibration folder {str(self.path)!r} holds no .npz "
                                       "files (each file is one feed: input name -> array)")
            self.arrays: dict[str, np.ndarray] | None = None
            self._len = len(self.files)
        else:
            self.files = []
            self.arrays = _read_npz(self.path)
            self._len = self._split_length(self.arrays)

    def _split_length(self, arrays: dict[str, np.ndarray]) -> int:
        if not arrays:
            raise CalibrationError(f"calibration file {str(self.path)!r} holds no arrays")
        lengths = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
        if None in lengths.values() or len(set(lengths.values())) != 1:
            raise CalibrationError(
                f"arrays in {str(self.path)!r} must share a leading sample axis to be split "
                f"into feeds; got leading sizes {lengths}. Save one feed per file in a folder "
                "instead")
        n = next(iter(lengths.values()))
        assert n is not None  # every array has a leading axis: None was rejected just above
        if n == 0:
            raise CalibrationError(f"calibration file {str(self.path)!r} has 0 samples")
        return -(-n // self.batch)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Feed]:
        if self.arrays is None:
            for f in self.files:
                yield Feed(_read_npz(f), f.name)
            return
        for i in range(self._len):
            sl = slice(i * self.batch, (i + 1) * self.batch)
            part = {k: v[sl] for k, v in self.arrays.items()}
            n = len(next(iter(part.values())))
            yield Feed(part, f"{self.path.name}, samples {sl.start}-{sl.start + n - 1}")


def load_feeds(path: str | Path, *, batch: int = 1) -> NpzFeeds:
    return NpzFeeds(path, batch=batch)
