"""Calibration files are read header first and lazily, with bounded memory: a header that
claims terabytes is refused before any data is read, a compressed file that inflates 1000x is
only decompressed as far as the feeds used, corrupt headers are clean errors."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from onnxq.data import load_feeds
from onnxq.errors import CalibrationError


def _npz_with_header(path, shape: tuple[int, ...]) -> None:
    """A one-member .npz whose .npy header claims ``shape`` (float32) but holds 16 bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", buf.getvalue() + b"\0" * 16)


def test_a_header_claiming_terabytes_is_refused_before_reading(tmp_path):
    _npz_with_header(tmp_path / "huge.npz", (1 << 20, 3, 1024, 1024))  # 3.6 TiB of float32
    with pytest.raises(CalibrationError, match=r"claim 12288\.0 GiB|more than this machine"):
        load_feeds(tmp_path / "huge.npz")


def test_compressed_data_is_read_only_as_far_as_needed(tmp_path, monkeypatch):
    x = np.zeros((4000, 3, 32, 32), np.float32)  # 49 MB of zeros, ~50 KB compressed
    np.savez_compressed(tmp_path / "bomb.npz", x=x)
    read = {"bytes": 0}
    real = zipfile.ZipExtFile.read

    def counting(self, n=-1):
        data = real(self, n)
        read["bytes"] += len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting)
    feeds = iter(load_feeds(tmp_path / "bomb.npz", batch=2))
    first, second = next(feeds), next(feeds)
    assert first["x"].shape == (2, 3, 32, 32) and second.source == "bomb.npz, samples 2-3"
    assert read["bytes"] < 200_000  # two feeds (49 KB), not 49 MB


def test_streamed_feeds_equal_the_arrays(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 3, 4)).astype(np.float32)
    b = rng.integers(0, 9, (7, 2)).astype(np.int64)
    f = np.asfortranarray(rng.standard_normal((7, 5)).astype(np.float32))
    np.savez_compressed(tmp_path / "d.npz", a=a, b=b, f=f)
    feeds = list(load_feeds(tmp_path / "d.npz", batch=3))
    assert [len(x["a"]) for x in feeds] == [3, 3, 1]
    for name, ref in (("a", a), ("b", b), ("f", f)):
        np.testing.assert_array_equal(np.concatenate([x[name] for x in feeds]), ref)


@pytest.mark.parametrize("header", [b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,",
                                    b"{'descr': '|O', 'fortran_order': False, 'shape': (2,), }",
                                    b"not a dict at all"])
def test_corrupt_or_object_headers_are_clean_errors(tmp_path, header):
    raw = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as zf:
        zf.writestr("x.npy", raw + b"\0" * 32)
    with pytest.raises(CalibrationError, match="cannot read calibration file"):
        list(load_feeds(tmp_path / "bad.npz"))


def test_an_encrypted_member_is_a_clean_error(tmp_path):
    """Found by the mutation fuzzer: a flipped flag bit marks a member encrypted, and
    zipfile's RuntimeError ("password required") was a traceback."""
    np.savez(tmp_path / "ok.npz", x=np.zeros((2, 3), np.float32))
    raw = bytearray((tmp_path / "ok.npz").read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # local header flag at +6, central at +8
        at = raw.find(sig)
        raw[at + (6 if sig == b"PK\x03\x04" else 8)] |= 0x1
    (tmp_path / "enc.npz").write_bytes(bytes(raw))
    with pytest.raises(CalibrationError, match="encrypted"):
        list(load_feeds(tmp_path / "enc.npz"))
