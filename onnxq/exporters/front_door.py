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
        return model, _framework_data(calibration_data, model)
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() == ".onnx":
        return os.fspath(model), _framework_data(calibration_data, os.fspath(model))
    from onnxq.exporters import export_model

    options = dict(export_options or {})
    if _needs_examples(model) and not {"example_inputs", "input_shapes"} & set(options):
        if _framework_kind(calibration_data):
            raise ConfigError("exporting needs example inputs, and a framework dataset's items "
                              "do not say which element is which input: pass "
                              "export_options={'input_shapes': [...]} (or example_inputs)")
        if calibration_data is None:
            raise ConfigError("exporting this model needs example inputs: give calibration "
                              "data or export_options={'input_shapes': [(1, 3, 224, 224)]}")
        first, calibration_data = _peek(calibration_data)
        options.setdefault("input_names", list(first))
        options["example_inputs"] = tuple(_torch_tensor(v) for v in first.values())
    exported = export_model(model, **options)
    return exported, _framework_data(calibration_data, exported)


class _FrameworkFeeds:
    """A PyTorch ``DataLoader``/``Dataset`` or a ``tf.data.Dataset`` as onnxq feeds: a dict
    element maps by name, a tuple or list to the model's inputs in order (extra elements,
    such as labels, are dropped), a lone tensor to the first input; an element one axis short
    of its input (a ``Dataset`` item) gets the batch axis."""

    def __init__(self, data, kind: str, inputs) -> None:
        self.data, self.kind, self.inputs = data, kind, inputs

    def __iter__(self):
        names = [i.name for i in self.inputs]
        ranks = {i.name: len(i.dims) for i in self.inputs}
        for item in self._items():
            if isinstance(item, Mapping):  # by name; other keys (labels…) are dropped
                pairs = [(k, v) for k, v in item.items() if k in ranks]
                if not pairs:
                    raise CalibrationError(f"dataset items have keys {sorted(item)} but the "
                                           f"model's inputs are {names}")
            elif isinstance(item, (tuple, list)):
                pairs = list(zip(names, item, strict=False))
            else:
                pairs = [(names[0], item)]
            feed = {}
            for name, value in pairs:
                array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach")
                                   else value)
                feed[name] = array[None] if array.ndim == ranks.get(name, -1) - 1 else array
            yield feed

    def _items(self):
        if self.kind == "tf":
            return self.data.as_numpy_iterator()
        if self.kind == "torch-map":  # a map-style Dataset: by index, not __getitem__ guessing
            return (self.data[i] for i in range(len(self.data)))
        return iter(self.data)


def _framework_kind(data) -> str | None:
    import sys

    torch, tf = sys.modules.get("torch"), sys.modules.get("tensorflow")
    if torch is not None:
        tud = torch.utils.data
        if isinstance(data, tud.DataLoader) or isinstance(data, tud.IterableDataset):
            return "torch"
        if isinstance(data, tud.Dataset):
            return "torch-map" if hasattr(data, "__len__") else "torch"
    if tf is not None and isinstance(data, tf.data.Dataset):
        return "tf"
    return None


def _framework_data(data, model):
    """``data`` as feeds when it is a PyTorch or TensorFlow dataset; else unchanged."""
    kind = _framework_kind(data)
    if kind is None:
        return data
    from onnxq.raw_data import model_inputs

    return _FrameworkFeeds(data, kind, model_inputs(model))


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
