"""onnxruntime's quantization API on onnxq: switch with one import.

    # from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
    #                                       quantize_static)
    from onnxq.compat import CalibrationDataReader, QuantFormat, QuantType, quantize_static

``quantize_static`` and ``quantize_dynamic`` take onnxruntime's argument names and enums (this
module's, or onnxruntime's own: they are matched by name). Every option maps to onnxq's config
(see docs/migration.md); an option onnxq does differently is an error that says what to do.
Types left at their defaults follow onnxq's target CPU (u8 activations, s8 weights on x86:
onnxruntime's own s8-activation default runs several times slower there); types given
explicitly are used as given.
"""

from __future__ import annotations

import abc
import enum
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import onnx

from onnxq.api import QuantResult, quantize
from onnxq.errors import ConfigError
from onnxq.quant_ops import HANDLERS

__all__ = ["CalibrationDataReader", "QuantFormat", "QuantType", "CalibrationMethod",
           "quantize_static", "quantize_dynamic", "reader_feeds"]


class QuantFormat(enum.Enum):
    QOperator = 0
    QDQ = 1


class QuantType(enum.Enum):
    QInt8 = 0
    QUInt8 = 1


class CalibrationMethod(enum.Enum):
    MinMax = 0
    Entropy = 1
    Percentile = 2
    Distribution = 3


class CalibrationDataReader(abc.ABC):
    """onnxruntime's reader protocol: ``get_next()`` returns a feed, then None."""

    @abc.abstractmethod
    def get_next(self) -> dict | None: ...

    def rewind(self) -> None:  # noqa: B027 - optional, as in onnxruntime
        """Start again from the first feed (readers that can)."""

    def __iter__(self) -> Iterator[dict]:
        return reader_feeds(self)


def reader_feeds(reader: Any) -> Iterator[dict]:
    """The feeds of anything with onnxruntime's ``get_next()`` (ours or onnxruntime's)."""
    return iter(reader.get_next, None)


_FORMATS = {"QDQ": "qdq", "QOperator": "qlinear"}
_TYPES = {"QInt8": "s8", "QUInt8": "u8"}
_METHODS = {"MinMax": "minmax", "Entropy": "entropy", "Percentile": "percentile"}
#: extra_options onnxq maps (onnxruntime name → onnxq override); anything else is an error
_EXTRA = {"ActivationSymmetric": "activation_symmetric", "CalibPercentile": "percentile",
          "CalibTensorRangeSymmetric": "activation_symmetric"}


def _name(value: Any, table: Mapping[str, str], what: str) -> str:
    name = getattr(value, "name", value)
    if name not in table:
        raise ConfigError(f"{what}={name!r} is not supported by onnxq (it supports "
                          f"{', '.join(table)}); see docs/migration.md")
    return table[name]


def _nodes(model: str | Path | onnx.ModelProto) -> list[tuple[str, str]]:
    """(name, op type) of every node as onnxq plans it: after its preprocessing and fusion
    (a MatMul + bias Add is one Gemm there), with onnxq's names for unnamed nodes, in every
    subgraph."""
    from onnxq.passes import FusionPass, PreprocessPass
    from onnxq.pipeline import ForEachGraph, Pipeline
    from onnxq.scopes import all_nodes

    prepared = Pipeline([PreprocessPass(), ForEachGraph(FusionPass())]).run(
        os.fspath(model) if isinstance(model, (str, Path)) else model).model
    return [(n.name, n.op_type) for n in all_nodes(prepared.graph)]


def _common(model_input, op_types_to_quantize, per_channel, reduce_range, weight_type,
            nodes_to_quantize, nodes_to_exclude, extra_options) -> dict[str, Any]:
    options: dict[str, Any] = {"per_channel": bool(per_channel)}
    if reduce_range:
        options["reduce_range"] = True
    if weight_type is not None:
        options["weight_type"] = _name(weight_type, _TYPES, "weight_type")
    exclude = list(nodes_to_exclude or [])
    if nodes_to_quantize or op_types_to_quantize:
        nodes = _nodes(model_input)
        if nodes_to_quantize:  # a MatMul named there also keeps the Gemm it became
            keep = set(nodes_to_quantize)
            exclude += [n for n, _ in nodes if n not in keep]
        if op_types_to_quantize:  # the other quantizable types this model has
            wanted = set(op_types_to_quantize) | ({"Gemm"} if "MatMul" in
                                                  op_types_to_quantize else set())
            present = {op for _, op in nodes} & set(HANDLERS)
            options["exclude_op_types"] = sorted(present - wanted)
    if exclude:
        options["exclude_nodes"] = sorted(set(exclude))
    for key, value in (extra_options or {}).items():
        if key == "WeightSymmetric" and value:
            continue  # onnxq's weights are always symmetric
        if key not in _EXTRA:
            raise ConfigError(f"extra_options[{key!r}] has no onnxq equivalent (mapped: "
                              f"{', '.join(_EXTRA)}, WeightSymmetric=True); see "
                              "docs/migration.md")
        options[_EXTRA[key]] = value
    return options


def quantize_static(model_input: str | Path | onnx.ModelProto, model_output: str | Path,
                    calibration_data_reader: Any = None, quant_format: Any = QuantFormat.QDQ,
                    op_types_to_quantize=None, per_channel: bool = False,
                    reduce_range: bool = False, activation_type: Any = None,
                    weight_type: Any = None, nodes_to_quantize=None, nodes_to_exclude=None,
                    use_external_data_format: bool = False,
                    calibrate_method: Any = CalibrationMethod.MinMax,
                    calibration_providers=None, extra_options: Mapping | None = None,
                    calibration_cache_path=None) -> QuantResult:
    """onnxruntime's ``quantize_static`` on onnxq; writes ``model_output`` and also returns
    onnxq's ``QuantResult`` (report included). ``use_external_data_format`` is automatic (a
    model over 2 GiB gets its weights beside it), ``calibration_providers`` must be the CPU."""
    if calibration_data_reader is None:
        raise ConfigError("quantize_static needs a calibration_data_reader (or use "
                          "quantize_dynamic, which needs none)")
    if calibration_providers not in (None, ["CPUExecutionProvider"]):
        raise ConfigError("onnxq calibrates on onnxruntime's CPU EP only: drop "
                          "calibration_providers")
    if calibration_cache_path is not None:
        raise ConfigError("calibration_cache_path: onnxq keeps no calibration cache; save "
                          "ranges with onnxq.calibrate and pass them as ranges= instead")
    options = _common(model_input, op_types_to_quantize, per_channel, reduce_range,
                      weight_type, nodes_to_quantize, nodes_to_exclude, extra_options)
    if activation_type is not None:
        options["activation_type"] = _name(activation_type, _TYPES, "activation_type")
    options["calibrator"] = _name(calibrate_method, _METHODS, "calibrate_method")
    options["format"] = _name(quant_format, _FORMATS, "quant_format")
    feeds = reader_feeds(calibration_data_reader)
    result = quantize(model_input, feeds, progress=False, **options)
    result.save(model_output)
    return result


def quantize_dynamic(model_input: str | Path | onnx.ModelProto, model_output: str | Path,
                     op_types_to_quantize=None, per_channel: bool = False,
                     reduce_range: bool = False, weight_type: Any = None,
                     nodes_to_quantize=None, nodes_to_exclude=None,
                     use_external_data_format: bool = False,
                     extra_options: Mapping | None = None) -> QuantResult:
    """onnxruntime's ``quantize_dynamic`` on onnxq (``mode = "dynamic"``, the fused
    ``DynamicQuantizeMatMul`` form onnxruntime writes)."""
    options = _common(model_input, op_types_to_quantize, per_channel, reduce_range,
                      weight_type, nodes_to_quantize, nodes_to_exclude, extra_options)
    result = quantize(model_input, None, progress=False, mode="dynamic", format="qlinear",
                      **options)
    result.save(model_output)
    return result
