"""The calibration runner: onnxruntime on a copy of the model with the planned tensors as
extra outputs, one batch at a time, streamed into a calibrator (memory does not grow with
the number of batches)."""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import pickle
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxq.calibrators.base import Calibrator
from onnxq.distributed import Cluster
from onnxq.errors import CalibrationError
from onnxq.io import clean_stale, external_copy, temp_prefix
from onnxq.outputs import model_files
from onnxq.qtypes import TensorRange
from onnxq.runtime import (
    InputSpec,
    check_feed,
    check_finite,
    feed_label,
    input_specs,
    make_session,
)
from onnxq.scopes import tensor_bytes

__all__ = ["collect_ranges", "collect_ranges_spilling", "FeedObserver", "SPILL_BYTES"]

logger = logging.getLogger(__name__)


def collect_ranges(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    data: Iterable[Mapping[str, np.ndarray]],
    calibrator: Calibrator,
    *,
    max_samples: int | None = None,
    progress: bool = True,
    allow_nonfinite: bool = False,
    partial: bool = False,
    folder: Path | None = None,
    cluster: Cluster | None = None,
) -> dict[str, TensorRange]:
    """Run ``model`` on every feed of ``data`` and return the calibrator's range per tensor.

    Tensors inside If/Loop/Scan bodies are observed too. A tensor that no feed reached (an If
    branch the data never takes, a body that never ran, a body onnxq cannot observe) is an
    error, or, with ``partial=True``, simply absent from the result.

    With a ``cluster`` (``onnxq.distributed``), blocks of feeds run on Ray workers, each into
    a fresh copy of ``calibrator``; the copies are merged into ``calibrator`` in feed order.
    The min/max and histogram calibrators merge exactly, so the ranges are byte-identical to
    a one-process run whatever the number of workers."""
    if isinstance(data, Mapping):
        raise CalibrationError("calibration data must be an iterable of feeds (dicts), not a "
                               "single dict; wrap it in a list: [feed]")
    names = list(tensors)
    specs = input_specs(model)
    clean_stale(tempfile.gettempdir())
    feeds = _checked_feeds(data, specs, max_samples, allow_nonfinite)
    with contextlib.ExitStack() as stack:
        tmp = folder or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix=temp_prefix(kind="calib"))))
        # Basic optimizations only: values exactly as the graph defines them, no pre-packed
        # weight copies (the session lives only for this run).
        path, carriers = external_copy(model, names, Path(tmp), data_name="calibration.bin")
        ordered = sorted(carriers, key=names.index)
        bar = stack.enter_context(_bar(data, max_samples, progress))
        if cluster is not None:
            seen, count = _observe_sharded(path, ordered, carriers, feeds, calibrator, cluster,
                                           bar)
        else:
            seen, count = _observe_here(FeedObserver({}, str(path), ordered, [
                carriers[n] for n in ordered], _template(calibrator)), feeds, calibrator, bar)
    return _finish(calibrator, seen, count, names, partial)


def _template(calibrator: Calibrator, *, sharding: bool = False) -> bytes:
    """The empty calibrator, pickled, if it can merge (else b""). In one process, a chain
    holding a part that stops work once it has seen enough (``STREAM_ONLY``: the Gram
    matrices) is not split into blocks: each block would start that work again."""
    if not callable(getattr(calibrator, "merge", None)):
        return b""
    part: object = calibrator
    while part is not None:
        if not getattr(part, "mergeable", True) or (
                not sharding and getattr(part, "STREAM_ONLY", False)):
            return b""
        part = getattr(part, "inner", None)
    try:
        return pickle.dumps(calibrator)
    except (pickle.PicklingError, TypeError, AttributeError):
        return b""


def _observe_here(observer: FeedObserver, feeds, calibrator: Calibrator, bar
                  ) -> tuple[set[str], int]:
    """In this process. A mergeable calibrator sees the feeds in the same blocks, merged in
    the same order, as on workers, so one process and any number of workers agree exactly
    (sums of floats included)."""
    seen: set[str] = set()
    count = 0
    if not observer.template:
        for index, feed in feeds:
            seen |= observer.observe(calibrator, index, feed)
            count += 1
            bar.update(1)
        return seen, count
    for (block,) in _blocks(feeds):
        part, reached, done = observer.observe_block(block)
        calibrator.merge(part)  # type: ignore[attr-defined]
        seen |= reached
        count += done
        bar.update(done)
    return seen, count


def _blocks(feeds) -> Iterator[tuple[list]]:
    return iter(lambda: (list(itertools.islice(feeds, BLOCK_FEEDS)),), ([],))


class FeedObserver:
    """Runs the calibration model on feeds and hands the tensors to a calibrator: in this
    process, or built once in each Ray worker (``files``: name → bytes written to its own
    temporary folder, the model first)."""

    def __init__(self, files: Mapping[str, bytes], model: str, names: Sequence[str],
                 outputs: Sequence[str], template: bytes = b"") -> None:
        self.names, self.outputs, self.template = list(names), list(outputs), template
        if files:
            folder = Path(tempfile.mkdtemp(prefix=temp_prefix(kind="shard")))
            for name, content in files.items():
                (folder / name).write_bytes(content)
            model = str(folder / next(iter(files)))
        try:
            self.session = make_session(model, optimize=False, threads=1 if files else 0)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many private types
            raise CalibrationError(
                f"onnxruntime cannot run this model for calibration: {_first_line(exc)}; "
                "check that onnxruntime supports every op (custom domains need their "
                "library) and that the model is valid (onnx.checker)") from None

    def observe(self, calibrator: Calibrator, index: int, feed: Mapping) -> set[str]:
        """Run one (checked) feed; the names of the tensors it reached."""
        try:
            arrays = self.session.run(self.outputs, dict(feed))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many private types
            raise CalibrationError(
                f"onnxruntime failed on {feed_label(feed, index)}: {_first_line(exc)}; "
                "check that this feed matches the model (shapes, batch size, value "
                "ranges such as token ids)") from None
        seen = set()
        for name, array in zip(self.names, arrays if self.names else [], strict=True):
            if array.size:  # empty: the branch holding it did not run on this feed
                calibrator.observe(name, array, index=index)
                seen.add(name)
        return seen

    def observe_block(self, block: Sequence[tuple[int, Mapping]]
                      ) -> tuple[Calibrator, set[str], int]:
        """A block of feeds into a fresh copy of the template calibrator (in a worker)."""
        calibrator = pickle.loads(self.template)
        seen: set[str] = set()
        for index, feed in block:
            seen |= self.observe(calibrator, index, feed)
        return calibrator, seen, len(block)


#: feeds per call to a worker: fixed, so the partial results (and how they merge) do not
#: depend on the number of workers
BLOCK_FEEDS = 4
#: sharded calibration ships the calibration model to every worker
MAX_SHIPPED_BYTES = 1 << 30


def _observe_sharded(path: Path, names: list[str], carriers: dict[str, str], feeds,
                     calibrator: Calibrator, cluster: Cluster, bar) -> tuple[set[str], int]:
    from onnxq.distributed import WorkerPool, connected

    if not callable(getattr(calibrator, "merge", None)):
        raise CalibrationError(f"the {calibrator.name!r} calibrator has no merge(); sharded "
                               "calibration needs one (or run without --workers)")
    files = [path, *(f for f in model_files(path) if f != path)]
    if sum(f.stat().st_size for f in files) > MAX_SHIPPED_BYTES:
        raise CalibrationError("sharded calibration ships the model to every worker, and "
                               "this one is over 1 GiB; calibrate it in one process (drop "
                               "--workers)")
    template = _template(calibrator, sharding=True)
    if not template:
        raise CalibrationError(f"the {calibrator.name!r} calibrator cannot be split into "
                               "shards (it cannot be pickled, or its result depends on the "
                               "order of the feeds, as a moving average does); run without "
                               "--workers")
    make = functools.partial(FeedObserver, {f.name: f.read_bytes() for f in files}, "", names,
                             [carriers[n] for n in names], template)
    seen: set[str] = set()
    count = 0
    with connected(cluster) as ray, WorkerPool(ray, make, cluster.workers) as pool:
        for part, reached, done in pool.imap("observe_block", _blocks(feeds)):
            calibrator.merge(part)  # type: ignore[attr-defined]
            seen |= reached
            count += done
            bar.update(done)
    return seen, count


def _checked_feeds(data, specs: list[InputSpec], max_samples: int | None,
                   allow_nonfinite: bool) -> Iterator[tuple[int, Mapping]]:
    for index, feed in enumerate(data):
        if max_samples is not None and index >= max_samples:
            break
        feed = check_feed(feed, specs, index)
        if not allow_nonfinite:
            check_finite(feed, index)
        yield index, feed


def _bar(data, max_samples: int | None, progress: bool):
    from tqdm.auto import tqdm

    total = len(data) if hasattr(data, "__len__") else None
    if max_samples is not None and total is not None:
        total = min(total, max_samples)
    return tqdm(total=total, desc="calibrating", unit="feed", disable=not progress,
                leave=False)


def _finish(calibrator: Calibrator, seen: set[str], count: int, wanted: list[str],
            partial: bool) -> dict[str, TensorRange]:
    if count == 0:
        raise CalibrationError("calibration data is empty: give at least one feed (a dict of "
                               "input name -> numpy array)")
    absent = [n for n in wanted if n not in seen]
    ranges = calibrator.compute() if seen else {}
    if absent and not partial:
        raise CalibrationError(
            f"no values were observed for tensor(s) {absent[:5]}: they are inside an If "
            "branch or a loop body that no calibration feed ran; add feeds that take it, or "
            "keep its nodes in float (exclude_nodes)")
    logger.info("calibrated %d tensors on %d feeds", len(ranges), count)
    return ranges


#: prepared models at least this large wait on disk while onnxruntime calibrates them
SPILL_BYTES = 1 << 28


def collect_ranges_spilling(box: list[onnx.ModelProto], tensors: Sequence[str], data,
                            calibrator: Calibrator, **options) -> tuple[dict[str, TensorRange],
                                                                        onnx.ModelProto]:
    """``collect_ranges`` for the model in ``box``, which the caller hands over (the list is
    emptied). A large model is written to a temporary folder and dropped from memory while
    onnxruntime runs it (its weights are then held once, by onnxruntime, not twice), and is
    loaded back afterwards; the model returned is the one to go on with."""
    model = box.pop()
    if sum(tensor_bytes(t) for t in model.graph.initializer
           if t.data_location != onnx.TensorProto.EXTERNAL) < SPILL_BYTES:
        return collect_ranges(model, tensors, data, calibrator, **options), model
    clean_stale(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix=temp_prefix(kind="calib")) as tmp:
        path = Path(tmp) / "prepared.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="prepared.bin",
                        size_threshold=4096)
        del model
        gc.collect()  # the IR of the planning step held references to the weights
        light = onnx.load(str(path), load_external_data=False)
        ranges = collect_ranges(light, tensors, data, calibrator, folder=Path(tmp), **options)
        del light
        # loaded whole: its folder goes away (load_model could leave weights in that file)
        return ranges, onnx.load_model(str(path), load_external_data=True)


def _first_line(exc: BaseException) -> str:
    """onnxruntime's message without its multi-line stack (one line for the CLI)."""
    text = " ".join(str(exc).split())
    return text[:400] + ("…" if len(text) > 400 else "")
