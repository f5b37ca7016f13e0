"""Inputs, outputs and names of a torch → ONNX export (helpers of ``onnxq.exporters.torch``).

Example inputs (given or made from shapes), running ``forward`` once to learn the outputs,
default input/output names, the batch axis (growing a batch of 1 for tracing, naming axis 0
``"batch"`` in the result) and the opset check of the written model. torch is imported with
this module, which only ``onnxq.exporters.torch`` imports (itself imported on first use).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import onnx

from onnxq.errors import ConfigError, ModelError
from onnxq.exporters import first_line, require

if TYPE_CHECKING:
    import torch
else:
    torch = require("torch")

__all__ = ["BATCH", "make_example_inputs", "as_tuple", "flatten", "run_forward", "eval_mode",
           "default_input_names", "io_names", "grow_batch", "fix_batch_names", "check_opset"]

#: Name of the symbolic axis 0 of every input and output with ``dynamic_batch=True``.
BATCH = "batch"


def make_example_inputs(input_shapes: Sequence[Sequence[int]] | Sequence[int], *,
                        seed: int = 0) -> tuple:
    """Seeded standard-normal float32 tensors, one per shape (a single flat shape is one)."""
    # User input of any form: wrong entries raise in the conversion below.
    shapes: list[Any] = list(input_shapes)
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


def as_tuple(example_inputs: Any) -> tuple:
    """``example_inputs`` (a tensor, list or tuple of tensors) as a tuple of ``forward`` args."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if isinstance(example_inputs, tuple):
        return example_inputs
    raise ConfigError(f"example_inputs must be a tensor or a tuple of tensors, not "
                      f"{type(example_inputs).__name__}")


def flatten(value: Any, path: str = "output") -> list:
    """Leaves of a (nested) tuple/list/dict of tensors; anything else is a ModelError."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for i, v in enumerate(value) for t in flatten(v, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in flatten(v, f"{path}[{k!r}]")]
    raise ModelError(
        f"forward() returns a {type(value).__name__} at {path}; ONNX graphs output tensors "
        "only. Fix: return tensors (or tuples/lists/dicts of tensors) from forward(), e.g. "
        "wrap the module and convert the value with torch.as_tensor")


def run_forward(module: torch.nn.Module, args: tuple) -> list:
    """The output tensors of ``module(*args)``; a failing ``forward`` is a ModelError."""
    try:
        return flatten(module(*args))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any error of the user's forward()
        raise ModelError(f"{type(module).__name__} fails on example_inputs "
                         f"({first_line(exc)}); fix example_inputs (shapes, dtypes) "
                         "to match forward()") from None


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put ``module`` in ``eval()`` mode; restore every submodule's mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def default_input_names(module: torch.nn.Module, n: int) -> list[str]:
    """The names of ``forward``'s first ``n`` parameters, else ``input``/``input_<i>``."""
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    if len(names) != n or len(set(names)) != n:
        names = ["input"] if n == 1 else [f"input_{i}" for i in range(n)]
    return names


def io_names(module: torch.nn.Module, n_in: int, n_out: int,
             input_names: Sequence[str] | None,
             output_names: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Input and output names: the given ones (one per tensor) or defaults."""
    in_names = list(input_names) if input_names else default_input_names(module, n_in)
    out_names = list(output_names) if output_names else (
        ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)])
    if len(in_names) != n_in or len(out_names) != n_out:
        raise ConfigError(f"{len(in_names)} input name(s) for {n_in} input(s) and "
                          f"{len(out_names)} output name(s) for {n_out} output(s); give one "
                          "name per tensor")
    return in_names, out_names


def grow_batch(args: tuple) -> tuple:
    """Repeat batch-1 example tensors to batch 2 (torch.export specialises sizes 0 and 1)."""
    return tuple(torch.cat([a, a], 0) if isinstance(a, torch.Tensor) and a.dim() >= 1
                 and a.shape[0] == 1 else a for a in args)


def fix_batch_names(model: onnx.ModelProto) -> list[str]:
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


def check_opset(model: onnx.ModelProto, opset: int, exporter: str) -> None:
    """Raise ``ModelError`` unless the exporter wrote the default-domain opset asked for."""
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ModelError(f"the {exporter} exporter wrote opset {got}, not the opset {opset} "
                         f"asked for; export with opset={got} or with the other exporter")
