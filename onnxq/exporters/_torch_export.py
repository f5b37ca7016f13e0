"""The ``torch.onnx.export`` call (helpers of ``onnxq.exporters.torch``).

The options of each exporter (TorchScript: ``dynamic_axes``, constant folding; dynamo:
``dynamic_shapes`` with a ``torch.export.Dim``, optimisation, external data), the call with
torch's deprecation chatter silenced, and a failure turned into a ``ModelError`` that names
torch's root cause and a fix. torch is imported with this module, which only
``onnxq.exporters.torch`` imports (itself imported on first use).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxq.errors import ModelError
from onnxq.exporters import first_line, require
from onnxq.exporters._torch_io import BATCH

if TYPE_CHECKING:
    import torch
else:
    torch = require("torch")

__all__ = ["export_kwargs", "run_export", "hint", "root_cause", "no_attention_fastpath"]


@contextlib.contextmanager
def no_attention_fastpath() -> Iterator[None]:
    """Turn off torch's fused inference kernels for ``nn.MultiheadAttention`` and
    ``nn.TransformerEncoderLayer`` ("fast path": ``aten::_transformer_encoder_layer_fwd``,
    ``aten::_native_multi_head_attention``), which no ONNX exporter translates; restore the
    setting afterwards. A module in eval mode under ``no_grad`` takes that path, so without this
    every stock ``nn.TransformerEncoder`` fails to export. The unfused path computes the same
    function."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def export_kwargs(in_names: list[str], out_names: list[str], export_args: tuple, *,
                  opset: int, dynamo: bool, dynamic_batch: bool) -> dict[str, Any]:
    """Keyword arguments of ``torch.onnx.export`` for the chosen exporter."""
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
    return kwargs


def run_export(module: torch.nn.Module, export_args: tuple, path: Path,
               kwargs: dict[str, Any], *, exporter: str, opset: int, dynamo: bool) -> None:
    """Write ``module`` to ``path`` with ``torch.onnx.export``; failures raise ModelError."""
    try:
        with warnings.catch_warnings():
            for text in (".*legacy TorchScript-based ONNX", "The feature will be removed"):
                warnings.filterwarnings("ignore", message=text, category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="no signature found for")
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
            with no_attention_fastpath():
                torch.onnx.export(module, export_args, str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001 - torch raises many private types
        cause = first_line(root_cause(exc))
        raise ModelError(
            f"cannot export {type(module).__name__} with the {exporter} exporter "
            f"(opset {opset}): {cause}; fix: {hint(str(exc) + cause, dynamo)}"
        ) from None


def hint(cause: str, dynamo: bool) -> str:
    """A fix for an export failure, chosen from the text of its cause."""
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


def root_cause(exc: BaseException) -> BaseException:
    """The innermost ``__cause__`` of ``exc`` (``exc`` itself if it has none)."""
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc
