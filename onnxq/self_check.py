"""The INT8 model checked against FP32 on the calibration feeds it was made from.

Range calibration makes every tensor fit its int8 grid, but a model can still come out wrong
for its data: an output that is a small residual of large intermediate values (found by the
fuzz suite: a conv loop pooled to 1/60 of its spread, cosine 0.93 against FP32 with every range
right), an accumulation of rounding over many layers, a layer whose weights cancel. No rule
predicts all of these (a rule on the pooled signal-to-noise ratio was tried and could not
tell a 0.93 case from a 0.995 one). So ``quantize`` measures: it keeps up to ``FEEDS``
calibration feeds (at most ``MAX_BYTES``), runs both models on them once it is done and
records each output's agreement in the report. An output below ``FLOOR`` is a warning that
names it, the figure and the fix (``onnxq tune``, which finds the nodes to keep float, or
returns FP32). It never fails ``quantize``: a check that cannot run says why in the report.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import onnx

from onnxq.errors import PassError
from onnxq.memory import release
from onnxq.recovery.stats import KeepFeeds, keep_feeds

__all__ = ["FEEDS", "FLOOR", "MAX_BYTES", "keep", "check", "warning", "attach", "finish"]

R = TypeVar("R")

#: calibration feeds kept for the check (a uniform sample of the stream), and the bytes they
#: may take
FEEDS = 16
MAX_BYTES = 64 << 20
#: float weights above which the check is skipped: it would hold them in an onnxruntime session
#: beside the INT8 model (a 2.27 GB model peaked at 3.4 GB instead of quantize's own 2.9 GB)
MAX_WEIGHT_BYTES = 1 << 30
#: initializers of up to this many elements keep their values in a ``skeleton``
KEPT_VALUES = 4096
#: cosine against FP32, per output and feed, below which the report warns: a model there is
#: likely wrong, not merely degraded (measured on nine zoo models' calibration feeds: task
#: outputs at 0.970-1.0; a VAD's LSTM state outputs at 0.80-0.86 are named; the fuzz suite's
#: residual models at 0.84-0.95)
FLOOR = 0.95


#: an output with fewer values per feed (one score, a flag) is judged over all feeds at once:
#: the cosine of one number is only its sign (a face-presence logit near 0 read -1.0)
MIN_ELEMENTS = 2


def keep(data) -> KeepFeeds:
    """``data`` passed through, keeping copies of ``FEEDS`` of its feeds, spread over it."""
    kept = keep_feeds(data, FEEDS, spread=True)
    kept.max_bytes = MAX_BYTES
    return kept


Source = onnx.ModelProto | str | os.PathLike


def check(fp32: Source, int8: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]], *,
          graph: Source | None = None, memo: dict | None = None) -> dict:
    """Per output: the worst and the mean cosine with FP32 over ``feeds`` (each feed on its
    own: one feed's small output is not hidden by another's large one); ``below`` lists the
    outputs whose worst is under ``FLOOR``. ``graph``: the FP32 ``ModelProto`` when ``fp32``
    is its path. A check that cannot run returns ``{"skipped": why}``."""
    from onnxq.runtime import input_specs, iter_feeds, make_session

    if not feeds:
        return {"skipped": "no calibration feed was kept (the feeds were not dicts, or each "
                           f"was over {MAX_BYTES >> 20} MB)"}
    proto = graph if graph is not None else fp32
    if not isinstance(proto, onnx.ModelProto):  # a path: its graph, not its weights
        proto = skeleton(proto) or onnx.load(os.fspath(proto))
    size = weight_bytes(proto)
    if size > MAX_WEIGHT_BYTES:
        return {"skipped": f"the float weights are {size / 2**30:.1f} GiB (over "
                           f"{MAX_WEIGHT_BYTES >> 30} GiB, the check would hold them beside the "
                           "INT8 model): check it with `onnxq compare`"}
    names = [o.name for o in proto.graph.output]
    if sorted(names) != sorted(o.name for o in int8.graph.output):
        return {"skipped": "the INT8 model's outputs differ from FP32's"}
    cosines: dict[str, list[float]] = {n: [] for n in names}
    source = _runnable(proto) or (fp32 if isinstance(fp32, onnx.ModelProto)
                                  else os.fspath(fp32))
    specs = input_specs(proto)
    try:  # one session at a time: a large model's float weights are held once, then freed
        feeds = list(iter_feeds(feeds, specs, "calibration feed"))
        if memo is None or "fp32" not in memo:  # ``memo``: FP32's outputs, for a second check
            session = make_session(source, optimize=False)
            want = [session.run(names, feed) for feed in feeds]
            del session
            if memo is not None:
                memo["fp32"] = want
        want = memo["fp32"] if memo is not None else want
        from onnxq.emulate import for_target

        session, emulated = for_target(int8, _int8_session(int8))
        reshaped = _compare(session, names, feeds, want, cosines)
    except PassError:
        raise
    except Exception as exc:  # noqa: BLE001 - never fails quantize; the report says why
        return {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    outputs: dict[str, dict] = {
        n: {"worst_cosine": round(min(c), 6), "mean_cosine": round(float(np.mean(c)), 6)}
        for n, c in cosines.items() if c}
    for name, count in reshaped.items():
        outputs.setdefault(name, {})["other_shape"] = count
    below = [n for n, v in outputs.items()
             if v.get("other_shape") or not v["worst_cosine"] >= FLOOR]
    found = {"feeds": len(feeds), "floor": FLOOR, "outputs": outputs, "below": below}
    return {**found, "emulated": emulated} if emulated else found


#: onnxruntime's errors for a model it cannot load at all (not a shortage of memory)
_UNLOADABLE = ("InvalidGraph", "InvalidProtobuf", "NotImplemented", "InvalidArgument")


def _int8_session(int8: onnx.ModelProto):
    """A session of the INT8 model. FP32 has just run on this onnxruntime, so an INT8 model it
    refuses to load is onnxq's fault: ``PassError`` (the model is not returned, nothing is
    written), not a skipped check beside an unusable file."""
    from onnxq.runtime import make_session

    try:
        return make_session(int8)
    except Exception as exc:
        if type(exc).__name__ not in _UNLOADABLE:
            raise
        raise PassError(
            f"onnxq made an INT8 model that onnxruntime cannot load ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}); this is a bug in onnxq: please report it "
            "with the model. Until then, `--exclude-nodes` (``exclude_nodes``) with the node it "
            "names keeps that node float") from None


def skeleton(path: str | os.PathLike) -> onnx.ModelProto | None:
    """The model at ``path`` with its initializers' values dropped (names, dims and types kept:
    ``check``'s names and input specs and ``weight_bytes`` work on it): what ``quantize`` holds
    for a path, read while memory is low, instead of parsing the weights again beside the INT8
    models. Initializers of up to ``KEPT_VALUES`` elements keep their values (the Reshape
    targets and other shape constants that shape inference reads). A model whose node names
    repeat is kept whole: its check runs a renamed copy.
    None for a file onnx cannot read (loading it reports that properly)."""
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model: the caller's own load says why
        return None
    from onnxq.graph_import import check_text

    check_text(model)  # (read first here: a corrupt name is refused before anything uses it)
    if _runnable(model) is None:
        for t in model.graph.initializer:
            if math.prod(t.dims) <= KEPT_VALUES:  # shape constants: their values fix shapes
                continue
            for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                         "uint64_data", "string_data"):
                t.ClearField(name)
        # a fresh message: protobuf's upb runtime keeps a cleared field's bytes in the
        # message's arena until the message itself goes (the whole file, held to the end)
        model = onnx.ModelProto.FromString(model.SerializeToString())
        release()  # the parsed weights, before the caller's next step
    return model


def weight_bytes(model: Source) -> int:
    """Bytes of ``model``'s main-graph initializers (external ones included)."""
    from onnxq.scopes import tensor_bytes

    if not isinstance(model, onnx.ModelProto):  # a path: its graph, not its weights
        model = skeleton(model) or onnx.load(os.fspath(model))
    return sum(tensor_bytes(t) for t in model.graph.initializer)


def _runnable(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy with unique node names when ``model``'s repeat (ONNX allows it, onnxruntime
    refuses it); None when they are unique already."""
    from onnxq.scopes import proto_subgraphs, renamed_nodes

    names, stack = [], [model.graph]
    while stack:
        g = stack.pop()
        names += [n.name for n in g.node if n.name]
        stack.extend(proto_subgraphs(g))
    if len(names) == len(set(names)):
        return None
    return renamed_nodes(model, "onnxq_check_")


def _compare(session, names: list[str], feeds: list, want: list,
             cosines: dict[str, list[float]]) -> dict[str, int]:
    """INT8's outputs on ``feeds`` against FP32's (``want``) into ``cosines``; returns, per
    output, the feeds where its shape is not FP32's (a decoder loop stopped at another step)."""
    small: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    reshaped: dict[str, int] = {}
    for feed, a in zip(feeds, want, strict=True):
        for name, x, y in zip(names, a, session.run(names, feed), strict=True):
            if np.shape(x) != np.shape(y):
                reshaped[name] = reshaped.get(name, 0) + 1
            elif np.size(x) < MIN_ELEMENTS:  # one score or flag: judged over all feeds
                small.setdefault(name, []).append((np.ravel(x), np.ravel(y)))
            else:
                cosines[name].append(_cosine(x, y))
    for name, pairs in small.items():
        if len(pairs) == len(feeds):  # the same size on every feed
            cosines[name] = [_cosine(np.concatenate([x for x, _ in pairs]),
                                     np.concatenate([y for _, y in pairs]))]
        else:
            cosines[name] += [_cosine(x, y) for x, y in pairs]
    return reshaped


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two outputs (1.0 when both are all zero, 0.0 when only one is)."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    if x.shape != y.shape or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return 0.0
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if nx == ny else 0.0
    return float(np.dot(x, y) / (nx * ny))


def warning(result: Mapping) -> str | None:
    """The report's line for outputs below the floor (None when every output agrees)."""
    below = result.get("below") or []
    if not below:
        return None
    figures = ", ".join(_figure(name, result["outputs"][name], result["feeds"])
                        for name in below)
    return (f"self-check on {result['feeds']} calibration feed(s): {figures} against FP32, "
            f"below {FLOOR}: this INT8 model may be wrong for your data. `onnxq tune MODEL "
            "OUT --calib-data D --eval-data D` keeps the nodes that cause it float (or returns "
            "FP32); `onnxq compare` lists the tensors where the error starts")


def _figure(name: str, found: Mapping, feeds: int) -> str:
    parts = []
    if found.get("other_shape"):
        parts.append(f"another shape than FP32's on {found['other_shape']} of {feeds} feed(s)")
    if "worst_cosine" in found:
        parts.append(f"cosine {found['worst_cosine']:.4f}")
    return f"{name!r} " + ", ".join(parts)


def attach(result: R, fp32: Source, graph: Source,
           feeds: Sequence[Mapping[str, np.ndarray]], found: Mapping | None = None) -> R:
    """``result`` (a ``QuantResult``) with the check in its report (``self_check``, and a
    warning note and log line for outputs below the floor); ``found``: its check, when it
    has run already."""
    if found is None:
        found = check(fp32, result.model, feeds, graph=graph)  # type: ignore[attr-defined]
    line = warning(found)
    report = result.report  # type: ignore[attr-defined]
    if line:
        logging.getLogger("onnxq.api").warning("%s", line)
    report = dataclasses.replace(report, self_check=found, notes=report.notes + (
        (f"warning: {line}",) if line else ()))
    return dataclasses.replace(result, report=report)  # type: ignore[type-var]


def finish(result: R, fp32: Source, graph: Source, feeds: Sequence[Mapping[str, np.ndarray]],
           rebuild: Callable[[], R] | None, found: Mapping | None = None) -> R:
    """``attach``; for a model made for the OpenVINO EP (``rebuild`` given: the same model
    with u8 asymmetric activations), first ``ep_check.guard`` on that EP."""
    if rebuild is not None:
        from onnxq.ep_check import guard

        guarded = guard(result, fp32, feeds, rebuild)
        if guarded is not result:
            result, found = guarded, None
    return attach(result, fp32, graph, feeds, found)
