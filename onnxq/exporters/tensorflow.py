"""TensorFlow / Keras / TFLite models to ONNX through tf2onnx (``pip install 'onnxq[tf]'``).

Tested with tensorflow-cpu 2.21 (Keras 3.15) and tf2onnx 1.17. How each source converts:

* **Keras** (``from_keras``, ``load_keras`` for ``.keras``/``.h5``): the model is wrapped in a
  ``tf.function`` with an explicit input signature (batch axis ``None``), calling
  ``model(x, training=False)`` and returning a dict of named outputs, and converted with
  ``tf2onnx.convert.from_function``. ``tf2onnx.convert.from_keras`` also runs with Keras 3
  (it falls back to the same kind of ``tf.function``), but it passes several inputs as
  separate positional arguments, which Keras 3 functional models reject, and names outputs
  after layers; the explicit wrapper handles multi-input models and names outputs
  ``output``/``output_<i>`` (or ``output_names=``). Inputs keep their Keras names.
* **SavedModel** (``from_saved_model``): tf2onnx 1.17 has no Python ``from_saved_model``
  (only the ``python -m tf2onnx.convert --saved-model`` CLI, a second TensorFlow start-up of
  ~5 s). The folder is loaded with ``tf.saved_model.load`` instead and its serving signature
  (``serving_default``, else the first) is converted with ``from_function``; input and
  output names are the signature's.
* **TFLite** (``from_tflite``): ``tf2onnx.convert.from_tflite``. ``serving_default_`` and
  ``:0`` are stripped from input/output names. MediaPipe's ``Convolution2DTransposeBias``
  custom op is lowered to ONNX (``tflite_custom``); sparse weights (``DENSIFY``) are made
  dense first (``tflite_sparse``).

Every result goes through ``validate_export``: tf2onnx converts with
``continue_on_error=True`` and returns models holding TensorFlow ops it could not map, e.g.
``Erfc`` from Keras' exact GELU (``activation="gelu"``) or ``TFL_GELU`` from a ``.tflite``
file; those raise ``UnsupportedOpError`` naming the op and the fix. A symbolic axis 0 of
inputs and outputs is renamed ``"batch"``.

Models above 2 GiB are not supported on this path (tf2onnx writes them as a zip archive);
convert those with the tf2onnx CLI (``--large_model``) and unzip.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.errors import ModelError, OnnxqError
from onnxq.exporters import first_line, require, validate_export
from onnxq.exporters.tf_names import canonical_names, every_node, stable_merges
from onnxq.exporters.tf_ops import HANDLERS
from onnxq.exporters.tflite_custom import STATEFUL_OPS, builtin_ops, lower_transpose_conv_bias
from onnxq.exporters.tflite_sparse import dense_copy


@contextlib.contextmanager
def _native_quiet() -> Iterator[None]:
    """Silence what TensorFlow's native code prints straight to the process's stderr (absl
    pre-init notices, oneDNN and CPU-feature banners, the XNNPACK delegate line): onnxq's
    messages stay one line. Python exceptions still propagate."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


if TYPE_CHECKING:
    import tensorflow as tf
else:
    with _native_quiet():
        tf = require("tensorflow", "tf")
with _native_quiet():
    tf2onnx = require("tf2onnx", "tf")
    require("tf2onnx.convert", "tf")

__all__ = ["from_keras", "load_keras", "from_saved_model", "from_tflite", "DEFAULT_OPSET"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
BATCH = "batch"
_ORIGIN = f"tf2onnx {tf2onnx.__version__} (tensorflow {tf.__version__})"


def _keras():
    import keras

    return keras


def _spec(value: Any, name: str, dynamic_batch: bool) -> tf.TensorSpec:
    """A TensorSpec from a TensorSpec, a shape or an example array."""
    if isinstance(value, tf.TensorSpec):
        shape, dtype, name = list(value.shape), value.dtype, value.name or name
    elif isinstance(value, (np.ndarray, tf.Tensor)):
        shape, dtype = list(value.shape), tf.as_dtype(value.dtype)
    else:
        try:
            shape, dtype = [None if d is None else int(d) for d in value], tf.float32
        except (TypeError, ValueError):
            raise OnnxqError(f"input_signature entry {value!r} is not a tf.TensorSpec, an array "
                             "or a shape like (None, 224, 224, 3)") from None
    if dynamic_batch and shape:
        shape[0] = None
    return tf.TensorSpec(shape, dtype, name=name)


def _keras_specs(model: Any, input_signature: Any, dynamic_batch: bool) -> list:
    inputs = list(getattr(model, "inputs", None) or [])
    names = [getattr(t, "name", None) or f"input_{i}" for i, t in enumerate(inputs)]
    if input_signature is None:
        if not inputs:
            raise OnnxqError(
                f"Keras model {model.name!r} has no known inputs (a subclassed model that was "
                "never called); pass input_signature=[(None, 224, 224, 3)] (one shape or "
                "tf.TensorSpec per input)")
        return [_spec(tf.TensorSpec(t.shape, t.dtype), n, dynamic_batch)
                for t, n in zip(inputs, names, strict=True)]
    entries = input_signature
    if isinstance(entries, (tf.TensorSpec, np.ndarray)) or (
            isinstance(entries, (list, tuple)) and entries
            and all(d is None or isinstance(d, int) for d in entries)):
        entries = [entries]
    if len(names) != len(entries):
        names = ["input"] if len(entries) == 1 else [f"input_{i}" for i in range(len(entries))]
    return [_spec(v, n, dynamic_batch) for v, n in zip(entries, names, strict=True)]


def _convert_function(fn, specs: list, opset: int, what: str) -> onnx.ModelProto:
    try:
        with _native_quiet(), stable_merges():
            function = tf.function(fn, input_signature=specs)
            concrete = function.get_concrete_function()  # traced once; tf2onnx reuses it
            model, _ = tf2onnx.convert.from_function(
                function, input_signature=specs, opset=opset,
                custom_op_handlers=HANDLERS)
    except Exception as exc:  # noqa: BLE001 - TF and tf2onnx raise many types
        text = first_line(exc)
        hint = ("the model exceeds 2 GiB: use the tf2onnx CLI with --large_model"
                if "2GB" in text or "protobuf" in text.lower() else
                "check input_signature (shapes, dtypes) against the model, and that the model "
                "runs eagerly on such inputs")
        raise ModelError(f"tf2onnx cannot convert {what}: {text}; fix: {hint}") from None
    if model is None:
        raise ModelError(f"tf2onnx returned no model for {what}")
    if any(n.op_type in _CALLS for n in model.graph.node):
        with _native_quiet(), stable_merges():
            model = _convert_inlined(concrete, specs, opset)
    _freeze_captures(model, concrete, len(specs))
    return model


#: TensorFlow function calls tf2onnx leaves in its output when it cannot inline them
_CALLS = ("StatefulPartitionedCall", "PartitionedCall")


def _convert_inlined(concrete: Any, specs: list, opset: int) -> onnx.ModelProto:
    """Convert again with every function made inlinable. Keras 3 runs grouped convolutions
    (ConvNeXt's depthwise convs, ``Conv2D(groups=...)``) through a ``jit_compile=True``
    function on CPU; TensorFlow's inliner skips XLA functions, so tf2onnx left the call in
    the graph. Without the XLA mark the call inlines to a plain (grouped) ``Conv2D``."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False,
                                               aggressive_inlining=True)
    graph_def = frozen.graph.as_graph_def(add_shapes=True)
    marks = ("_XlaMustCompile", "_noinline")
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    for holder in [*graph_def.library.function, *nodes]:
        for key in [k for k in holder.attr if k in marks]:
            del holder.attr[key]
    inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
    outputs = [t.name for t in frozen.outputs]
    model, _ = tf2onnx.convert.from_graph_def(
        graph_def, input_names=inputs, output_names=outputs, opset=opset,
        custom_op_handlers=HANDLERS)
    names = [spec.name for spec in specs] + [t.name for t in concrete.inputs[len(specs):]]
    keys = tf.nest.flatten({k: k for k in concrete.structured_outputs}) \
        if isinstance(concrete.structured_outputs, dict) else []
    mapping = dict(zip(inputs, names, strict=False))
    mapping.update(zip(outputs, keys, strict=False))
    _rename_io(model, mapping)
    return model


def _freeze_captures(model: onnx.ModelProto, concrete: Any, n_inputs: int) -> None:
    """Constants the function captures (not variables: tf2onnx freezes those) become graph
    inputs in tf2onnx's output, e.g. the mean and variance of a Keras 3 ``Normalization``
    layer, which every Keras EfficientNet starts with. A user feeds only the model's own
    inputs, so each such input becomes an initializer holding the captured value."""
    placeholders = [t.name for t in concrete.inputs[n_inputs:]]
    values = {name: value for name, value in zip(placeholders, concrete.captured_inputs,
                                                 strict=False)
              if value.dtype != tf.resource}
    frozen = [v for v in model.graph.input if v.name in values]
    for v in frozen:
        model.graph.input.remove(v)
        model.graph.initializer.append(
            numpy_helper.from_array(np.asarray(values[v.name].numpy()), v.name))


def _name_batch(model: onnx.ModelProto) -> None:
    """Rename symbolic axis-0 dims of inputs and outputs (tf2onnx: ``unk__N``) to "batch"."""
    graph = model.graph
    symbols = {v.type.tensor_type.shape.dim[0].dim_param
               for v in list(graph.input) + list(graph.output)
               if v.type.tensor_type.shape.dim and v.type.tensor_type.shape.dim[0].dim_param}
    if not symbols:
        return
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = BATCH


def _rename_io(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    """Rename graph inputs/outputs everywhere they appear, subgraphs included (an ``If``
    branch reads the outer graph's input by name); names must stay unique."""
    graph = model.graph
    taken = {n for node in every_node(graph) for n in list(node.input) + list(node.output)}
    taken |= {t.name for t in graph.initializer}
    mapping = {old: new for old, new in mapping.items() if old != new and new not in taken}
    if len(set(mapping.values())) != len(mapping):
        return
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = mapping.get(value.name, value.name)
    for node in every_node(graph):
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]


def _finish(model: onnx.ModelProto, out_names: Sequence[str] | None = None) -> onnx.ModelProto:
    if out_names:  # tf.nest sorts dict outputs by key: restore the model's order
        order = {n: i for i, n in enumerate(out_names)}
        outputs = sorted(model.graph.output, key=lambda v: order.get(v.name, len(order)))
        del model.graph.output[:]
        model.graph.output.extend(outputs)
    _name_batch(model)
    canonical_names(model)  # tf2onnx's generated names vary from run to run
    validate_export(model, _ORIGIN)
    return model


def from_keras(
    model: Any,
    *,
    input_signature: Any = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    output_names: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """Convert a Keras model (Keras 3 or ``tf.keras``) to a validated ONNX model.

    ``input_signature``: one ``tf.TensorSpec``, shape or example array per input (default:
    the model's own inputs). ``dynamic_batch``: axis 0 of every input becomes ``None``
    (``"batch"`` in ONNX). Inference mode (``training=False``) is used.
    """
    specs = _keras_specs(model, input_signature, dynamic_batch)
    produced: list[str] = []

    def serve(*xs):
        outputs = model(xs[0] if len(xs) == 1 else list(xs), training=False)
        flat = tf.nest.flatten(outputs)
        names = list(output_names) if output_names else (
            ["output"] if len(flat) == 1 else [f"output_{i}" for i in range(len(flat))])
        if len(names) != len(flat):
            raise OnnxqError(f"{len(names)} output name(s) for {len(flat)} output(s)")
        produced[:] = names
        return dict(zip(names, flat, strict=True))

    onnx_model = _convert_function(serve, specs, opset, f"Keras model {model.name!r}")
    return _finish(onnx_model, produced)


def load_keras(path: str | os.PathLike, **kwargs: Any) -> onnx.ModelProto:
    """Load a ``.keras``/``.h5`` file with ``keras.models.load_model`` and ``from_keras`` it."""
    src = Path(path)
    if not src.is_file():
        raise ModelError(f"Keras file {str(src)!r} does not exist; check the path")
    try:
        model = _keras().models.load_model(str(src), compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types
        raise ModelError(f"Keras cannot load {str(src)!r} ({first_line(exc)}); models with "
                         "custom layers need them registered "
                         "(keras.saving.register_keras_serializable) before loading") from None
    return from_keras(model, **kwargs)


def from_saved_model(path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                     signature: str | None = None) -> onnx.ModelProto:
    """Convert a TensorFlow SavedModel folder (``model.export(dir)``, ``tf.saved_model.save``).

    ``signature``: the signature to convert (default ``serving_default``, else the first).
    """
    src = Path(path)
    if not (src / "saved_model.pb").is_file() and not (src / "saved_model.pbtxt").is_file():
        raise ModelError(f"{str(src)!r} is not a SavedModel folder (no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(str(src))
    except Exception as exc:  # noqa: BLE001 - TF raises many types
        raise ModelError(f"TensorFlow cannot load SavedModel {str(src)!r} "
                         f"({first_line(exc)}); re-export it") from None
    signatures = dict(loaded.signatures)
    if not signatures:
        raise ModelError(f"SavedModel {str(src)!r} has no signatures to convert; export it with "
                         "model.export(dir) or tf.saved_model.save(obj, dir, signatures=fn)")
    key = signature or ("serving_default" if "serving_default" in signatures
                        else sorted(signatures)[0])
    if key not in signatures:
        raise ModelError(f"SavedModel {str(src)!r} has no signature {key!r}; it has "
                         f"{sorted(signatures)}")
    fn = signatures[key]
    args, kwargs = fn.structured_input_signature
    if args:
        raise ModelError(f"signature {key!r} takes positional inputs; only keyword (named) "
                         "signature inputs are supported")
    names = list(kwargs)
    specs = [tf.TensorSpec(kwargs[n].shape, kwargs[n].dtype, name=n) for n in names]
    out_names = list(fn.structured_outputs) if isinstance(fn.structured_outputs, dict) else None

    def serve(*xs):
        return fn(**dict(zip(names, xs, strict=True)))

    model = _convert_function(serve, specs, opset, f"SavedModel {str(src)!r} ({key})")
    del loaded
    return _finish(model, out_names)


def from_tflite(path: str | os.PathLike, *, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert a ``.tflite`` flatbuffer (float; TFLite-quantized models keep their own Q/DQ)."""
    src = Path(path)
    if not src.is_file():
        raise ModelError(f"TFLite file {str(src)!r} does not exist; check the path")
    try:
        with warnings.catch_warnings(), _native_quiet(), stable_merges(), \
                tempfile.TemporaryDirectory(prefix="onnxq-tflite-") as tmp:
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            read = dense_copy(src, Path(tmp)) or src  # tf2onnx reads no sparse weights
            model, _ = tf2onnx.convert.from_tflite(str(read), opset=opset,
                                                   custom_op_handlers=HANDLERS)
    except OnnxqError:
        raise
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many types
        if stateful := sorted(builtin_ops(src) & STATEFUL_OPS):
            raise ModelError(
                f"{str(src)!r} is a streaming TFLite model: it keeps state inside itself "
                f"between runs ({', '.join(stateful)}), which tf2onnx cannot convert; fix: "
                "export the model without internal state (the non-streaming Keras or "
                "SavedModel, or one taking and returning its state as tensors)") from None
        raise ModelError(f"tf2onnx cannot convert {str(src)!r} ({first_line(exc)}); check that "
                         "it is a TFLite flatbuffer (tf.lite.TFLiteConverter output)") from None

    def clean(name: str, prefix: str = "") -> str:
        name = name[:-2] if name.endswith(":0") else name
        return name[len(prefix):] if prefix and name.startswith(prefix) else name

    lower_transpose_conv_bias(model, src)  # MediaPipe's custom op, where it maps exactly
    mapping = {v.name: clean(v.name, "serving_default_") for v in model.graph.input}
    mapping.update({v.name: clean(v.name) for v in model.graph.output})
    _rename_io(model, mapping)
    return _finish(model)
