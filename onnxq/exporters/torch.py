"""PyTorch modules and TorchScript files to ONNX (``torch.onnx.export``), QAT models included.

Two exporters ship with torch 2.13 and both are supported:

* **TorchScript** (``dynamo=False``): traces one forward pass. Fast (~0.1 s for small
  models), targets any opset 7-20, exports eager-mode QAT fake-quant modules as
  QuantizeLinear/DequantizeLinear pairs. Deprecated upstream (a ``DeprecationWarning``), and
  tracing silently bakes Python control flow on tensor values into the graph.
* **dynamo** (``dynamo=True``, torch's own default since 2.9): ``torch.export`` + onnxscript.
  Fails loudly on data-dependent control flow instead of baking it in, but is 10-50x slower
  (1-3 s against 0.05-0.2 s for small CNN/attention models), needs ``onnxscript``, only
  targets opset >= 18, specialises a batch of size 1, and writes weights to an external
  ``.onnx.data`` file. onnxq handles the last three (see below).

**Default** (``dynamo=None``): the TorchScript exporter at opset 17 for ``torch.jit``
modules (``torch.export`` cannot take them), for ``opset < 18`` and for every other module
too: with torch 2.13 both exporters reproduce the tested models (CNN, attention block,
QAT fake-quant) within float rounding (~5e-7 relative) and both quantize equally well, but
TorchScript does it in a fraction of the time, at any opset onnxq supports (13-20, while
dynamo needs >= 18), without onnxscript and without the batch-1 pitfall. Pass
``dynamo=True`` for models that tracing gets wrong (data-dependent control flow) or once the
TorchScript exporter is removed; it defaults to opset 18.

Pitfalls handled here:

* dynamo saves ``opset < 18`` as 18 or converts it down on its own (which may fail): asking
  for ``dynamo=True, opset < 18`` raises ``ConfigError``, and the opset of every exported model
  is checked against the one asked for.
* dynamo writes weights next to the model: the export goes to a temporary folder and is
  loaded back with its external data, so the returned ``ModelProto`` is self-contained and
  nothing is left on disk. Above 2 GiB a ModelProto cannot be serialised in one piece: pass
  ``output_path=`` to keep the weights in external data (``<file>.data``) and get the path
  back instead of a proto.
* ``torch.export`` fixes dimensions whose example size is 1: with ``dynamic_batch=True`` an
  example batch of 1 is repeated to 2 for tracing (for both exporters); axis 0 of every input
  and output is then named ``"batch"``.
* QAT (``torch.ao.quantization`` eager mode, ``prepare_qat``): the default x86/fbgemm qconfig
  uses ``FusedMovingAvgObsFakeQuantize`` whose fused op neither exporter knows. During export
  every fake-quant module applies its *current* scale and zero point through
  ``fake_quantize_per_{tensor,channel}_affine`` (TorchScript) or the
  ``quantized_decomposed`` quantize/dequantize ops (dynamo), both of which become
  QuantizeLinear/DequantizeLinear (per-channel weights get DequantizeLinear ``axis``).
  Observers are not run and no buffer changes. Needs opset >= 13.
* The module is put in ``eval()`` mode for the export; every submodule's mode is restored.

This module holds the public functions; the work is split into ``_torch_io`` (example inputs,
names, the batch axis), ``_torch_export`` (each exporter's options, the ``torch.onnx.export``
call and its error hints) and ``_torch_qat`` (exportable fake-quant modules).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import onnx

from onnxq.errors import ConfigError, ModelError, OnnxqError
from onnxq.exporters import first_line, require, validate_export
from onnxq.exporters._torch_export import export_kwargs, run_export
from onnxq.exporters._torch_io import BATCH as BATCH  # still importable from here
from onnxq.exporters._torch_io import (
    as_tuple,
    check_opset,
    eval_mode,
    fix_batch_names,
    grow_batch,
    io_names,
    make_example_inputs,
    run_forward,
)
from onnxq.exporters._torch_qat import check_qat_opset, exportable_fake_quant
from onnxq.io import clean_stale, temp_prefix

if TYPE_CHECKING:
    import torch
else:
    torch = require("torch")

__all__ = ["from_torch", "load_torchscript", "make_example_inputs", "DEFAULT_OPSET",
           "DYNAMO_MIN_OPSET"]

logger = logging.getLogger(__name__)

#: Opset of the TorchScript exporter when none is given (the onnxq test-model opset).
DEFAULT_OPSET = 17
#: The dynamo exporter has no translations below this opset.
DYNAMO_MIN_OPSET = 18
#: The TorchScript exporter's highest opset in torch 2.13.
TORCHSCRIPT_MAX_OPSET = 20
#: Above this size the result stays on disk with external data (protobuf limit, margin).
_LARGE = 2**31 - 64 * 2**20


def _resolve_opset(opset: int | None, dynamo: bool) -> int:
    """The opset to export at: the exporter's default, or ``opset`` if the exporter has it."""
    if opset is None:
        opset = DYNAMO_MIN_OPSET if dynamo else DEFAULT_OPSET
    if dynamo and opset < DYNAMO_MIN_OPSET:
        raise ConfigError(
            f"the dynamo exporter only targets opset >= {DYNAMO_MIN_OPSET} (torch would save "
            f"opset {opset} as {DYNAMO_MIN_OPSET} or down-convert it unreliably); pass "
            f"opset>={DYNAMO_MIN_OPSET}, or dynamo=False for opset {opset}")
    if not dynamo and not 7 <= opset <= TORCHSCRIPT_MAX_OPSET:
        raise ConfigError(f"the TorchScript exporter supports opset 7-{TORCHSCRIPT_MAX_OPSET}, "
                          f"not {opset}; pass dynamo=True for newer opsets")
    return opset


def _destination(output_path: str | os.PathLike | None) -> Path | None:
    """``output_path`` as a ``Path`` whose folder exists (``None``: return a ModelProto)."""
    dest = Path(output_path) if output_path is not None else None
    if dest is not None and not dest.parent.is_dir():
        raise ModelError(f"output folder {str(dest.parent)!r} does not exist; create it "
                         "first")
    return dest


@overload
def from_torch(module: torch.nn.Module, example_inputs: Any, *,
               input_names: Sequence[str] | None = ..., output_names: Sequence[str] | None = ...,
               dynamic_batch: bool = ..., opset: int | None = ..., dynamo: bool | None = ...,
               output_path: None = ...) -> onnx.ModelProto: ...
@overload
def from_torch(module: torch.nn.Module, example_inputs: Any, *,
               input_names: Sequence[str] | None = ..., output_names: Sequence[str] | None = ...,
               dynamic_batch: bool = ..., opset: int | None = ..., dynamo: bool | None = ...,
               output_path: str | os.PathLike) -> Path: ...
def from_torch(
    module: torch.nn.Module,
    example_inputs: Any,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    dynamo: bool | None = None,
    output_path: str | os.PathLike | None = None,
) -> onnx.ModelProto | Path:
    """Export ``module`` to a validated, self-contained ONNX model.

    ``example_inputs``: a tensor or tuple of tensors for ``forward`` (float32, batch first).
    ``dynamic_batch``: axis 0 of every input and output is the symbolic ``"batch"``;
    ``False`` keeps the example shapes. ``opset``: default 17 (TorchScript) or 18 (dynamo).
    ``dynamo``: ``None`` picks the TorchScript exporter (see the module docstring for why).
    ``output_path``: write the model there instead (weights in ``<file>.data`` above 2 GiB)
    and return the ``Path``; use it for models too large for one protobuf.

    Export failures raise ``ModelError`` naming the cause (the first line of torch's root
    error) and a fix; nothing is written. The module's train/eval modes and QAT buffers are
    left as they were.
    """
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"from_torch needs a torch.nn.Module, not {type(module).__name__}")
    args = as_tuple(example_inputs)
    if dynamo is None:
        dynamo = False
    opset = _resolve_opset(opset, dynamo)
    exporter = "dynamo" if dynamo else "TorchScript"
    check_qat_opset(module, opset)

    with eval_mode(module), exportable_fake_quant(module, dynamo), torch.no_grad():
        outputs = run_forward(module, args)
        in_names, out_names = io_names(module, len(args), len(outputs), input_names,
                                       output_names)
        export_args = grow_batch(args) if dynamic_batch else args
        kwargs = export_kwargs(in_names, out_names, export_args, opset=opset, dynamo=dynamo,
                               dynamic_batch=dynamic_batch)
        dest = _destination(output_path)
        folder = dest.parent if dest is not None else Path(tempfile.gettempdir())
        clean_stale(folder)
        tmpdir = Path(tempfile.mkdtemp(prefix=temp_prefix(".", "export"), dir=folder))
        try:
            tmp = tmpdir / (dest.name if dest is not None else "model.onnx")
            run_export(module, export_args, tmp, kwargs, exporter=exporter, opset=opset,
                       dynamo=dynamo)
            return _finish(tmp, dest, opset, exporter, dynamic_batch)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _finish(tmp: Path, dest: Path | None, opset: int, exporter: str,
            dynamic_batch: bool) -> onnx.ModelProto | Path:
    """Load, check and validate the export in ``tmp``; return it, or move it to ``dest``."""
    size = sum(f.stat().st_size for f in tmp.parent.iterdir())
    large = size > _LARGE
    model = onnx.load(str(tmp), load_external_data=not large)
    check_opset(model, opset, exporter)
    if dynamic_batch:
        fixed = fix_batch_names(model)
        if fixed:
            logger.warning("output(s) %s keep a fixed axis 0 although dynamic_batch=True; the "
                           "model reduces over or reshapes the batch", fixed)
    origin = f"torch {torch.__version__} ({exporter} exporter)"
    if large:
        # Rewrite only the graph header (weights stay where they are), then check the file.
        onnx.save_model(model, str(tmp))
        validate_export(tmp, origin)
    else:
        validate_export(model, origin)
    if dest is None:
        if large:
            raise ModelError(
                f"the exported model is {size / 2**30:.1f} GiB, above the 2 GiB protobuf limit "
                "of an in-memory ModelProto; pass output_path='model.onnx' to keep its "
                "weights in external data")
        return model
    if not large:  # one self-contained file
        for item in tmp.parent.iterdir():
            item.unlink()
        onnx.save_model(model, str(tmp))
    for item in sorted(tmp.parent.iterdir()):
        os.replace(item, dest.parent / item.name)
    logger.info("wrote %s", dest)
    return dest


@overload
def load_torchscript(path: str | os.PathLike, example_inputs: Any = ..., *,
                     input_shapes: Sequence[Sequence[int]] | None = ...,
                     output_path: None = ..., **kwargs: Any) -> onnx.ModelProto: ...
@overload
def load_torchscript(path: str | os.PathLike, example_inputs: Any = ..., *,
                     input_shapes: Sequence[Sequence[int]] | None = ...,
                     output_path: str | os.PathLike, **kwargs: Any) -> Path: ...
def load_torchscript(
    path: str | os.PathLike,
    example_inputs: Any = None,
    *,
    input_shapes: Sequence[Sequence[int]] | None = None,
    **kwargs: Any,
) -> onnx.ModelProto | Path:
    """Load a TorchScript archive (``torch.jit.save``) and export it with ``from_torch``.

    A TorchScript file records no input shapes: give ``example_inputs`` or ``input_shapes``
    (e.g. ``[(1, 3, 224, 224)]``: seeded random float32). ``kwargs`` go to ``from_torch``; the
    TorchScript exporter is used (``torch.export`` cannot take ``torch.jit`` modules).
    """
    src = Path(path)
    if example_inputs is None and input_shapes is None:
        raise OnnxqError(f"exporting TorchScript {str(src)!r} needs example inputs: the file "
                         "records no input shapes; pass example_inputs=(tensor, ...) or "
                         "input_shapes=[(1, 3, 224, 224)]")
    if not src.is_file():
        raise ModelError(f"TorchScript file {str(src)!r} does not exist; check the path")
    try:
        with warnings.catch_warnings():  # deliberate: this function exists to read TorchScript
            warnings.filterwarnings("ignore", message=".*torch.jit.load. is deprecated")
            module = torch.jit.load(str(src), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError and private types
        raise ModelError(
            f"{str(src)!r} is not a TorchScript archive ({first_line(exc)}); a torch.save() "
            "checkpoint or state_dict holds no graph: build the module in Python and pass it "
            "to from_torch, or save it with torch.jit.script(m).save(path) / "
            "torch.jit.trace(m, x).save(path)") from None
    if example_inputs is None and input_shapes is not None:  # one of them is given (above)
        example_inputs = make_example_inputs(input_shapes)
    kwargs.setdefault("dynamo", False)
    return from_torch(module, example_inputs, **kwargs)
