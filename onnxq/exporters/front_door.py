"""The one front door for every model type: ONNX passes through, framework models (torch,
TorchScript, Keras, SavedModel, TFLite) are exported first, with example inputs taken from the
first calibration feed when the exporter needs them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from onnxq.errors import CalibrationError, ConfigError

__all__ = ["as_onnx"]


def as_onnx(model, calibration_data=None, *, export_options: Mapping | None = None):
    """The one front door: return ``(onnx model or .onnx path, calibration data)``.

    ONNX models pass through untouched. Framework models (a ``torch.nn.Module``, TorchScript
    ``.pt``, Keras model or ``.keras``/``.h5``, SavedModel folder, ``.tflite``) are exported
    first (``onnxq.exporters.export_model``). Torch sources need example inputs: unless
    ``export_options`` gives ``example_inputs``/``input_shapes``, the first calibration feed
    is used (its keys become the ONNX input names, in order). An onnxruntime-style reader
    (anything with ``get_next()`` that is not iterable) becomes the iterable of its feeds.
    """
    if calibration_data is not None and hasattr(calibration_data, "get_next") \
            and not hasattr(calibration_data, "__iter__"):
        calibration_data = iter(calibration_data.get_next, None)
    if isinstance(model, onnx.ModelProto):
        return model, calibration_data
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() == ".onnx":
        return os.fspath(model), calibration_data
    from onnxq.exporters import export_model

    options = dict(export_options or {})
    if _needs_examples(model) and not {"example_inputs", "input_shapes"} & set(options):
        if calibration_data is None:
            raise ConfigError("exporting this model needs example inputs: give calibration "
                              "data or export_options={'input_shapes': [(1, 3, 224, 224)]}")
        first, calibration_data = _peek(calibration_data)
        options.setdefault("input_names", list(first))
        options["example_inputs"] = tuple(_torch_tensor(v) for v in first.values())
    return export_model(model, **options), calibration_data


def _needs_examples(model) -> bool:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return True
    return isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() in (".pt",
                                                                                   ".pth")


def _torch_tensor(value):
    import torch

    return torch.from_numpy(np.ascontiguousarray(value))


def _peek(data):
    if isinstance(data, Mapping):
        raise CalibrationError("calibration data must be an iterable of feeds (dicts), not a "
                               "single dict; wrap it in a list: [feed]")
    if isinstance(data, (list, tuple)):
        if not data:
            raise CalibrationError("calibration data is empty: give at least one feed")
        return data[0], data
    import itertools

    iterator = iter(data)
    try:
        first = next(iterator)
    except StopIteration:
        raise CalibrationError("calibration data is empty: give at least one feed") from None
    return first, itertools.chain([first], iterator)
