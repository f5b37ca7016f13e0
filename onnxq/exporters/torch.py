"""PyTorch modules and TorchScript files to ONNX (``torch.onnx.export``), QAT models included.

Two exporters ship with torch 2.13 and both are supported:

* **TorchScript** (``dynamo=False``): traces one forward pass. Fast (~0.1 s for small
  models), targets any opset 7-20, exports eager-mode QAT fake-quant modules as
  QuantizeLinear/DequantizeLinear pairs. Deprecated upstream (a ``DeprecationWarning``), and
  tracing silently bakes Python control flow on tensor values into the graph.
* **dynamo** (``dynamo=True``, torch's own default since 2.9): ``torch.export`` + onnxscript.
  Fails loudly on data-dependent control flow instead of baking it in, but is 10-50x slower
  (1-3 s against 0.05-0.2 s for small CNN/attention models), needs ``onnxscript``, only targets opset >= 18, specialises a batch of size 1, and writes
  weights to an external ``.onnx.data`` file. onnxq handles the last three (see below).

**Default** (``dynamo=None``): the TorchScript exporter at opset 17 for ``torch.jit``
modules (``torch.export`` cannot take them), for ``opset < 18`` and for every other module
too: with torch 2.13 both exporters reproduce the tested models (CNN, attention block,
QAT fake-quant) within float rounding (~5e-7 relative) and both quantize equally well, but
TorchScript does it in a fraction of the time, at any opset onnxq supports (13-20, while
dynamo needs >= 18), without onnxscript and without the batch-1 pitfall. Pass ``dynamo=True`` for models that tracing gets wrong
(data-dependent control flow) or once the TorchScript exporter is removed; it defaults to
opset 18.

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
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx

from onnxq.errors import ConfigError, ModelError, OnnxqError
from onnxq.exporters import first_line, require, validate_export

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
BATCH = "batch"


def make_example_inputs(input_shapes: Sequence[Sequence[int]] | Sequence[int], *,
                        seed: int = 0) -> tuple:
    """Seeded standard-normal float32 tensors, one per shape (a single flat shape is one)."""
    shapes = list(input_shapes)
    if not shapes:
        raise ConfigError("input_shapes is empty; give one shape per model input")
    if all(isinstance(d, int) for d in shapes):
        shapes = [shapes]
    gen = torch.Generator().manual_seed(seed)
    try:
        return tuple(torch.randn(*map(int, s), generator=gen) for s in shapes)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"input_shapes={input_shapes!r} is not a list of shapes ({exc}); "
                          "write e.g. [(1, 3, 224, 224)]") from None


def _as_tuple(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if isinstance(example_inputs, tuple):
        return example_inputs
    raise ConfigError(f"example_inputs must be a tensor or a tuple of tensors, not "
                      f"{type(example_inputs).__name__}")


def _flatten(value: Any, path: str = "output") -> list:
    """Leaves of a (nested) tuple/list/dict of tensors; anything else is a ModelError."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for i, v in enumerate(value) for t in _flatten(v, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _flatten(v, f"{path}[{k!r}]")]
    raise ModelError(
        f"forward() returns a {type(value).__name__} at {path}; ONNX graphs output tensors "
        "only. Fix: return tensors (or tuples/lists/dicts of tensors) from forward(), e.g. "
        "wrap the module and convert the value with torch.as_tensor")


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _fake_quant_modules(module: torch.nn.Module) -> list:
    base = torch.ao.quantization.FakeQuantizeBase
    return [(name, m) for name, m in module.named_modules() if isinstance(m, base)]


def _fixed_fake_quant(fq: Any, name: str, dynamo: bool):
    """A forward for ``fq`` with its current qparams frozen into exportable ops."""
    if not bool(fq.fake_quant_enabled[0]):
        return lambda x: x
    observer = getattr(fq, "activation_post_process", None)
    qmin = getattr(observer, "quant_min", getattr(fq, "quant_min", None))
    qmax = getattr(observer, "quant_max", getattr(fq, "quant_max", None))
    min_val = getattr(observer, "min_val", None)
    if isinstance(min_val, torch.Tensor) and (min_val.numel() == 0
                                              or not bool(torch.isfinite(min_val).all())):
        raise ModelError(
            f"fake-quant module {name!r} was never calibrated (its observer saw no data), so "
            "its scale is meaningless; run a few forward passes in train() mode before "
            "torch.ao.quantization.disable_observer and export")
    scale = fq.scale.detach().clone().float()
    zero_point = fq.zero_point.detach().clone()
    per_channel = bool(getattr(fq, "is_per_channel", False)) or scale.numel() > 1
    axis = int(getattr(fq, "ch_axis", 0))
    if dynamo:
        importlib.import_module("torch.ao.quantization.fx._decomposed")  # registers the ops
        ops = torch.ops.quantized_decomposed
        dtype = torch.uint8 if qmin >= 0 else torch.int8
        if per_channel:
            zp = zero_point.to(torch.int64)

            def forward(x):
                q = ops.quantize_per_channel(x, scale, zp, axis, qmin, qmax, dtype)
                return ops.dequantize_per_channel(q, scale, zp, axis, qmin, qmax, dtype)
        else:
            s, z = float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])

            def forward(x):
                q = ops.quantize_per_tensor(x, s, z, qmin, qmax, dtype)
                return ops.dequantize_per_tensor(q, s, z, qmin, qmax, dtype)
        return forward
    if per_channel:
        zp = zero_point.to(torch.int32)
        return lambda x: torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)
    s, z = float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])
    return lambda x: torch.fake_quantize_per_tensor_affine(x, s, z, qmin, qmax)


@contextlib.contextmanager
def _exportable_fake_quant(module: torch.nn.Module, dynamo: bool) -> Iterator[int]:
    """Temporarily give every fake-quant module a frozen, exportable forward."""
    patched = []
    try:
        for name, fq in _fake_quant_modules(module):
            forward = _fixed_fake_quant(fq, name, dynamo)
            patched.append((fq, "forward" in fq.__dict__, fq.__dict__.get("forward")))
            fq.forward = forward
        yield len(patched)
    finally:
        for fq, had, old in patched:
            if had:
                fq.forward = old
            else:
                del fq.forward


def _default_input_names(module: torch.nn.Module, n: int) -> list[str]:
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    if len(names) != n or len(set(names)) != n:
        names = ["input"] if n == 1 else [f"input_{i}" for i in range(n)]
    return names


def _grow_batch(args: tuple) -> tuple:
    """Repeat batch-1 example tensors to batch 2 (torch.export specialises sizes 0 and 1)."""
    return tuple(torch.cat([a, a], 0) if isinstance(a, torch.Tensor) and a.dim() >= 1
                 and a.shape[0] == 1 else a for a in args)


def _hint(cause: str, dynamo: bool) -> str:
    low = cause.lower()
    if "scriptmodule" in low:
        return "torch.jit (TorchScript) modules export only with dynamo=False"
    if "data-dependent" in low or "datadependent" in low or "guardondatadependent" in low:
        return ("the module branches on tensor values (data-dependent Python control flow); "
                "rewrite the branch with torch.where or torch.cond, or export with "
                "dynamo=False, which traces the branch taken by example_inputs")
    if "constraint" in low and ("violat" in low or "specializ" in low):
        return ("the model fixes the batch size (e.g. a reshape to a constant); pass "
                "dynamic_batch=False or compute shapes from x.shape")
    if "unsupported" in low or "no onnx function" in low or "not supported" in low:
        other = "dynamo=False" if dynamo else "dynamo=True"
        return (f"an operator has no ONNX translation at this opset; try another opset or "
                f"{other}, or replace the operator")
    if "onnxscript" in low:
        return "install the exporter dependencies: pip install 'onnxq[torch]'"
    return ("check that example_inputs match forward() and that the module runs on them; "
            f"or try dynamo={not dynamo}")


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def _fix_batch_names(model: onnx.ModelProto) -> list[str]:
    """Name axis 0 of inputs/outputs "batch"; return outputs whose axis 0 stayed fixed."""
    graph = model.graph
    symbols = {d.dim_param for v in graph.input for d in v.type.tensor_type.shape.dim[:1]
               if d.dim_param}
    fixed = []
    values = list(graph.input) + list(graph.output) + list(graph.value_info)
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = BATCH
    for value in graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_param:
            fixed.append(value.name)
    return fixed


def _check_opset(model: onnx.ModelProto, opset: int, exporter: str) -> None:
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ModelError(f"the {exporter} exporter wrote opset {got}, not the opset {opset} "
                         f"asked for; export with opset={got} or with the other exporter")


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
    args = _as_tuple(example_inputs)
    if dynamo is None:
        dynamo = False
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
    exporter = "dynamo" if dynamo else "TorchScript"
    fake_quant = _fake_quant_modules(module)
    if fake_quant and opset < 13:
        raise ConfigError(f"QAT models export QuantizeLinear/DequantizeLinear per channel, "
                          f"which needs opset >= 13, not {opset}")

    with _eval_mode(module), _exportable_fake_quant(module, dynamo), torch.no_grad():
        try:
            outputs = _flatten(module(*args))
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - any error of the user's forward()
            raise ModelError(f"{type(module).__name__} fails on example_inputs "
                             f"({first_line(exc)}); fix example_inputs (shapes, dtypes) "
                             "to match forward()") from None
        in_names = list(input_names) if input_names else _default_input_names(module, len(args))
        n_out = len(outputs)
        out_names = list(output_names) if output_names else (
            ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)])
        if len(in_names) != len(args) or len(out_names) != n_out:
            raise ConfigError(f"{len(in_names)} input name(s) for {len(args)} input(s) and "
                              f"{len(out_names)} output name(s) for {n_out} output(s); give one "
                              "name per tensor")
        export_args = _grow_batch(args) if dynamic_batch else args
        kwargs: dict[str, Any] = {"input_names": in_names, "output_names": out_names,
                                  "opset_version": opset, "dynamo": dynamo}
        if dynamic_batch:
            if dynamo:
                batch = torch.export.Dim(BATCH)
                kwargs["dynamic_shapes"] = tuple(
                    {0: batch} if isinstance(a, torch.Tensor) and a.dim() >= 1 else None
                    for a in export_args)
            else:
                kwargs["dynamic_axes"] = {n: {0: BATCH} for n in in_names + out_names}
        if dynamo:
            kwargs.update(verbose=False, optimize=True, external_data=True)
        else:
            kwargs.update(do_constant_folding=True)

        dest = Path(output_path) if output_path is not None else None
        if dest is not None and not dest.parent.is_dir():
            raise ModelError(f"output folder {str(dest.parent)!r} does not exist; create it "
                             "first")
        tmpdir = Path(tempfile.mkdtemp(prefix=".onnxq-export-",
                                       dir=dest.parent if dest is not None else None))
        try:
            tmp = tmpdir / (dest.name if dest is not None else "model.onnx")
            try:
                with warnings.catch_warnings():
                    for text in (".*legacy TorchScript-based ONNX", "The feature will be removed"):
                        warnings.filterwarnings("ignore", message=text,
                                                category=DeprecationWarning)
                    warnings.filterwarnings("ignore", message="no signature found for")
                    warnings.filterwarnings("ignore", category=FutureWarning,
                                            message=".*LeafSpec")
                    torch.onnx.export(module, export_args, str(tmp), **kwargs)
            except Exception as exc:  # noqa: BLE001 - torch raises many private types
                cause = first_line(_root_cause(exc))
                raise ModelError(
                    f"cannot export {type(module).__name__} with the {exporter} exporter "
                    f"(opset {opset}): {cause}; fix: {_hint(str(exc) + cause, dynamo)}"
                ) from None
            return _finish(tmp, dest, opset, exporter, dynamic_batch)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _finish(tmp: Path, dest: Path | None, opset: int, exporter: str,
            dynamic_batch: bool) -> onnx.ModelProto | Path:
    size = sum(f.stat().st_size for f in tmp.parent.iterdir())
    large = size > _LARGE
    model = onnx.load(str(tmp), load_external_data=not large)
    _check_opset(model, opset, exporter)
    if dynamic_batch:
        fixed = _fix_batch_names(model)
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
    if example_inputs is None:
        example_inputs = make_example_inputs(input_shapes)
    kwargs.setdefault("dynamo", False)
    return from_torch(module, example_inputs, **kwargs)
