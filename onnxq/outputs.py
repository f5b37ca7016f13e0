"""Every file onnxq writes: path checks against what a command reads, temporaries named after
their process (so a killed run's leftovers are recognised and cleaned), and ``Staged`` outputs
that are written beside their targets and renamed together, all or nothing."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import onnx

from onnxq.errors import OutputPathError

__all__ = ["check_output", "check_outputs", "same_file", "model_files", "write_text_atomic",
           "temp_prefix", "clean_stale", "Staged"]


def check_output(path: str | os.PathLike, *, what: str = "output") -> Path:
    """``path`` as a file onnxq may write: its folder exists, it is not a folder, and if it
    exists it is a regular file (never a device, FIFO or socket such as /dev/null)."""
    dest = Path(path)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{what} folder {str(parent)!r} does not exist; create it first "
                         "(mkdir -p)")
    if dest.is_dir():
        raise OutputPathError(f"{what} path {str(dest)!r} is a directory; give a file name")
    if dest.exists() and not dest.is_file():
        raise OutputPathError(f"{what} path {str(dest)!r} exists and is not a regular file (a "
                         "device, FIFO or socket); onnxq only writes regular files: choose "
                         "another path")
    return dest


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same file (symlinks and hard links included)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def model_files(path: str | os.PathLike) -> list[Path]:
    """The files reading model ``path`` touches: the file (or folder) itself and, for ONNX,
    its external-data files."""
    src = Path(path)
    files = [src]
    if src.is_file() and src.suffix.lower() == ".onnx":
        try:
            light = onnx.load_model(str(src), load_external_data=False)
        except Exception:  # noqa: BLE001 - unreadable: load_model reports it properly later
            return files
        for t in light.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                loc = next((e.value for e in t.external_data if e.key == "location"), None)
                if loc and (src.parent / loc) not in files:
                    files.append(src.parent / loc)
    return files


def check_outputs(outputs: dict[str, str | os.PathLike | None],
                  inputs: Sequence[str | os.PathLike | None]) -> dict[str, Path]:
    """Check every output path (``check_output``) against every input and every other output:
    onnxq never writes over a file it reads, nor writes two outputs to one file."""
    checked: dict[str, Path] = {}
    for what, path in outputs.items():
        if path is None:
            continue
        dest = check_output(path, what=what)
        for src in inputs:
            if src is not None and same_file(dest, src):
                raise OutputPathError(f"{what} {str(dest)!r} is a file onnxq reads ({str(src)!r}); "
                                 "it never overwrites its inputs: choose another file name")
        for other, earlier in checked.items():
            if same_file(dest, earlier):
                raise OutputPathError(f"{what} and {other} are the same file {str(dest)!r}; give "
                                 "each output its own path")
        checked[what] = dest
    return checked


def write_text_atomic(path: str | os.PathLike, text: str | bytes) -> Path:
    """Write ``text`` to ``path`` through a private temporary beside it, then rename; on failure
    nothing is left behind and an existing file is unchanged."""
    with Staged() as staged:
        dest = staged.text(path, text)
        staged.commit()
    return dest


# -- temporaries: named after their process, so a killed run's leftovers can be recognised ------
_TEMP = re.compile(r"^(?:\.onnxq-|\.?onnxq-(?:calib|score|export|session|check)-)(\d+)-[a-z0-9_]{8}(?:\.tmp)?$")


def temp_prefix(dot: str = "", kind: str = "") -> str:
    """``.onnxq-<pid>-`` (or ``onnxq-<kind>-<pid>-``): the owner of a temporary is visible."""
    return f"{dot}onnxq-{kind + '-' if kind else ''}{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its files alone
    return True


def clean_stale(folder: str | os.PathLike, *, min_age: float = 3600.0) -> list[Path]:
    """Remove onnxq temporaries in ``folder`` whose process is gone (a run killed with -9)
    and that are older than ``min_age`` seconds (a process of another PID namespace sharing
    the folder looks dead too); returns what was removed. Other names are never touched."""

    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or entry.is_symlink() or _alive(int(m.group(1))):
            continue
        try:
            if time.time() - entry.stat().st_mtime < min_age:
                continue
        except OSError:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


class Staged:
    """Outputs written to private temporary folders beside their targets, then renamed into
    place together by ``commit``; leaving the ``with`` block without ``commit`` (an error,
    Ctrl-C) removes every temporary, so no output is left half-done."""

    def __init__(self) -> None:
        self._dirs: list[tuple[Path, Path]] = []  # (temporary folder, target folder)
        self.committed = False

    def folder_for(self, dest: Path) -> Path:
        """A new temporary folder beside ``dest``: what is written in it lands in
        ``dest.parent`` at commit."""
        parent = dest.parent if str(dest.parent) else Path(".")
        clean_stale(parent)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix("."), dir=parent))
        self._dirs.append((tmp, parent))
        return tmp

    def text(self, path: str | os.PathLike, data: str | bytes) -> Path:
        dest = check_output(path)
        tmp = self.folder_for(dest) / dest.name
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return dest

    def commit(self) -> None:
        for tmp, parent in self._dirs:
            for item in sorted(tmp.iterdir()):
                os.replace(item, parent / item.name)
        self.committed = True
        self._cleanup()

    def _cleanup(self) -> None:
        for tmp, _ in self._dirs:
            shutil.rmtree(tmp, ignore_errors=True)
        self._dirs.clear()

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cleanup()  # after commit there is nothing left; without it, nothing is kept
