"""One frozen, validated configuration for a quantization run.

``QuantConfig.from_dict`` rejects unknown keys and lists the valid ones; ``to_dict`` and
``from_dict`` round-trip through JSON and TOML.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from onnxq.calibrators import CALIBRATORS, METHODS
from onnxq.errors import ConfigError
from onnxq.kernels.isa import TARGETS
from onnxq.qtypes import QTYPES

__all__ = ["ActivationConfig", "WeightConfig", "CalibrationConfig", "QuantConfig", "FORMATS",
           "MODES", "CALIBRATORS", "WEIGHT_ONLY_OPS", "PlacementConfig", "OBJECTIVES",
           "RecipeConfig", "BIAS_CORRECTION", "ROUNDING", "RECIPES"]

#: Output forms of a quantized model: name → description (the lowering passes are chosen in
#: ``onnxq.api``, keyed by these names). Read-only.
FORMATS: Mapping[str, str] = MappingProxyType({
    "qdq": "QuantizeLinear/DequantizeLinear around float ops (onnxruntime fuses them)",
    "qlinear": "onnxruntime's integer operators (QLinearConv, QGemm, QLinearMatMul, ...)"})
_TYPES = tuple(QTYPES)

#: Quantization modes: name → description. Read-only.
MODES: Mapping[str, str] = MappingProxyType({
    "static": "int8 activations with ranges calibrated ahead of time (needs calibration "
              "data); every int8 kernel, Conv included",
    "dynamic": "int8 weights; each MatMul/Gemm quantizes its input at run time (no "
               "calibration data): DynamicQuantizeMatMul, DynamicQuantizeLSTM, int8 "
               "embeddings; Conv and the rest stay float"})

#: Ops whose weights may be stored int8 without an int8 kernel (``weight.weight_only_ops``).
WEIGHT_ONLY_OPS: Mapping[str, str] = MappingProxyType({
    "Gather": "embedding tables: int8 rows, dequantized after the Gather (only the rows "
              "read); on by default",
    "GRU": "int8 W/R dequantized on every run: a smaller model but slower on onnxruntime "
           "(no int8 GRU kernel; measured 0.6-0.9x FP32), so off by default",
    "RNN": "as GRU: smaller, slower; off by default",
})


_KINDS: dict[str, tuple[type, ...]] = {"bool": (bool,), "int": (int,), "float": (int, float),
                                      "str": (str,)}


def _check_types(obj: Any, where: str) -> None:
    """Every field has its declared type: a TOML/JSON string "false" is not a bool, 1 is not a
    bool, 2.5 is not an int; floats are finite. Names the key."""
    import math

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kinds = str(f.type).replace(" ", "").split("|")
        if value is None and "None" in kinds:
            continue
        allowed = tuple(t for k in kinds for t in _KINDS.get(k, ()))
        if not allowed:  # nested configs and tuples are checked where they are built
            continue
        ok = isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool))
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            article = {"bool": "a boolean", "int": "an integer", "float": "a finite number",
                       "str": "a string"}
            want = " or ".join(article.get(k, k) for k in kinds if k != "None")
            hint = (": write true or false, without quotes" if "bool" in kinds
                    and isinstance(value, str) else "")
            raise ConfigError(f"{where}{f.name}={value!r} must be {want}"
                              + (" (or left out)" if "None" in kinds else "")
                              + f", not {type(value).__name__}{hint}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(choices)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationConfig:
    """Activation quantization. ``dtype=None`` follows the CPU (u8 on x86)."""

    dtype: str | None = None
    symmetric: bool = False

    def __post_init__(self) -> None:
        _check_types(self, "activation.")
        if self.dtype is not None:
            _check_choice("activation.dtype", self.dtype, _TYPES)


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightConfig:
    """Weight quantization: symmetric, per output channel by default.

    ``reduce_range=None`` follows the CPU (7-bit weights only on x86 without VNNI).
    """

    dtype: str = "s8"
    per_channel: bool = True
    reduce_range: bool | None = None
    #: ops with no int8 kernel whose constant weights are still stored int8 and dequantized
    #: at run time (see ``WEIGHT_ONLY_OPS``)
    weight_only_ops: tuple[str, ...] = ("Gather",)

    def __post_init__(self) -> None:
        _check_types(self, "weight.")
        _check_choice("weight.dtype", self.dtype, _TYPES)
        ops = self.weight_only_ops
        if isinstance(ops, str) or not all(isinstance(o, str) for o in ops):
            raise ConfigError(f"weight.weight_only_ops must be a list of op types, got {ops!r}")
        for op in ops:
            _check_choice("weight.weight_only_ops", op, tuple(WEIGHT_ONLY_OPS))
        object.__setattr__(self, "weight_only_ops", tuple(ops))


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationConfig:
    """How activation ranges are measured. ``percentile`` and ``num_bins`` apply to the
    histogram methods (entropy, percentile, mse)."""

    method: str = "auto"
    max_samples: int | None = None
    allow_nonfinite: bool = False
    percentile: float = 99.999
    num_bins: int = 2048

    def __post_init__(self) -> None:
        _check_types(self, "calibration.")
        _check_choice("calibration.method", self.method, METHODS)
        if self.method == "entropy" and self.num_bins < 512:
            raise ConfigError(f"calibration.num_bins={self.num_bins} is too few for the entropy "
                              "calibrator: it needs >= 512 (4 x its 128 quantization bins)")
        if not 50.0 <= float(self.percentile) <= 100.0:
            raise ConfigError(f"calibration.percentile={self.percentile} must be in [50, 100]")
        if int(self.num_bins) != self.num_bins or not 128 <= self.num_bins <= 1 << 16:
            raise ConfigError(f"calibration.num_bins={self.num_bins} must be an integer in "
                              "[128, 65536]")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"calibration.max_samples={self.max_samples} must be >= 1")


#: ``target_ep`` choices: name → what the model is made for. Read-only.
TARGET_EPS: Mapping[str, str] = MappingProxyType({
    "cpu": "onnxruntime's CPU EP (QDQ or QLinear; its contrib ops where faster)",
    "openvino": "the OpenVINO EP: QDQ, standard ops, int8 at the compute ops' inputs",
    "auto": "openvino where this onnxruntime has the OpenVINO EP, else cpu"})


#: What the placement optimises (``placement.objective``): name → description. Read-only.
OBJECTIVES: Mapping[str, str] = MappingProxyType({
    "latency": "int8 or float per region, whichever the cost model predicts faster at batch 1 "
               "(conversions included); int8 wins near-ties",
    "balanced": "as latency, but a region goes float only when that is predicted >= 20% "
                "faster (a smaller model for a little speed)",
    "size": "int8 wherever onnxq can quantize, whatever the speed (the smallest model)"})


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementConfig:
    """Latency-aware placement (``onnxq.placement``)."""

    objective: str = "latency"
    #: "target" (the table shipped for the target ISA), "host" (measured on this machine once,
    #: then cached per CPU model and onnxruntime version) or the path of a table (JSON)
    cost_table: str = "target"

    def __post_init__(self) -> None:
        _check_types(self, "placement.")
        _check_choice("placement.objective", self.objective, tuple(OBJECTIVES))
        if not self.cost_table:
            raise ConfigError('placement.cost_table must be "target", "host" or a path')


#: ``recipe.bias_correction`` modes: name → description. Read-only.
BIAS_CORRECTION: Mapping[str, str] = MappingProxyType({
    "off": "biases as calibrated",
    "fast": "cancel each layer's mean output shift caused by its int8 weights, from the "
            "calibration statistics (no extra model run)",
    "full": "layer by layer on the quantized upstream: match each layer's output mean to "
            "FP32's on kept calibration feeds (weights, activation rounding and upstream "
            "error; one extra run of the feeds per network level)"})


#: ``recipe.rounding`` modes: name → description. Read-only.
ROUNDING: Mapping[str, str] = MappingProxyType({
    "nearest": "each int8 weight rounded to nearest",
    "gptq": "each layer's int8 weights rounded to minimize its output error on the "
            "calibration data (Hessian-based, GPTQ/OBQ-style; same scales, no extra model run)"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipeConfig:
    """Accuracy recovery beyond range calibration (``onnxq.recovery``)."""

    bias_correction: str = "fast"
    rounding: str = "nearest"
    #: convolutions reading the model's data: "int8", or "float" (int8 re-grids the data)
    data_layers: str = "int8"
    #: SmoothQuant's strength (0 = off, 0.5 usual): outlier channels move into the weights
    smooth_alpha: float = 0.0
    equalize: bool = False  # cross-layer equalization of conv pairs (an exact rewrite)
    #: calibration feeds kept for the data-driven algorithms (full bias correction)
    samples: int = 64
    #: seconds the data-driven algorithms may take in all (they stop there, and say so)
    time_budget_s: float = 300.0

    def __post_init__(self) -> None:
        _check_types(self, "recipe.")
        _check_choice("recipe.bias_correction", self.bias_correction, tuple(BIAS_CORRECTION))
        _check_choice("recipe.rounding", self.rounding, tuple(ROUNDING))
        if self.samples < 1:
            raise ConfigError(f"recipe.samples={self.samples} must be >= 1")
        _check_choice("recipe.data_layers", self.data_layers, ("float", "int8"))
        if not 0.0 <= self.smooth_alpha <= 1.0:
            raise ConfigError(f"recipe.smooth_alpha={self.smooth_alpha} must be in [0, 1] "
                              "(0 = off, 0.5 usual)")
        if self.time_budget_s <= 0:
            raise ConfigError(f"recipe.time_budget_s={self.time_budget_s} must be > 0")

    @property
    def is_plain(self) -> bool:
        return self.bias_correction == "off" and self.rounding == "nearest"


#: ``--recipe`` names: name → (the fields it sets, as ``quantize`` overrides; description).
RECIPES: Mapping[str, tuple[dict[str, Any], str]] = MappingProxyType({
    "plain": ({"bias_correction": "off", "rounding": "nearest", "data_layers": "int8"},
              "range calibration only, every layer int8"),
    "float-data": ({"data_layers": "float"}, "the convolutions reading the model's data stay float"),
    "bc-fast": ({"bias_correction": "fast"}, BIAS_CORRECTION["fast"]),
    "bc-full": ({"bias_correction": "full"}, BIAS_CORRECTION["full"]),
    "nearest": ({"rounding": "nearest"}, ROUNDING["nearest"]),
    "gptq": ({"rounding": "gptq"}, ROUNDING["gptq"]),
    "smoothquant": ({"smooth_alpha": 0.5}, "SmoothQuant (alpha 0.5): MatMul inputs with outlier "
                    "channels pass them to the weights before calibration"),
    "cle": ({"equalize": True}, "cross-layer equalization of Conv-Relu-Conv pairs (exact)"),
    "u8-weights": ({"weight_type": "u8", "reduce_range": False}, "8-bit u8 weights: exact on "
                   "every x86 CPU, slower than 7-bit s8 ones without VNNI"),
})


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantConfig:
    """Everything that decides what a quantization run writes."""

    format: str = "qdq"
    mode: str = "static"
    activation: ActivationConfig = field(default_factory=ActivationConfig)
    weight: WeightConfig = field(default_factory=WeightConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    fold_activations: bool = True
    min_opset: int = 13
    #: dynamic mode: fuse BERT-style attention first (QAttention; measured slower on Zen 4)
    fuse_attention: bool = False
    #: the ISA the types are chosen for (``kernels.isa.TARGETS``); ``auto``: this host's (or
    #: ``$ONNXQ_TARGET``), resolved once at the start of a run
    target: str = "auto"
    #: the execution provider the model is made for (``TARGET_EPS``)
    target_ep: str = "cpu"

    def __post_init__(self) -> None:
        _check_types(self, "")
        _check_choice("target_ep", self.target_ep, tuple(TARGET_EPS))
        for name, klass in (("activation", ActivationConfig), ("weight", WeightConfig),
                            ("calibration", CalibrationConfig),
                            ("placement", PlacementConfig), ("recipe", RecipeConfig)):
            if not isinstance(getattr(self, name), klass):
                raise ConfigError(f"{name} must be a {klass.__name__} (a table in a file)")
        _check_choice("format", self.format, tuple(FORMATS))
        _check_choice("mode", self.mode, tuple(MODES))
        _check_choice("target", self.target, tuple(TARGETS))
        for name in ("exclude_nodes", "exclude_op_types"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not 10 <= self.min_opset <= 21:
            raise ConfigError(f"min_opset={self.min_opset} must be between 10 and 21")

    # -- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["exclude_nodes"] = list(self.exclude_nodes)
        data["exclude_op_types"] = list(self.exclude_op_types)
        data["weight"]["weight_only_ops"] = list(self.weight.weight_only_ops)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"configuration must be a mapping, got {type(data).__name__}")
        nested = {"activation": ActivationConfig, "weight": WeightConfig,
                  "calibration": CalibrationConfig, "placement": PlacementConfig,
                  "recipe": RecipeConfig}
        kwargs: dict[str, Any] = {}
        for key, value in _checked_items(cls, data, "config"):
            if key in nested:
                if not isinstance(value, dict):
                    raise ConfigError(f"config.{key} must be a table/mapping")
                kwargs[key] = nested[key](**dict(_checked_items(nested[key], value, key)))
            else:
                kwargs[key] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:  # wrong value types surface here
            raise ConfigError(f"invalid configuration: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> QuantConfig:
        """Load a ``.toml`` or ``.json`` configuration file."""
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config path {str(p)!r} is a directory; give a .toml or .json "
                              "file")
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; check the path")
        try:
            text = p.read_text()
            data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot parse config file {str(p)!r}: {exc}") from None
        return cls.from_dict(data)

    # -- flat overrides (API keywords and CLI flags) -----------------------------------
    def with_overrides(self, **overrides: Any) -> QuantConfig:
        """Return a copy with flat overrides applied (see ``OVERRIDES`` for the names)."""
        data = self.to_dict()
        for key, value in overrides.items():
            if key in OVERRIDES:
                section, name = OVERRIDES[key]
                data[section][name] = value
            elif key in data and key not in _SECTIONS:
                data[key] = value
            else:
                valid = sorted(set(OVERRIDES) | {k for k in data if not isinstance(data[k], dict)})
                raise ConfigError(f"unknown option {key!r}; valid options: {', '.join(valid)}")
        return QuantConfig.from_dict(data)


#: Flat option names accepted by ``quantize(**overrides)`` and mapped into sub-configs.
OVERRIDES: dict[str, tuple[str, str]] = {
    "activation_type": ("activation", "dtype"),
    "activation_symmetric": ("activation", "symmetric"),
    "weight_type": ("weight", "dtype"),
    "per_channel": ("weight", "per_channel"),
    "reduce_range": ("weight", "reduce_range"),
    "weight_only_ops": ("weight", "weight_only_ops"),
    "calibrator": ("calibration", "method"),
    "max_samples": ("calibration", "max_samples"),
    "allow_nonfinite": ("calibration", "allow_nonfinite"),
    "percentile": ("calibration", "percentile"),
    "num_bins": ("calibration", "num_bins"),
    "objective": ("placement", "objective"),
    "cost_table": ("placement", "cost_table"),
    "bias_correction": ("recipe", "bias_correction"),
    "rounding": ("recipe", "rounding"),
    "data_layers": ("recipe", "data_layers"),
    "smooth_alpha": ("recipe", "smooth_alpha"), "equalize": ("recipe", "equalize"),
    "recipe_samples": ("recipe", "samples"),
    "recipe_budget_s": ("recipe", "time_budget_s"),
}
_SECTIONS = {"activation", "weight", "calibration", "placement", "recipe"}


def recipe_overrides(names: str) -> dict[str, Any]:
    """Flat overrides for a ``--recipe`` list such as ``"bc-full"`` (later names win)."""
    fields: dict[str, Any] = {}
    for name in (n.strip() for n in names.split(",")):
        if name not in RECIPES:
            raise ConfigError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)} "
                              "(comma-separated; later names win)")
        fields |= RECIPES[name][0]
    return fields


def _checked_items(klass: type, data: dict[str, Any], where: str):
    valid = [f.name for f in dataclasses.fields(klass)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
                          f"valid keys: {', '.join(valid)}")
    return data.items()
