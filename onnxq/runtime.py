"""The runtime layer: every onnxruntime session onnxq makes (CPU EP, fixed threads), the model
inputs it expects and the checks a feed passes before it runs. The one module outside the
benchmarks that imports onnxruntime."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxq.ep_child import time_interleaved  # re-exported: the one timing loop
from onnxq.errors import CalibrationError, ModelError
from onnxq.external import has_kept
from onnxq.io import external_copy, fits_in_protobuf, temp_prefix

__all__ = ["profile_nodes", "InputSpec", "input_specs", "check_feed", "check_finite", "feed_label", "iter_feeds",
           "make_session", "ort_version", "time_interleaved"]


class InputSpec:
    """Name, numpy dtype and shape (None for symbolic dims) of one model input."""

    __slots__ = ("name", "dtype", "shape")

    def __init__(self, name: str, dtype: np.dtype, shape: tuple[int | None, ...] | None):
        self.name, self.dtype, self.shape = name, dtype, shape

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join(
            "N" if d is None else str(d) for d in self.shape)
        return f"{self.name} ({self.dtype}, {dims})"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"model input {vi.name!r} has element type {tt.elem_type}, "
                             "which has no numpy equivalent (0 means undefined); re-export "
                             "the model with a typed input") from None
        shape = None
        if tt.HasField("shape"):
            # old Paddle2ONNX exports write -1 for a dynamic size: like a symbol, any size
            shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                          else None for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dtype, shape))
    return specs


def check_feed(feed: Mapping[str, np.ndarray], specs: Sequence[InputSpec], index: int,
               what: str = "calibration feed") -> dict:
    """Validate one feed against the model inputs; return it as a dict of numpy arrays.
    ``what`` names the feed in messages ("calibration feed", "feed"), with the file it came
    from when the feed knows it (``onnxq.data.Feed``)."""
    what = feed_label(feed, index, what)
    if not isinstance(feed, Mapping):
        raise CalibrationError(
            f"{what} is a {type(feed).__name__}, not a dict of input name "
            "-> numpy array")
    names = {s.name for s in specs}
    missing = sorted(names - set(feed))
    if missing:
        raise CalibrationError(
            f"{what} is missing input(s) {missing}; the model expects "
            f"{', '.join(s.describe() for s in specs)}")
    extra = sorted(set(feed) - names)
    if extra:
        raise CalibrationError(
            f"{what} has unknown input(s) {extra}; the model's inputs are "
            f"{sorted(names)}")
    out = {}
    for spec in specs:
        arr = np.asarray(feed[spec.name])
        if arr.dtype != spec.dtype:
            raise CalibrationError(
                f"{what}: input {spec.name!r} has dtype {arr.dtype}, the "
                f"model expects {spec.dtype}; convert it (e.g. arr.astype(np.{spec.dtype}))")
        if spec.shape is not None:
            if arr.ndim != len(spec.shape):
                raise CalibrationError(
                    f"{what}: input {spec.name!r} has shape {arr.shape} "
                    f"(rank {arr.ndim}), the model expects rank {len(spec.shape)}: "
                    f"{spec.describe()}")
            for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
                if want not in (None, 0) and got != want:
                    raise CalibrationError(
                        f"{what}: input {spec.name!r} has size {got} on "
                        f"axis {axis}, the model expects {want}: {spec.describe()}")
        out[spec.name] = arr
    return _with_source(out, feed)


def feed_label(feed: Mapping, index: int, what: str = "calibration feed") -> str:
    """``calibration feed #4 (sample_004.npz)`` — the file when the feed knows it."""
    source = getattr(feed, "source", None)
    return f"{what} #{index}" + (f" ({source})" if source else "")


def _with_source(arrays: dict, feed: Mapping) -> dict:
    source = getattr(feed, "source", None)
    if source is None:
        return arrays
    from onnxq.data import Feed

    return Feed(arrays, source)


def check_finite(feed: Mapping[str, np.ndarray], index: int) -> None:
    label = feed_label(feed, index)
    for name, arr in feed.items():
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise CalibrationError(
                f"{label}: input {name!r} has {bad} NaN/Inf value(s); clean "
                "the data, or allow them (allow_nonfinite=True / --ignore-nonfinite) to skip "
                "non-finite values")


def make_session(model: onnx.ModelProto | str | bytes, *, threads: int = 0,
                 optimize: bool | None = True, exact_int8: bool = False):
    """An onnxruntime CPU session for an in-memory model, its bytes or a path (any size).

    ``optimize``: True = all graph optimizations (what deployment runs), False = basic ones
    only (values exactly as the graph defines them), None = none at all. ``exact_int8``:
    onnxruntime's exact u8 x u8 kernels for s8 weights on x86 CPUs without VNNI
    (``session.x64quantprecision``): the results a VNNI CPU computes, slower."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if exact_int8:
        options.add_session_config_entry("session.x64quantprecision", "1")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimize is None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        # a short-lived session (calibration, probes): no pre-packed second copy of the weights
        options.add_session_config_entry("session.disable_prepacking", "1")
    if isinstance(model, onnx.ModelProto) and has_kept(model):
        import tempfile  # weights left in the source's files: a copy onnxruntime can read

        with tempfile.TemporaryDirectory(prefix=temp_prefix(kind="session")) as tmp:
            path, _ = external_copy(model, (), Path(tmp))
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if isinstance(model, onnx.ModelProto):
        if not fits_in_protobuf(model):
            raise CalibrationError("model too large for an in-memory session; pass a path")
        model = model.SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def iter_feeds(feeds: Iterable[Mapping], specs: list[InputSpec], what: str = "feed"
               ) -> Iterator[dict]:
    """Each feed of ``feeds`` checked against ``specs``; an empty iterable is an error."""
    if isinstance(feeds, Mapping):
        raise CalibrationError(f"{what}s must be an iterable of feeds (dicts), not a single "
                               "dict; wrap it in a list: [feed]")
    count = 0
    for index, feed in enumerate(feeds):
        yield check_feed(feed, specs, index, what)
        count += 1
    if count == 0:
        raise CalibrationError("no feeds were given: pass at least one feed (a dict of input "
                               f"name -> numpy array) for {[s.describe() for s in specs]}")


def available_providers() -> list[str]:
    """The execution providers this interpreter's onnxruntime build has."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def profile_nodes(model: onnx.ModelProto | str, feed: Mapping[str, np.ndarray], *,
                  runs: int = 50, threads: int = 2
                  ) -> tuple[dict[str, tuple[str, float]], onnx.ModelProto]:
    """onnxruntime's profiler on ``runs`` runs of ``feed`` (after 3 warm-ups): each node of the
    optimized graph → (op type, median µs per run), and the optimized graph itself."""
    import tempfile
    from collections import defaultdict
    from pathlib import Path

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="onnxq-profile-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "trace")
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
        sess = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        for _ in range(3 + max(runs, 1)):
            sess.run(None, dict(feed))
        events = json.loads(Path(sess.end_profiling()).read_text())
        optimized = onnx.load(str(Path(tmp) / "optimized.onnx"))
    samples: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            samples[name].append(float(e["dur"]))
            ops[name] = str(args.get("op_name", "?"))
    return {n: (ops[n], float(np.median(v[3:] if len(v) > 3 else v)))
            for n, v in samples.items()}, optimized


#: outputs of onnxruntime's fused transformer ops that are not float32 (op → output index → type)
_FUSED_NON_FLOAT = {"EmbedLayerNormalization": {1: onnx.TensorProto.INT32}}


def fuse_transformer(model: onnx.ModelProto, num_heads: int, hidden_size: int, *,
                     in_place: bool = False) -> tuple[onnx.ModelProto, dict[str, int]]:
    """onnxruntime's transformer fusions (``onnxruntime.transformers.optimizer``, its Python
    graph rewrites only: no session runs) on a copy of a BERT-style ``model``: Attention,
    SkipLayerNormalization, BiasGelu/FastGelu (not EmbedLayerNormalization). Returns the fused
    model, with the element types of the fused ops' outputs declared (onnx's shape inference
    does not know them), and the count of each fused op. ``in_place``: rewrite ``model``
    itself (a private export the caller drops: one copy of the weights less)."""
    import logging

    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    copy = model
    if not in_place:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
    quiet = [logging.getLogger(n) for n in ("onnxruntime.transformers", "fusion_base",
                                             "onnx_model", "onnx_model_bert", "fusion_utils")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        options = FusionOptions("bert")
        # the word-embedding Gather stays: onnxq stores its table int8 (EmbedLayerNormalization
        # would keep it float, the largest tensor of a small encoder)
        options.enable_embed_layer_norm = False
        # Add + LayerNormalization stay two kernels: the CPU EP's float SkipLayerNormalization
        # is several times slower than both (see passes/layernorm_add.py)
        options.enable_skip_layer_norm = False
        # its symbolic shape inference copies the whole model, weights included, twice (BERT-
        # base quantize peak 2076 -> 1418 MiB without it); the fusions onnxq asks for match the
        # same nodes without it (all-MiniLM-L6-v2: the same model, byte for byte)
        options.enable_shape_inference = False
        fused = optimizer.optimize_model(copy, model_type="bert", num_heads=num_heads,
                                         hidden_size=hidden_size, opt_level=0,
                                         optimization_options=options)
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    stats = {k: int(v) for k, v in fused.get_fused_operator_statistics().items()
             if v and not k.startswith("QOrdered")}
    out = fused.model
    typed = {vi.name for vi in [*out.graph.value_info, *out.graph.output]}
    for node in out.graph.node:
        if node.domain != "com.microsoft":
            continue
        for i, name in enumerate(node.output):
            if name and name not in typed:
                kind = _FUSED_NON_FLOAT.get(node.op_type, {}).get(i, onnx.TensorProto.FLOAT)
                out.graph.value_info.append(onnx.helper.make_tensor_value_info(name, kind, None))
    return out, stats
