"""Framework models to ONNX: one front door, ``export_model``.

``export_model(source)`` accepts an ``onnx.ModelProto``, a path to an ``.onnx`` file, a
``torch.nn.Module``, a TorchScript ``.pt``/``.pth`` file, a Keras model (object or
``.keras``/``.h5`` file), a TensorFlow SavedModel folder or a ``.tflite`` file, and returns a
self-contained, validated ``onnx.ModelProto`` ready for ``onnxq.quantize``.

The framework modules (``onnxq.exporters.torch``, ``onnxq.exporters.tensorflow``) are imported
only when a model of that kind is exported: ``import onnxq`` never imports torch or
TensorFlow. A missing optional dependency raises ``OnnxqError`` naming the extra to install
(``pip install 'onnxq[torch]'`` or ``'onnxq[tf]'``).

Every exporter validates what it produces (node types known to ONNX, the full ONNX checker,
an onnxruntime CPU session): converters can "succeed" and still write a model that cannot
run (tf2onnx leaves TensorFlow ops it cannot convert in the graph; onnxq's TensorFlow exporter
converts ``Erfc``, from Keras' exact GELU, itself). Such a model raises ``UnsupportedOpError``
naming the op and a fix.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import onnx

from onnxq.errors import ModelError, OnnxqError, UnsupportedOpError

__all__ = ["export_model", "from_torch", "load_torchscript", "from_keras", "from_saved_model",
           "from_tflite", "validate_export"]

_SUPPORTED = (".onnx, .pt/.pth (TorchScript), .keras/.h5, SavedModel folder, .tflite, "
              "torch.nn.Module, keras.Model")

#: Fixes for ops a converter leaves behind that ONNX (Runtime) cannot run.
OP_HINTS: dict[str, str] = {
    "Erfc": "Keras' exact GELU (approximate=False) lowers to TensorFlow's Erfc, which "
            "tf2onnx does not convert: export the Keras model or SavedModel with onnxq (it "
            "writes Erfc as 1 - Erf), or use approximate GELU (keras.activations.gelu(x, "
            "approximate=True))",
    "TFL_GELU": "the TFLite converter fuses GELU into one TFL_GELU op, which tf2onnx 1.17 "
                "does not convert: export the .tflite file with onnxq (it writes the op with "
                "Erf or Tanh), or convert the Keras model or SavedModel instead",
}

_EXTRAS = {"torch": "torch", "tensorflow": "tf", "tf2onnx": "tf", "keras": "tf",
           "onnxscript": "torch"}


def require(module: str, extra: str | None = None) -> Any:
    """Import an optional dependency or raise ``OnnxqError`` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = extra or _EXTRAS.get(top, top)
        raise OnnxqError(
            f"exporting this model needs {top!r}, which is not installed ({exc}); "
            f"install it with: pip install 'onnxq[{extra}]'") from None


def first_line(exc: BaseException) -> str:
    """The first meaningful line of an exception message (ANSI colour codes removed)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    for line in text.splitlines():
        if line.strip():
            return f"{type(exc).__name__}: {line.strip()}"
    return type(exc).__name__


def _unknown_ops(model: onnx.ModelProto) -> list[str]:
    """Op types in the default ONNX domain that ONNX does not define at the model's opset."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None:
        return []
    unknown: list[str] = []
    nodes = list(model.graph.node)
    for func in model.functions:
        nodes.extend(func.node)
    for node in nodes:
        if node.domain not in ("", "ai.onnx") or node.op_type in unknown:
            continue
        try:
            onnx.defs.get_schema(node.op_type, version, "")
        except onnx.defs.SchemaError:
            unknown.append(node.op_type)
    return unknown


def _unsupported(ops: list[str], origin: str, detail: str) -> UnsupportedOpError:
    hints = [OP_HINTS[op] for op in ops if op in OP_HINTS]
    fix = "; ".join(hints) if hints else (
        "replace that layer in the source model, try another opset, or convert with a "
        "converter version that supports it")
    return UnsupportedOpError(
        f"{origin} produced a model with op(s) {', '.join(ops)} that ONNX Runtime cannot "
        f"run ({detail}); fix: {fix}")


def validate_export(model: onnx.ModelProto | str | os.PathLike, origin: str) -> None:
    """Raise ``UnsupportedOpError`` (naming the op) or ``ModelError`` if ``model`` cannot run.

    Checks, in order: op types unknown to ONNX, the full ONNX checker, an onnxruntime CPU
    session (whose "Could not find an implementation for OP" is parsed for the op).
    ``origin`` names the converter in messages (e.g. ``"tf2onnx 1.17"``).
    """
    from onnxq.io import validate_model

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(
        str(model), load_external_data=False)
    unknown = _unknown_ops(proto)
    if unknown:
        raise _unsupported(unknown, origin, "not ONNX operators")
    try:
        validate_model(model)
    except ModelError as exc:
        msg = str(exc)
        found = re.findall(r"(?:implementation for|No Op registered for) (\w+)", msg)
        if found:
            raise _unsupported(sorted(set(found)), origin, msg) from None
        raise ModelError(f"{origin} produced an invalid ONNX model: {msg}") from None


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _is_keras_model(obj: Any) -> bool:
    for name in ("keras", "tf_keras"):
        mod = sys.modules.get(name)
        if mod is not None and isinstance(obj, getattr(mod, "Model", ())):
            return True
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(obj, tf.keras.Model)


def export_model(source: Any, *, example_inputs: Any = None, input_shapes: Any = None,
                 opset: int | None = None, **kwargs: Any) -> onnx.ModelProto:
    """Turn ``source`` into a self-contained ``onnx.ModelProto`` (the one front door).

    ============================================  ==========================================
    ``source``                                    route
    ============================================  ==========================================
    ``onnx.ModelProto`` or ``.onnx`` path          loaded as is (``onnxq.io.load_model``)
    ``torch.nn.Module``                            ``from_torch`` (needs ``example_inputs``)
    ``.pt``/``.pth`` (TorchScript archive)         ``load_torchscript`` (``example_inputs``
                                                   or ``input_shapes``)
    Keras model, ``.keras``/``.h5`` file           ``from_keras`` (files loaded with
                                                   ``keras.models.load_model``)
    folder holding ``saved_model.pb``              ``from_saved_model``
    ``.tflite`` file                               ``from_tflite``
    ============================================  ==========================================

    ``opset`` is passed to the exporter (``None``: its default). ``input_shapes`` (a list of
    shapes, batch first) makes seeded random float32 example inputs for torch sources and a
    ``TensorSpec`` input signature for Keras. Other ``kwargs`` go to the exporter
    (``input_names``, ``dynamic_batch``, ``dynamo``, ...). Anything else raises
    ``ModelError`` listing the supported kinds.
    """
    if isinstance(source, onnx.ModelProto):
        from onnxq.io import load_model

        return load_model(source)
    if _is_torch_module(source):
        return _export_torch_module(source, example_inputs, input_shapes, opset, kwargs)
    if _is_keras_model(source):
        from onnxq.exporters.tensorflow import from_keras

        return from_keras(source, input_signature=kwargs.pop("input_signature", input_shapes),
                          **_opset(opset), **kwargs)
    if isinstance(source, (str, os.PathLike)):
        return _export_path(Path(source), example_inputs, input_shapes, opset, kwargs)
    raise ModelError(f"unknown model type {type(source).__module__}.{type(source).__name__}; "
                     f"supported: {_SUPPORTED}")


def _export_torch_module(module: Any, example_inputs: Any, input_shapes: Any,
                         opset: int | None, kwargs: dict[str, Any]) -> onnx.ModelProto:
    """``export_model`` for a ``torch.nn.Module``: ``from_torch`` on the example inputs."""
    from onnxq.exporters.torch import from_torch, make_example_inputs

    if example_inputs is None and input_shapes is not None:
        example_inputs = make_example_inputs(input_shapes)
    if example_inputs is None:
        raise OnnxqError("exporting a torch.nn.Module needs example_inputs (a tensor or a "
                         "tuple of tensors) or input_shapes=[(1, 3, 224, 224)]")
    return from_torch(module, example_inputs, opset=opset, **kwargs)


def _export_path(path: Path, example_inputs: Any, input_shapes: Any, opset: int | None,
                 kwargs: dict[str, Any]) -> onnx.ModelProto:
    """``export_model`` for a file or folder, routed by its suffix (or ``saved_model.pb``)."""
    if not path.exists():
        raise ModelError(f"model {str(path)!r} does not exist; check the path")
    if path.is_dir():
        return _export_folder(path, opset, kwargs)
    suffix = _suffix(path)
    if suffix == ".onnx":
        from onnxq.io import load_model

        return load_model(path)
    if suffix in (".pt", ".pth"):
        from onnxq.exporters.torch import load_torchscript

        return load_torchscript(path, example_inputs, input_shapes=input_shapes,
                                opset=opset, **kwargs)
    if suffix in (".keras", ".h5", ".hdf5"):
        from onnxq.exporters.tensorflow import load_keras

        return load_keras(path, input_signature=kwargs.pop("input_signature", input_shapes),
                          **_opset(opset), **kwargs)
    if suffix == ".tflite":
        from onnxq.exporters.tensorflow import from_tflite

        return from_tflite(path, **_opset(opset), **kwargs)
    raise ModelError(f"unknown model type {str(path)!r} (suffix {suffix or 'none'!r}); "
                     f"supported: {_SUPPORTED}")


def _export_folder(path: Path, opset: int | None, kwargs: dict[str, Any]) -> onnx.ModelProto:
    """``export_model`` for a folder: a TensorFlow SavedModel, else a ModelError."""
    if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
        from onnxq.exporters.tensorflow import from_saved_model

        return from_saved_model(path, **_opset(opset), **kwargs)
    raise ModelError(f"{str(path)!r} is a folder without saved_model.pb, so not a "
                     f"TensorFlow SavedModel; supported: {_SUPPORTED}")


def _opset(opset: int | None) -> dict:
    return {} if opset is None else {"opset": opset}


def __getattr__(name: str) -> Any:
    """Lazy access to the framework exporters (imports torch / TensorFlow on first use)."""
    if name in ("from_torch", "load_torchscript"):
        from onnxq.exporters import torch as _torch

        return getattr(_torch, name)
    if name in ("from_keras", "from_saved_model", "from_tflite", "load_keras"):
        from onnxq.exporters import tensorflow as _tf

        return getattr(_tf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
