"""QAT fake-quant modules made exportable (helpers of ``onnxq.exporters.torch``).

``torch.ao.quantization`` eager-mode QAT (``prepare_qat``) with the default x86/fbgemm qconfig
uses ``FusedMovingAvgObsFakeQuantize``, whose fused op neither torch exporter knows. For the
export every fake-quant module gets a temporary ``forward`` that applies its *current* scale
and zero point through ``fake_quantize_per_{tensor,channel}_affine`` (TorchScript) or the
``quantized_decomposed`` quantize/dequantize ops (dynamo); both become
QuantizeLinear/DequantizeLinear. Observers are not run and no buffer changes. torch is imported
with this module, which only ``onnxq.exporters.torch`` imports (itself imported on first use).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from onnxq.errors import ConfigError, ModelError
from onnxq.exporters import require

if TYPE_CHECKING:
    import torch
else:
    torch = require("torch")

__all__ = ["QAT_MIN_OPSET", "fake_quant_modules", "check_qat_opset", "fixed_fake_quant",
           "exportable_fake_quant"]

#: Per-channel QuantizeLinear/DequantizeLinear (``axis``) needs this opset.
QAT_MIN_OPSET = 13

#: A replacement ``forward`` of a fake-quant module.
Forward = Callable[[Any], Any]


def fake_quant_modules(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(name, submodule)`` of every fake-quant module in ``module``."""
    base = torch.ao.quantization.FakeQuantizeBase
    return [(name, m) for name, m in module.named_modules() if isinstance(m, base)]


def check_qat_opset(module: torch.nn.Module, opset: int) -> None:
    """Raise ``ConfigError`` if ``module`` has fake-quant modules and ``opset`` is too old."""
    if fake_quant_modules(module) and opset < QAT_MIN_OPSET:
        raise ConfigError(f"QAT models export QuantizeLinear/DequantizeLinear per channel, "
                          f"which needs opset >= {QAT_MIN_OPSET}, not {opset}")


def _check_calibrated(observer: Any, name: str) -> None:
    min_val = getattr(observer, "min_val", None)
    if isinstance(min_val, torch.Tensor) and (min_val.numel() == 0
                                              or not bool(torch.isfinite(min_val).all())):
        raise ModelError(
            f"fake-quant module {name!r} was never calibrated (its observer saw no data), so "
            "its scale is meaningless; run a few forward passes in train() mode before "
            "torch.ao.quantization.disable_observer and export")


def fixed_fake_quant(fq: Any, name: str, dynamo: bool) -> Forward:
    """A forward for ``fq`` with its current qparams frozen into exportable ops."""
    if not bool(fq.fake_quant_enabled[0]):
        return lambda x: x
    observer = getattr(fq, "activation_post_process", None)
    # Untyped torch.ao attributes (ints in practice), passed on to torch as they are.
    qmin: Any = getattr(observer, "quant_min", getattr(fq, "quant_min", None))
    qmax: Any = getattr(observer, "quant_max", getattr(fq, "quant_max", None))
    _check_calibrated(observer, name)
    scale = fq.scale.detach().clone().float()
    zero_point = fq.zero_point.detach().clone()
    per_channel = bool(getattr(fq, "is_per_channel", False)) or scale.numel() > 1
    axis = int(getattr(fq, "ch_axis", 0))
    if dynamo:
        return _dynamo_forward(scale, zero_point, per_channel, axis, qmin, qmax)
    return _torchscript_forward(scale, zero_point, per_channel, axis, qmin, qmax)


def _dynamo_forward(scale: torch.Tensor, zero_point: torch.Tensor, per_channel: bool,
                    axis: int, qmin: Any, qmax: Any) -> Forward:
    """Quantize + dequantize with the ``quantized_decomposed`` ops (``torch.export``)."""
    importlib.import_module("torch.ao.quantization.fx._decomposed")  # registers the ops
    ops = torch.ops.quantized_decomposed
    dtype = torch.uint8 if qmin >= 0 else torch.int8
    if per_channel:
        zp = zero_point.to(torch.int64)

        def forward(x: Any) -> Any:
            q = ops.quantize_per_channel(x, scale, zp, axis, qmin, qmax, dtype)
            return ops.dequantize_per_channel(q, scale, zp, axis, qmin, qmax, dtype)

        return forward
    s, z = float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])

    def forward_per_tensor(x: Any) -> Any:
        q = ops.quantize_per_tensor(x, s, z, qmin, qmax, dtype)
        return ops.dequantize_per_tensor(q, s, z, qmin, qmax, dtype)

    return forward_per_tensor


def _torchscript_forward(scale: torch.Tensor, zero_point: torch.Tensor, per_channel: bool,
                         axis: int, qmin: Any, qmax: Any) -> Forward:
    """``fake_quantize_per_{channel,tensor}_affine`` (traced by the TorchScript exporter)."""
    if per_channel:
        zp = zero_point.to(torch.int32)
        return lambda x: torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)
    s, z = float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])
    return lambda x: torch.fake_quantize_per_tensor_affine(x, s, z, qmin, qmax)


@contextlib.contextmanager
def exportable_fake_quant(module: torch.nn.Module, dynamo: bool) -> Iterator[int]:
    """Temporarily give every fake-quant module a frozen, exportable forward."""
    # (module, had its own forward, that forward: whatever its __dict__ held)
    patched: list[tuple[torch.nn.Module, bool, Any]] = []
    try:
        for name, fq in fake_quant_modules(module):
            forward = fixed_fake_quant(fq, name, dynamo)
            patched.append((fq, "forward" in fq.__dict__, fq.__dict__.get("forward")))
            fq.forward = forward
        yield len(patched)
    finally:
        for fq, had, old in patched:
            if had:
                fq.forward = old
            else:
                del fq.forward
