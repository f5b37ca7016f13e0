"""A configuration made concrete for this run: ``target="auto"`` resolved, the int8 types
it implies, and the stamp that records them in the model's metadata."""

from __future__ import annotations

import os
from collections.abc import Mapping

import onnx

from onnxq.config import QuantConfig
from onnxq.errors import ConfigError
from onnxq.kernels.isa import resolve_target, target_of
from onnxq.qtypes import QTYPES, QType

__all__ = ["resolve", "resolve_config", "check_sources", "types_for", "stamp_target", "TARGET_KEY", "WEIGHT_BITS_KEY"]


#: ops kept float for the OpenVINO EP: element-wise and activation ops (OpenVINO fuses them
#: into the int8 convolutions and matmuls whose inputs are quantized; Q/DQ around them break
#: that) and LSTM (its int8 form is a com.microsoft op the OpenVINO EP cannot run, which
#: splits the graph between the two EPs: 0.64x FP32 on a CRNN, 1.42x with LSTM float)
OPENVINO_FLOAT_OPS = ("LSTM", "Mul", "AveragePool", "GlobalAveragePool",
                      "Sigmoid", "LeakyRelu", "Softmax", "HardSigmoid", "HardSwish")


def resolve(config: QuantConfig) -> QuantConfig:
    """``config`` with ``target="auto"`` replaced by the concrete target, so that the saved
    configuration says which types were chosen and reproduces them on any machine; and with
    ``target_ep`` resolved and applied (the OpenVINO EP: QDQ, ``OPENVINO_FLOAT_OPS`` added to
    ``exclude_op_types``, so the saved configuration shows it)."""
    try:
        concrete = resolve_target(config.target)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    changes: dict = {} if concrete == config.target else {"target": concrete}
    ep = config.target_ep
    if ep == "auto":
        from onnxq.runtime import available_providers

        ep = "openvino" if "OpenVINOExecutionProvider" in available_providers() else "cpu"
        changes["target_ep"] = ep
    if ep == "openvino":
        if config.format != "qdq" or config.mode != "static":
            raise ConfigError("target_ep openvino needs format qdq and mode static: the "
                              "OpenVINO EP runs QDQ models and leaves QLinear and dynamic "
                              "int8 ops to the CPU EP; drop --format/--mode or target the "
                              "CPU EP")
        extra = [op for op in OPENVINO_FLOAT_OPS if op not in config.exclude_op_types]
        if extra:
            changes["exclude_op_types"] = [*config.exclude_op_types, *extra]
        if config.placement.objective == "latency":  # the CPU EP's cost table does not
            changes["objective"] = "size"            # describe OpenVINO's kernels
        changes["activation_symmetric"] = True  # zero point 0 (``ep_check``)
    return config.with_overrides(**changes) if changes else config


def types_for(config: QuantConfig) -> tuple[QType, QType, bool]:
    """(activation type, weight type, reduce_range) for ``config`` on its target."""
    rec = target_of(resolve(config).target).recommendation
    act = QTYPES[config.activation.dtype] if config.activation.dtype else rec.activation
    weight = QTYPES[config.weight.dtype]
    reduce_range = rec.reduce_range if config.weight.reduce_range is None else \
        config.weight.reduce_range
    return act, weight, reduce_range


TARGET_KEY, WEIGHT_BITS_KEY = "onnxq.target", "onnxq.weight_bits"


def stamp_target(model: onnx.ModelProto, target: str, reduce_range: bool) -> None:
    """Record the target ISA and weight width in the model's metadata (``onnxq inspect``)."""
    values = {TARGET_KEY: target, WEIGHT_BITS_KEY: "7" if reduce_range else "8"}
    keep = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)


def resolve_config(config: QuantConfig | Mapping | str | os.PathLike | None,
                   overrides: dict) -> QuantConfig:
    """The resolved configuration a ``config`` argument (object, mapping, file) and flat
    ``overrides`` describe."""
    if config is None:
        base = QuantConfig()
    elif isinstance(config, QuantConfig):
        base = config
    elif isinstance(config, Mapping):
        base = QuantConfig.from_dict(dict(config))
    elif isinstance(config, (str, os.PathLike)):
        base = QuantConfig.from_file(config)
    else:
        raise ConfigError(f"config must be a QuantConfig, a dict or a file path, not "
                          f"{type(config).__name__}")
    return resolve(base.with_overrides(**overrides) if overrides else base)


def check_sources(cfg: QuantConfig, ranges, calibration_data) -> None:
    """``quantize`` has what it needs to find its ranges, and they fit the config."""
    if ranges is not None and cfg.recipe.smooth_alpha:
        raise ConfigError("recipe.smooth_alpha changes the tensors that ranges describe: give "
                          "calibration data instead of ranges, or set smooth_alpha = 0")
    if ranges is None and calibration_data is None:
        raise ConfigError("quantize needs calibration data (an iterable of feeds; CLI: "
                          "--calib-data PATH) or precomputed ranges (--ranges FILE.json)")
