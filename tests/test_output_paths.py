"""Reliability: "the input is never modified" holds for every command and every file onnxq
writes. Each case exits 2 with one line naming the problem, and every input is unchanged."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxq
from onnxq.cli import main
from onnxq.errors import OutputPathError
from tests import builders as B


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.is_symlink()}


@pytest.fixture()
def work(tmp_path):
    model = B.conv_bn_relu()
    onnx.save(model, tmp_path / "m.onnx")
    feeds = B.feeds(model, batch=4, n=1, seed=1)[0]
    np.savez(tmp_path / "calib.npz", **feeds)
    np.savez(tmp_path / "eval.npz", **feeds)
    assert main(["quantize", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), "--calib-data",
                 str(tmp_path / "calib.npz"), "--quiet"]) == 0
    return tmp_path


def _refused(argv: list[str], folder: Path, capsys, needle: str) -> None:
    before = _digest(folder)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert _digest(folder) == before  # nothing written, nothing changed
    assert not [p for p in folder.iterdir() if p.name.startswith(".onnxq-")]


def test_outputs_never_overwrite_inputs(work, capsys):
    m, q, calib, ev = (str(work / n) for n in ("m.onnx", "q.onnx", "calib.npz", "eval.npz"))
    cases = [
        ["tune", m, m, "--calib-data", calib, "--eval-data", ev, "--no-latency"],
        ["quantize", m, str(work / "new.onnx"), "--calib-data", calib, "--report", m],
        ["quantize", m, str(work / "new.onnx"), "--calib-data", calib, "--report", calib],
        ["calibrate", m, "--calib-data", calib, "-o", m],
        ["compare", m, q, "--data", ev, "--json", m],
        ["compare", m, q, "--data", ev, "--report", ev],
        ["bench", m, q, "--data", ev, "--json", q],
        ["tune", m, str(work / "t.onnx"), "--calib-data", calib, "--eval-data", ev,
         "--no-latency", "--log", calib],
    ]
    for argv in cases:
        _refused(argv, work, capsys, "never overwrites its inputs")


def test_two_outputs_to_one_file(work, capsys):
    m, calib = str(work / "m.onnx"), str(work / "calib.npz")
    out = str(work / "new.onnx")
    _refused(["quantize", m, out, "--calib-data", calib, "--report", out], work, capsys,
             "are the same file")


def test_links_to_an_input_are_the_input(work, capsys):
    m, calib = work / "m.onnx", str(work / "calib.npz")
    (work / "sym.onnx").symlink_to(m)
    os.link(m, work / "hard.onnx")
    for name in ("sym.onnx", "hard.onnx"):
        _refused(["quantize", str(m), str(work / name), "--calib-data", calib], work, capsys,
                 "never overwrites its inputs")


def test_external_data_file_of_the_input_is_an_input(tmp_path, capsys):
    model = B.conv_bn_relu()
    onnx.save_model(model, str(tmp_path / "big.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="big.data", size_threshold=0)
    np.savez(tmp_path / "calib.npz", **B.feeds(model, batch=2, n=1, seed=1)[0])
    _refused(["quantize", str(tmp_path / "big.onnx"), str(tmp_path / "big.data"), "--calib-data",
              str(tmp_path / "calib.npz")], tmp_path, capsys, "never overwrites its inputs")


def test_devices_fifos_and_folders_are_never_written(work, capsys):
    m, calib = str(work / "m.onnx"), str(work / "calib.npz")
    os.mkfifo(work / "fifo")
    for target, needle in ((str(work / "fifo"), "not a regular file"),
                           (str(work), "is a directory")):
        _refused(["quantize", m, target, "--calib-data", calib, "--quiet"], work, capsys, needle)
    # /dev/null is only checked, never handed to a command: before this check existed, running
    # as root replaced the device with a regular file.
    from onnxq.io import check_output

    with pytest.raises(OutputPathError, match="not a regular file"):
        check_output("/dev/null")
    assert Path("/dev/null").is_char_device()


def test_api_save_over_the_input_is_refused(work):
    path = work / "m.onnx"
    before = path.read_bytes()
    result = onnxq.quantize(path, B.feeds(B.conv_bn_relu(), batch=2, n=2, seed=1),
                            progress=False)
    with pytest.raises(OutputPathError, match="never overwrites its inputs"):
        result.save(path)
    assert path.read_bytes() == before
    result.save(work / "fine.onnx")


def test_a_planted_symlink_at_a_temporary_name_is_not_followed(work):
    """Temporary files used to be ``.NAME.tmp``: a symlink planted there was followed."""
    victim = work / "victim.txt"
    victim.write_text("keep me")
    (work / ".ranges.json.tmp").symlink_to(victim)
    assert main(["calibrate", str(work / "m.onnx"), "--calib-data", str(work / "calib.npz"),
                 "-o", str(work / "ranges.json"), "--quiet"]) == 0
    assert victim.read_text() == "keep me" and (work / "ranges.json").is_file()


def test_settings_that_would_be_ignored_are_refused(work, capsys):
    m, q, calib, ev = (str(work / n) for n in ("m.onnx", "q.onnx", "calib.npz", "eval.npz"))
    out = str(work / "new.onnx")
    cases = [
        (["quantize", m, out, "--calib-data", calib, "--save-fp32", str(work / "f.onnx")],
         "only apply to framework models"),
        (["quantize", m, out, "--calib-data", calib, "--opset", "17"], "--opset"),
        (["quantize", m, out, "--calib-data", calib, "--ranges", str(work / "r.json")],
         "not both"),
        (["bench", m, q, "--data", ev, "--threads", "-1"], "--threads -1"),
        (["bench", m, q, "--data", ev, "--seconds", "nan"], "positive number"),
        (["tune", m, out, "--calib-data", calib, "--eval-data", ev, "--max-drop", "-1"],
         "--max-drop -1"),
    ]
    for argv, needle in cases:
        _refused(argv, work, capsys, needle)


def test_leftovers_of_killed_runs_are_cleaned(work):
    """A run killed with -9 leaves its temporary folder; the next run removes it once its
    process is gone (and it is old enough), and never touches a live process's files."""
    import subprocess
    import sys
    import time

    from onnxq.io import clean_stale, temp_prefix

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = work / f".onnxq-{dead}-abc123xy"
    stale.mkdir()
    (stale / "m.onnx").write_bytes(b"partial")
    mine = work / f"{temp_prefix('.')}live"
    mine.mkdir()
    other = work / ".onnxq-notapid"
    other.mkdir()
    users = [work / f"onnxq-{dead}-results.csv", work / f".onnxq-{dead}-notes",
             work / f"onnxq-{dead}-abc123xy"]  # look alike, but not onnxq's temporaries
    for path in users:
        path.write_text("the user's")
    old = time.time() - 7200
    for path in (stale, mine, other, *users):
        os.utime(path, (old, old))
    young = work / f".onnxq-{dead}-young123"
    young.mkdir()
    assert clean_stale(work) == [stale]
    assert mine.exists() and other.exists() and young.exists() and not stale.exists()
    assert all(p.read_text() == "the user's" for p in users)
    # quantize to this folder cleans as it goes
    os.utime(young, (old, old))
    assert main(["quantize", str(work / "m.onnx"), str(work / "again.onnx"), "--calib-data",
                 str(work / "calib.npz"), "--quiet"]) == 0
    assert not young.exists()


def test_several_outputs_are_written_all_or_nothing(work, monkeypatch, capsys):
    """--save-fp32 used to be written before the INT8 model; now every output is staged beside
    its target and renamed together: a failure on the last one leaves none of them."""
    from onnxq.outputs import Staged

    real = Staged.text

    def full_disk(self, path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(Staged, "text", full_disk)
    before = _digest(work)
    assert main(["quantize", str(work / "m.onnx"), str(work / "new.onnx"), "--calib-data",
                 str(work / "calib.npz"), "--report", str(work / "r.json"), "--quiet"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert _digest(work) == before and not (work / "new.onnx").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".onnxq-")]
    monkeypatch.setattr(Staged, "text", real)
    assert main(["quantize", str(work / "m.onnx"), str(work / "new.onnx"), "--calib-data",
                 str(work / "calib.npz"), "--report", str(work / "r.json"), "--quiet"]) == 0
    assert (work / "new.onnx").is_file() and (work / "r.json").is_file()
