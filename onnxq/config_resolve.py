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

__all__ = ["resolve", "resolve_config", "types_for", "stamp_target", "TARGET_KEY", "WEIGHT_BITS_KEY"]


def resolve(config: QuantConfig) -> QuantConfig:
    """``config`` with ``target="auto"`` replaced by the concrete target, so that the saved
    configuration says which types were chosen and reproduces them on any machine."""
    try:
        concrete = resolve_target(config.target)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return config if concrete == config.target else config.with_overrides(target=concrete)


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
