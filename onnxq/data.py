"""Calibration data from files: a folder of ``.npz`` feeds, or one ``.npz`` whose arrays share
a leading sample axis. Feeds are read lazily, one at a time, with bounded memory:

* every ``.npy`` header inside an ``.npz`` is read (and its size checked against the memory
  this machine has) before any data is decompressed;
* a single ``.npz`` split into feeds is streamed: each array member is decompressed only as
  far as the feeds used so far need (``--max-samples 2`` reads two feeds' worth, whatever the
  file's size);
* pickled objects are refused (``allow_pickle=False`` semantics).
"""

from __future__ import annotations

import itertools
import os
import tokenize
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import numpy as np

from onnxq.errors import CalibrationError

__all__ = ["Feed", "NpzFeeds", "load_feeds", "peek_shapes"]

_READ_ERRORS = (OSError, ValueError, zipfile.BadZipFile, EOFError, tokenize.TokenError,
                SyntaxError, KeyError, NotImplementedError, OverflowError, MemoryError)


class Feed(dict):
    """A feed (input name → array) that knows where it came from, so messages can name the
    file (``sample_004.npz``) rather than a position."""

    __slots__ = ("source",)

    def __init__(self, arrays: dict, source: str) -> None:
        super().__init__(arrays)
        self.source = source


def _memory_budget() -> int:
    """Bytes one feed file may claim: half the physical memory (or 8 GiB if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _bad(path: Path, exc: BaseException | str) -> CalibrationError:
    return CalibrationError(f"cannot read calibration file {str(path)!r}: {exc}; it must be an "
                            ".npz written by numpy.savez (input name -> array)")


class _Member:
    """One array of an ``.npz``: its header, and a sequential reader of its rows."""

    def __init__(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
        self.zf, self.info, self.path = zf, info, path
        self.name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        with zf.open(info) as fh:
            self.shape, self.fortran, self.dtype = self._header(fh)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._stream: IO[bytes] | None = None
        self._row = 0

    def _header(self, fh: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        if dtype.hasobject:
            raise _bad(self.path, f"array {self.name!r} holds Python objects (pickles are "
                                  "refused)")
        return tuple(int(d) for d in shape), bool(fortran), np.dtype(dtype)

    def read_all(self) -> np.ndarray:
        with self.zf.open(self.info) as fh:
            self._header(fh)
            data = fh.read(self.nbytes + 1)
        if len(data) != self.nbytes:
            raise _bad(self.path, f"array {self.name!r} is truncated")
        flat = np.frombuffer(data, self.dtype)
        shaped = flat.reshape(self.shape, order="F") if self.fortran else flat.reshape(self.shape)
        return shaped.copy()

    def read_rows(self, start: int, count: int) -> np.ndarray:
        """Rows ``start .. start+count-1`` of the leading axis, read sequentially."""
        if self.fortran:  # rows are not contiguous: read once (still bounded by the budget)
            return self.read_all()[start:start + count]
        if self._stream is None or start < self._row:
            self._stream = self.zf.open(self.info)
            self._header(self._stream)
            self._row = 0
        row_bytes = self.nbytes // max(self.shape[0], 1)
        self._stream.read((start - self._row) * row_bytes)
        count = min(count, self.shape[0] - start)
        data = self._stream.read(count * row_bytes)
        self._row = start + count
        if len(data) != count * row_bytes:
            raise _bad(self.path, f"array {self.name!r} is truncated")
        return np.frombuffer(data, self.dtype).reshape((count, *self.shape[1:])).copy()


def _members(path: Path) -> tuple[zipfile.ZipFile, list[_Member]]:
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if path.suffix.lower() == ".npy" or magic == b"\x93NUMPY":
        raise CalibrationError(
            f"{str(path)!r} holds one array without an input name (a .npy); save feeds "
            "as .npz with input names: numpy.savez('calib.npz', input_name=array)")
    try:
        zf = zipfile.ZipFile(path)
        encrypted = [info.filename for info in zf.infolist() if info.flag_bits & 0x1]
        if encrypted:
            raise _bad(path, f"member {encrypted[0]!r} is encrypted (numpy never writes that)")
        members = [_Member(zf, info, path) for info in zf.infolist()]
    except CalibrationError:
        raise
    except _READ_ERRORS as exc:
        raise _bad(path, exc) from None
    total = sum(m.nbytes for m in members)
    if total > _memory_budget():
        raise _bad(path, f"its arrays claim {total / 2**30:.1f} GiB, more than this machine "
                         "can hold; split the data into a folder of smaller .npz feeds")
    return zf, members


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    zf, members = _members(path)
    with zf:
        try:
            return {m.name: m.read_all() for m in members}
        except CalibrationError:
            raise
        except _READ_ERRORS as exc:
            raise _bad(path, exc) from None


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
        self.files: list[Path] = []
        self.members: list[_Member] | None = None
        if self.path.is_dir():
            self.files = sorted(self.path.glob("*.npz"))
            if not self.files:
                raise CalibrationError(f"calibration folder {str(self.path)!r} holds no .npz "
                                       "files (each file is one feed: input name -> array)")
            self._len = len(self.files)
        else:
            self._zip, self.members = _members(self.path)
            self._samples = self._split_length(self.members)
            self._len = -(-self._samples // self.batch)

    def _split_length(self, members: list[_Member]) -> int:
        if not members:
            raise CalibrationError(f"calibration file {str(self.path)!r} holds no arrays")
        lengths = {m.name: (m.shape[0] if m.shape else None) for m in members}
        if None in lengths.values() or len(set(lengths.values())) != 1:
            raise CalibrationError(
                f"arrays in {str(self.path)!r} must share a leading sample axis to be split "
                f"into feeds; got leading sizes {lengths}. Save one feed per file in a folder "
                "instead")
        n = next(iter(lengths.values()))
        assert n is not None  # every array has a leading axis: None was rejected just above
        if n == 0:
            raise CalibrationError(f"calibration file {str(self.path)!r} has 0 samples")
        return n

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Feed]:
        if self.members is None:
            for f in self.files:
                yield Feed(_read_npz(f), f.name)
            return
        for i in range(self._len):
            start = i * self.batch
            try:
                part = {m.name: m.read_rows(start, self.batch) for m in self.members}
            except CalibrationError:
                raise
            except _READ_ERRORS as exc:
                raise _bad(self.path, exc) from None
            n = len(next(iter(part.values())))
            yield Feed(part, f"{self.path.name}, samples {start}-{start + n - 1}")


def load_feeds(path: str | Path, *, batch: int = 1) -> NpzFeeds:
    return NpzFeeds(path, batch=batch)


def peek_shapes(data):
    """The input shapes of the first feed of ``data`` (for the cost model), and ``data`` to
    iterate in full (an iterator gets its first feed back in front)."""
    if data is None or isinstance(data, Mapping):
        return None, data
    if isinstance(data, (list, tuple)):
        first = data[0] if data else None
    else:
        it = iter(data)
        if it is not data:  # a re-iterable: peek on a fresh iterator
            first = next(it, None)
        else:
            first = next(it, None)
            data = data if first is None else itertools.chain([first], it)
    if not isinstance(first, Mapping):
        return None, data
    return {k: tuple(np.shape(v)) for k, v in first.items()}, data
