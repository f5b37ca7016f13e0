"""Accuracy recovery beyond range calibration (``config.recipe``): Hessian-based weight
rounding (``rounding``, from the calibration run's input statistics) and bias correction (fast,
from the calibration statistics; full, layer by layer on the quantized upstream). Rounding
runs first; bias correction then cancels what the chosen weights still shift.

``recover`` takes the prepared float model and returns it with corrected weights and biases;
the quantized model is then materialized from it as usual, so every output form gets the same
correction. The algorithms run on the main graph's quantized Conv/ConvTranspose/Gemm/MatMul.
(Cross-layer equalization is not built yet.)
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxq import graph as G
from onnxq.config import RecipeConfig
from onnxq.passes.bias import SetBiasPass, SetWeightPass
from onnxq.pipeline import Pipeline
from onnxq.plan import QuantPlan
from onnxq.qtypes import QType
from onnxq.recovery.bias_correction import fast_shifts, full_biases
from onnxq.recovery.data_inputs import DATA_LAYER, data_layers
from onnxq.recovery.grams import Geometry, InputGrams, geometry
from onnxq.recovery.rounding import round_weights
from onnxq.recovery.smooth import Smoothed, smooth
from onnxq.recovery.stats import InputMeans, KeepFeeds, keep_feeds
from onnxq.recovery.targets import Target, WeightQuantizer, fake_quant_weight, targets

__all__ = ["Recovery", "recover", "InputMeans", "InputGrams", "KeepFeeds", "keep_feeds",
           "watched_inputs", "watched_layers", "fake_quant_weight", "needs_feeds",
           "needs_means", "needs_grams", "WeightGrid", "DATA_LAYER", "float_data_layers",
           "smooth_first", "Smoothed"]

Feed = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    model: onnx.ModelProto
    report: dict = field(default_factory=dict)  # algorithm → what it did
    notes: tuple[str, ...] = ()

    def without_model(self) -> Recovery:
        """The report and notes only (the caller holds the model: one owner, so that it can
        be freed)."""
        return dataclasses.replace(self, model=onnx.ModelProto())


def needs_means(recipe: RecipeConfig) -> bool:
    return recipe.bias_correction == "fast"


def needs_grams(recipe: RecipeConfig) -> bool:
    return recipe.rounding == "gptq"


def needs_feeds(recipe: RecipeConfig) -> bool:
    return recipe.bias_correction == "full"


def float_data_layers(graph, plan: QuantPlan, recipe: RecipeConfig) -> dict[str, str]:
    """The convolutions reading the model's data that the recipe keeps float → why
    (``data_inputs``); never every quantized node."""
    if recipe.data_layers != "float":
        return {}
    layers = data_layers(graph, plan)
    if len(layers) >= len(plan.nodes):
        return {}
    return {name: f"{DATA_LAYER} ({source!r}): int8 would re-grid the data itself; kept "
                  "float (recipe.data_layers)" for name, source in layers.items()}


def watched_inputs(model: onnx.ModelProto, plan: QuantPlan) -> dict[str, int]:
    """The activation inputs fast bias correction needs the mean of → their channel axis."""
    graph = G.import_graph(model)
    return {t.x: t.channel_axis for t in targets(graph, plan)}


def watched_layers(model: onnx.ModelProto, plan: QuantPlan) -> dict[str, tuple[str, Geometry]]:
    """The layers weight rounding can work on → (their input tensor, its geometry)."""
    graph = G.import_graph(model)
    nodes = {n.name: n for n in graph.nodes}
    out = {}
    for t in targets(graph, plan):
        g = geometry(nodes[t.node], t)
        if g is not None:
            out[t.node] = (t.x, g)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightGrid:
    """onnxq's int8 weight grid for this run: round-to-nearest, and the type and width that
    weight rounding chooses on."""

    quantized: WeightQuantizer
    qtype: QType
    reduce_range: bool


def recover(model: onnx.ModelProto, plan: QuantPlan, recipe: RecipeConfig, *,
            grid: WeightGrid, means: Mapping[str, np.ndarray] | None = None,
            grams: Mapping[str, np.ndarray] | None = None, feeds: Sequence[Feed] = (),
            build_qdq: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None,
            progress: bool = False) -> Recovery:
    """``model`` (prepared, float; consumed) with the recipe's corrections applied."""
    graph = G.import_graph(model)
    found = targets(graph, plan)
    if not found or recipe.is_plain:
        return Recovery(model=model)
    report: dict[str, dict] = {}
    notes: list[str] = []
    start = time.perf_counter()
    weights: dict[str, np.ndarray] = {}
    if recipe.rounding == "gptq" and grams:
        rounded = round_weights(graph, found, grams, grid.qtype, grid.reduce_range,
                                budget_s=recipe.time_budget_s, progress=progress)
        weights = rounded.weights
        report["rounding"] = _rounding_info(rounded, found, start)
        if rounded.stopped:
            notes.append(f"weight rounding stopped at the time budget "
                         f"({recipe.time_budget_s:g} s); the remaining layers were rounded "
                         "to nearest")
    start = time.perf_counter()
    shifts: dict[str, np.ndarray] = {}
    if recipe.bias_correction == "fast" and means:
        shifts = fast_shifts(graph, found, means, grid.quantized, weights=weights)
        report["bias_correction"] = _shift_info("fast", shifts, found, start)
    if weights:
        model = _with_weights(model, graph, found, weights)
        graph = G.import_graph(model)
    if recipe.bias_correction == "full" and feeds and build_qdq is not None:
        spent = sum(info.get("seconds", 0.0) for info in report.values())
        left = max(0.0, recipe.time_budget_s - spent)
        shifts, done, total = full_biases(model, build_qdq(model), found, feeds,
                                          budget_s=left, progress=progress)
        report["bias_correction"] = _shift_info("full", shifts, found, start) | {
            "levels_done": done, "levels": total, "feeds": len(feeds)}
        if done < total:
            notes.append(f"full bias correction stopped at the time budget "
                         f"({recipe.time_budget_s:g} s) after {done} of {total} levels; "
                         "the deeper layers were left as they were")
    if shifts:
        model = _with_shifts(model, graph, found, shifts)
    if report:
        notes.insert(0, "accuracy recovery: " + "; ".join(
            f"{name} {_describe(info)}" for name, info in report.items()))
    return Recovery(model=model, report=report, notes=tuple(notes))


def _rounding_info(rounded, found: Sequence[Target], start: float) -> dict:
    ratios = list(rounded.error_ratio.values())
    return {"mode": "gptq", "layers": len(rounded.weights), "candidates": len(found),
            "mean_error_ratio": round(float(np.mean(ratios)), 4) if ratios else None,
            "skipped": dict(sorted(rounded.skipped.items())),
            "seconds": round(time.perf_counter() - start, 3)}


def _with_weights(model: onnx.ModelProto, graph, found: Sequence[Target],
                  weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    values = {(t.node, t.weight_index): weights[t.node] for t in found if t.node in weights}
    return Pipeline([SetWeightPass(weights=values)]).run(model, copy=False).model


def _describe(info: dict) -> str:
    parts = [f"{info.get('mode', '')} on {info['layers']} layer(s)".strip()]
    parts.append(f"{info['seconds']:.1f} s")
    return "(" + ", ".join(parts) + ")"


def _shift_info(mode: str, shifts: Mapping[str, np.ndarray], found: Sequence[Target],
                start: float) -> dict:
    return {"mode": mode, "layers": len(shifts), "candidates": len(found),
            "seconds": round(time.perf_counter() - start, 3)}


def _with_shifts(model: onnx.ModelProto, graph, found: Sequence[Target],
                 shifts: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    nodes = {n.name: n for n in graph.nodes}
    biases = {}
    for t in found:
        shift, holder = shifts.get(t.node), nodes.get(t.holder)
        if shift is None or holder is None:
            continue
        old = G.constant_value(holder.inputs[t.bias_index])
        if old is None or old.size != shift.size:
            continue
        stored = old.astype(np.float64) + shift.reshape(old.shape) / (t.beta or 1.0)
        biases[(t.holder, t.bias_index)] = stored.astype(np.float32)
    return Pipeline([SetBiasPass(biases=biases)]).run(model, copy=False).model


def smooth_first(model: onnx.ModelProto, plan: QuantPlan, data: Iterable[Feed],
                 recipe: RecipeConfig) -> tuple[Smoothed, Iterable[Feed]]:
    """SmoothQuant (``recipe.smooth_alpha``) on the prepared float model, from the first
    ``recipe.samples`` calibration feeds; returns it and the calibration data, whole again
    (the feeds read are chained back in front of the rest)."""
    it = iter(data)
    head = list(itertools.islice(it, recipe.samples))
    rest = itertools.chain(head, it) if not hasattr(data, "__len__") else data
    return smooth(model, plan, head, recipe.smooth_alpha), rest
