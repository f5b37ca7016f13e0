"""The Python API: ``quantize`` and ``build_pipeline``."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx

from onnxq import graph as G
from onnxq import placement, range_choice, recovery, self_check
from onnxq.calibration_run import Stats, calibrate_run
from onnxq.config import QuantConfig
from onnxq.config_resolve import check_sources, resolve, stamp_target, types_for
from onnxq.config_resolve import resolve_config as _resolve_config
from onnxq.data import peek_shapes
from onnxq.distributed import Cluster
from onnxq.dynamic_check import LOSSY
from onnxq.errors import CalibrationError, ModelError
from onnxq.exporters.front_door import as_onnx
from onnxq.io import check_outputs, model_files, save_model, self_contained
from onnxq.memory import release
from onnxq.passes import (
    CleanupPass,
    DecomposeHardActivationsPass,
    DynamicAttentionPass,
    DynamicLSTMPass,
    DynamicMatMulPass,
    InsertQDQPass,
    QLinearLoweringPass,
    RequantFoldPass,
    VerifyPass,
    WeightOnlyPass,
)
from onnxq.passes.front import front_passes
from onnxq.passes.runtime_forms import pre_lowering_passes, runtime_form_passes
from onnxq.pipeline import ForEachGraph, Pipeline, PipelineResult
from onnxq.plan import QuantPlan, annotate
from onnxq.plan_bounds import quant_ranges
from onnxq.plan_checks import QUANTIZED_OPS, check_exclusions, is_prequantized, unquantizable
from onnxq.plan_concat import tie_concats
from onnxq.plan_dynamic import dynamic_plan
from onnxq.plan_settle import without_unobserved
from onnxq.qtypes import TensorRange
from onnxq.quant_ops import Role
from onnxq.report import QuantReport, input_notes, stamp_float_reasons
from onnxq.scopes import all_nodes
from onnxq.sizes import describe_sizes

__all__ = ["QuantReport", "QuantResult", "quantize", "calibrate", "prepare", "build_pipeline",
           "as_onnx", "resolve", "stamp_target", "materialize", "settle"]

Feed = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QuantResult:
    model: onnx.ModelProto
    plan: QuantPlan
    ranges: dict[str, TensorRange]
    report: QuantReport
    config: QuantConfig
    source: onnx.ModelProto | None = None  # the exported FP32 model, for framework inputs
    read_from: tuple[Path, ...] = ()  # the files the input model was read from

    def save(self, path: str | os.PathLike) -> Path:
        """Validate (checker + onnxruntime) and write atomically; never over the input."""
        check_outputs({"output": path}, list(self.read_from))
        return save_model(self.model, path)


def prepare(model: onnx.ModelProto | str | os.PathLike, config: QuantConfig,
            input_shapes: Mapping[str, tuple] | None = None
            ) -> tuple[PipelineResult, QuantPlan | None]:
    """Preprocess + fuse ``model`` and plan its quantization (no calibration yet): which
    nodes run int8 is decided by the placement (``config.placement``; ``input_shapes``, e.g.
    a calibration feed's, size its cost model, else symbolic dims count as 1). The plan is None
    for a model that is already quantized (QDQ from QAT or another tool)."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    fused = Pipeline(front_passes(config)).run(model)
    if is_prequantized(fused.model):
        return fused, None
    graph = G.import_graph(fused.model)
    check_exclusions(graph, config)
    plan = _annotate(graph, config)
    none = () if any(n.role in (Role.ANCHOR, Role.DYNAMIC) for n in plan.nodes) else (
        unquantizable(graph, plan, config),)
    data = recovery.float_data_layers(graph, plan, config.recipe)
    plan = _annotate(graph, config, data) if data else plan
    placed = _placed(fused.model, graph, plan, config, input_shapes, data)
    placed = dataclasses.replace(placed, notes=(*none, *placed.notes))
    del graph
    release(fused.model)  # the planning IR (node <-> tensor cycles) may hold weights
    return fused, placed


def _placed(model: onnx.ModelProto, graph, plan: QuantPlan, config: QuantConfig,
            input_shapes, data: Mapping[str, str]) -> QuantPlan:
    """``plan`` with the placement's float regions (and ``data``) kept float; its summary a note."""
    return placement.apply(model, graph, plan, config, input_shapes,
                           lambda keep, force: _annotate(graph, config, {**data, **keep}, force))


def _annotate(graph, config: QuantConfig, keep_float: Mapping[str, str] | None = None,
              force_int8=()) -> QuantPlan:
    ov, keep = config.target_ep == "openvino", dict(keep_float or {})
    plan = annotate(graph, per_channel=config.weight.per_channel, keep_float=keep,
                    exclude_nodes=config.exclude_nodes, exclude_op_types=config.exclude_op_types,
                    fold_activations=config.fold_activations, force_int8=frozenset(force_int8),
                    inputs_only=ov, weight_only_ops=config.weight.weight_only_ops)
    tie = ov and "Concat" not in config.exclude_op_types  # one scale per Concat (plan_concat)
    return tie_concats(graph, plan, keep | dict.fromkeys(config.exclude_nodes, "")) if tie else plan


def build_pipeline(config: QuantConfig, plan: QuantPlan,
                   ranges: Mapping[str, TensorRange]) -> Pipeline:
    """The passes that turn a prepared float model into the quantized one."""
    act, weight, reduce_range = types_for(config)
    # a fused Attention (--fuse-attention, or in the input model): QAttention, in both modes
    attention = DynamicAttentionPass(per_channel=plan.per_channel, reduce_range=reduce_range,
                                     exclude=("*",) if "Attention" in config.exclude_op_types
                                     or config.target_ep == "openvino" else config.exclude_nodes)
    if config.mode == "dynamic":
        return Pipeline([
            ForEachGraph(DynamicMatMulPass(nodes=plan.named(Role.DYNAMIC),
                                           per_channel=plan.per_channel,
                                           reduce_range=reduce_range,
                                           fused=config.format == "qlinear")),
            attention,
            ForEachGraph(WeightOnlyPass(nodes=plan.named(Role.WEIGHT_ONLY))),
            ForEachGraph(DynamicLSTMPass(nodes=plan.named(Role.DYNAMIC),
                                         per_channel=plan.per_channel,
                                         reduce_range=reduce_range)),
            ForEachGraph(CleanupPass()), *runtime_form_passes(config.target_ep), VerifyPass()])
    return Pipeline([
        ForEachGraph(InsertQDQPass(plan=plan, ranges=quant_ranges(ranges, plan),
                                   activation_type=act, activation_symmetric=config.activation.symmetric,
                                   openvino=config.target_ep == "openvino",
                                   weight_type=weight, reduce_range=reduce_range)),
        ForEachGraph(DecomposeHardActivationsPass(nodes=tuple(
            n.name for n in plan.nodes if n.op in ("HardSigmoid", "HardSwish")),
            activation_type=act)),
        ForEachGraph(WeightOnlyPass(nodes=plan.named(Role.WEIGHT_ONLY))),
        ForEachGraph(DynamicLSTMPass(nodes=plan.named(Role.DYNAMIC),
                                     per_channel=plan.per_channel,
                                     reduce_range=reduce_range)),
        attention, *_finishing_passes(config),
    ])


#: The passes that lower the QDQ graph to each output form of ``config.FORMATS``.
LOWERINGS: Mapping[str, Callable[[], list]] = MappingProxyType({"qdq": lambda: [], "qlinear": (
    lambda: [ForEachGraph(QLinearLoweringPass()), ForEachGraph(CleanupPass())])})


def _finishing_passes(config: QuantConfig) -> list:
    """Folding, cleanup, the format's lowering (of the same QDQ graph), verification."""
    return [ForEachGraph(RequantFoldPass(openvino=config.target_ep == "openvino")),
            ForEachGraph(CleanupPass()),
            *pre_lowering_passes(config.target_ep), *LOWERINGS[config.format](),
            *runtime_form_passes(config.target_ep), VerifyPass()]


def _quantize_prequantized(model, cfg: QuantConfig) -> QuantResult:
    """An already quantized model (QAT's QDQ, another tool's): no calibration, fold/clean it."""
    result = Pipeline(_finishing_passes(cfg)).run(model, copy=False)
    nodes = result.model.graph.node
    produced = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = tuple((n.name, n.op_type) for n in nodes if n.op_type not in
                      ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear") and (
                          any(i in produced for i in n.input) or n.domain == "com.microsoft"
                          or n.op_type.startswith("QLinear") or n.op_type in QUANTIZED_OPS))
    report = QuantReport(
        quantized=quantized, skipped=result.skipped, folded=(),
        op_histogram=dict(sorted(Counter(n.op_type for n in nodes).items())),
        notes=("model already quantized (Q/DQ or integer ops, from QAT or another tool): "
               "calibration skipped, its quantization parameters kept",
               *(n for r in result.records for n in r.notes)))
    plan = QuantPlan(nodes=(), activations=())
    return QuantResult(model=result.model, plan=plan, ranges={}, report=report, config=cfg)


def calibrate(
    model: onnx.ModelProto | str | os.PathLike,
    calibration_data: Iterable[Feed],
    config: QuantConfig | Mapping | str | os.PathLike | None = None,
    *,
    progress: bool = True,
    export_options: Mapping | None = None,
    cluster: Cluster | None = None,
    **overrides,
) -> dict[str, TensorRange]:
    """Measure the activation ranges ``quantize`` needs; reuse them with ``ranges=``. They
    cover every node onnxq can quantize, whatever the placement (``placement.objective``)
    later keeps float. ``cluster``: on Ray workers (``onnxq.distributed``)."""
    cfg = _resolve_config(config, overrides)
    model, calibration_data = as_onnx(model, calibration_data, export_options=export_options)
    every = cfg.with_overrides(objective="size", data_layers="int8")
    fused, plan = prepare(model, every)
    if plan is None:
        raise ModelError("the model is already quantized (it holds QuantizeLinear/"
                         "DequantizeLinear); there is nothing to calibrate: pass it to "
                         "onnxq quantize without calibration data")
    box = [fused.model]  # the run's alone: a large model waits on disk while feeds run
    del fused
    return calibrate_run(box, plan, calibration_data, cfg, progress, cluster=cluster)[0]


def recover_prepared(fused: PipelineResult, plan: QuantPlan, cfg: QuantConfig,
             ranges: Mapping[str, TensorRange], stats: Stats, progress: bool
             ) -> tuple[PipelineResult, recovery.Recovery]:
    """``fused`` with the recipe's corrections (``onnxq.recovery``), and their report (less
    its model: that goes with ``fused`` when ``quantize`` drops it)."""
    release(fused.model)  # the calibration session and the spilled copy are gone
    qdq = cfg.with_overrides(format="qdq")
    weight, reduce_range = types_for(cfg)[1:]

    def build(model: onnx.ModelProto) -> onnx.ModelProto:
        return materialize(dataclasses.replace(fused, model=model), plan, qdq, ranges,
                           consume=False).model

    grid = recovery.WeightGrid(quantized=recovery.fake_quant_weight(weight, reduce_range),
                               qtype=weight, reduce_range=reduce_range)
    done = recovery.recover(fused.model, plan, cfg.recipe, grid=grid, means=stats.means,
                            grams=stats.grams, feeds=stats.feeds, build_qdq=build,
                            progress=progress)
    return dataclasses.replace(fused, model=done.model), done.without_model()


def settle(fused: PipelineResult, plan: QuantPlan, cfg: QuantConfig,
           ranges: Mapping[str, TensorRange]) -> QuantPlan:
    """``plan`` without the nodes of subgraphs no calibration feed ran (``without_unobserved``)."""
    if all(t in ranges for t in plan.calibration_tensors):
        return plan
    graph = G.import_graph(fused.model)
    return without_unobserved(graph, plan, ranges,
                              lambda keep: _replan(graph, plan, cfg, keep))


def _replan(graph, plan: QuantPlan, cfg: QuantConfig, keep: Mapping[str, str]) -> QuantPlan:
    """``plan`` re-annotated with ``keep`` (node → why) float too; the placement's and the
    accuracy checks' choices stay."""
    kept = {name: why for name, why in plan.skipped
            if why.startswith((LOSSY, placement.PLACED, recovery.DATA_LAYER))}
    force = [n for n in (plan.placement or {}).get("int8_electives", ()) if n not in keep]
    again = _annotate(graph, cfg, kept | dict(keep), force)
    return dataclasses.replace(again, notes=plan.notes, placement=plan.placement)


def quantize(
    model: onnx.ModelProto | str | os.PathLike,
    calibration_data: Iterable[Feed] | None = None,
    config: QuantConfig | Mapping | str | os.PathLike | None = None,
    *,
    ranges: Mapping[str, TensorRange] | None = None,
    progress: bool = True,
    export_options: Mapping | None = None,
    cluster: Cluster | None = None,
    **overrides,
) -> QuantResult:
    """Quantize ``model`` to static INT8 (QDQ) with ranges calibrated on ``calibration_data``.

    ``model``: an ``onnx.ModelProto`` or a path (never modified), or a framework model
    (exported first: ``as_onnx``, ``export_options``). ``calibration_data``: any iterable of
    feeds (dict input name → numpy array); ``ranges`` skips calibration (and ``auto``'s choice).
    ``overrides`` are flat options such as ``per_channel=False`` (``QuantConfig.with_overrides``);
    ``cluster`` calibrates on Ray workers (``onnxq.distributed``; the same result)."""
    cfg = _resolve_config(config, overrides)
    original = model
    # listed now, while memory is low (finding external data parses the whole file)
    files = tuple(model_files(model)) if isinstance(model, (str, os.PathLike)) else ()
    light = self_check.skeleton(files[0]) if files and files[0].suffix == ".onnx" else None
    model, calibration_data = as_onnx(model, calibration_data, export_options=export_options)
    exported = model if model is not original and isinstance(model, onnx.ModelProto) else None
    if cfg.mode == "dynamic":  # no calibration: every int8 kernel quantizes its own input
        return _reads(_dynamic(model, cfg, exported), files)
    shapes, calibration_data = peek_shapes(calibration_data)
    fused, plan = prepare(model, cfg, shapes)  # the pipeline makes the one private copy
    if plan is None:
        return _reads(_quantize_prequantized(fused.model, cfg), files)
    done, checked, stats = None, None, Stats()
    check_sources(cfg, ranges, calibration_data)
    if ranges is None:
        if cfg.recipe.smooth_alpha:
            fused, plan, calibration_data = _smoothed(fused, plan, cfg, shapes, calibration_data)
        box, checked = [fused.model], self_check.keep(calibration_data)
        fused = dataclasses.replace(fused, model=onnx.ModelProto())  # the box has it now
        ranges, plan, *box, stats = calibrate_run(
            box, plan, checked, cfg, progress, recover=not cfg.recipe.is_plain,
            cluster=cluster)
        fused = dataclasses.replace(fused, model=box.pop())  # no other name holds it
        if not cfg.recipe.is_plain:
            fused, done = recover_prepared(fused, plan, cfg, ranges, stats, progress)
    ov = cfg.target_ep == "openvino"  # (a second model may be built: not consumed)
    alt = range_choice.second(stats.alternative, checked.kept if checked else (), light or model)
    held = [fused]  # the last build takes it: its weights go before the self-check's sessions
    del fused

    def build(r: Mapping[str, TensorRange], consume: bool, c: QuantConfig = cfg) -> QuantResult:
        prepared = held.pop() if consume else held[0]
        return materialize(prepared, plan, c, r, source=exported, recovered=done,
                           consume=consume)

    result = build(ranges, not (ov or alt))
    if checked is not None:  # against FP32 on kept feeds (``self_check``; OpenVINO: ``ep_check``)
        result = range_choice.finish(result, original if files else model, light or model,
                                     checked.kept, alt, build, ov)
    return _reads(result, files)


def _dynamic(model, cfg: QuantConfig, exported: onnx.ModelProto | None) -> QuantResult:
    fused, plan = prepare(model, cfg.with_overrides(objective="size", data_layers="int8"))
    return _quantize_prequantized(fused.model, cfg) if plan is None else materialize(
        fused, dynamic_plan(plan), cfg, {}, source=exported)


def _smoothed(fused: PipelineResult, plan: QuantPlan, cfg: QuantConfig, shapes, data):
    """SmoothQuant before calibration (``recipe.smooth_alpha``): the smoothed model is prepared
    and planned again; the note names what moved."""
    done, data = recovery.smooth_first(fused.model, plan, data, cfg.recipe)
    if not done.report:
        return fused, plan, data
    fused, again = prepare(done.model, cfg, shapes)
    assert again is not None
    where = ", ".join(sorted(done.report)[:4]) + (" …" if len(done.report) > 4 else "")
    note = (f"SmoothQuant (alpha {cfg.recipe.smooth_alpha:g}): {len(done.report)} MatMul "
            f"input(s) with outlier channels smoothed ({where})")
    return fused, dataclasses.replace(again, notes=again.notes + (note,)), data


def _reads(result: QuantResult, files: tuple[Path, ...]) -> QuantResult:  # save never writes them
    return dataclasses.replace(result, read_from=files) if files else result


def materialize(fused: PipelineResult, plan: QuantPlan, cfg: QuantConfig,
                ranges: Mapping[str, TensorRange], *, source: onnx.ModelProto | None = None,
                consume: bool = True, recovered: recovery.Recovery | None = None
                ) -> QuantResult:
    """Turn a prepared model (``prepare``) and its ranges into the quantized ``QuantResult``.
    ``consume=False`` keeps ``fused`` reusable (``tune`` prepares once per distinct plan)."""
    release(fused.model)  # what calibration and recovery dropped, before quantizing
    plan = settle(fused, plan, cfg, ranges)
    missing = [t for t in plan.calibration_tensors if t not in ranges]
    if missing:
        raise CalibrationError(
            f"the given ranges lack {len(missing)} tensor(s) this model needs (e.g. "
            f"{missing[:3]}); they were measured on another model or config: recalibrate")
    huge = [t for t in plan.calibration_tensors
            if max(abs(ranges[t].lo), abs(ranges[t].hi)) > 1e30]
    if huge:
        r = ranges[huge[0]]
        raise CalibrationError(
            f"tensor {huge[0]!r} has a calibrated range [{r.lo:g}, {r.hi:g}] beyond 1e30: int8 "
            "at that scale would zero every ordinary value; keep the nodes around it in float "
            "(exclude_nodes) or fix the model or the calibration data"
            + (f" ({len(huge) - 1} more such tensor(s))" if len(huge) > 1 else ""))
    result = build_pipeline(cfg, plan, ranges).run(fused.model, copy=not consume)
    self_contained(result.model)
    act, weight, reduce_range = types_for(cfg)
    stamp_target(result.model, cfg.target, reduce_range)
    skipped = plan.skipped + fused.skipped + result.skipped
    stamp_float_reasons(result.model, skipped)
    histogram = Counter(n.op_type for n in all_nodes(result.model.graph))
    defaults = input_notes(ranges, plan.calibration_tensors, fused.model, result.model)
    report = QuantReport(
        quantized=tuple((n.name, n.op) for n in plan.nodes),
        skipped=skipped,
        folded=tuple(f.node for f in plan.folds),
        op_histogram=dict(sorted(histogram.items())),
        notes=plan.notes + (recovered.notes if recovered else ())
        + tuple(n for r in fused.records + result.records for n in r.notes)
        + defaults
        + (describe_sizes(fused.model, result.model),),
        activation_type=act.value, weight_type=weight.value, per_channel=plan.per_channel,
        target=cfg.target, weight_bits=7 if reduce_range else 8, placement=plan.placement,
        recovery=recovered.report if recovered else None,
    )
    if consume:  # what the pipeline dropped; ``fused`` itself goes when the caller drops it
        release()  # (protobuf's upb runtime frees a message's memory with the message only)
    return QuantResult(model=result.model, plan=plan, ranges=dict(ranges), report=report,
                       config=cfg, source=source)
