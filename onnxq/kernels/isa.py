"""CPU instruction-set detection and the int8 types it makes fast.

onnxruntime's x86 int8 kernels are u8 × s8: ``vpdpbusd`` (AVX512-VNNI / AVX-VNNI) multiplies
unsigned activations by signed weights. Without VNNI, ``vpmaddubsw`` sums pairs of u8×s8
products into int16 and can saturate, so weights are kept to 7 bits (reduce_range).
On Arm, ``sdot``/``udot`` (dot-product extension) handle s8 × s8 natively.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from onnxq.qtypes import QType

__all__ = ["CpuFeatures", "detect", "Recommendation", "recommend"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuFeatures:
    arch: str
    avx2: bool = False
    avx512f: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    amx_int8: bool = False
    arm_dotprod: bool = False

    @property
    def vnni(self) -> bool:
        return self.avx512_vnni or self.avx_vnni

    @property
    def x86(self) -> bool:
        return self.arch in {"x86_64", "amd64", "i386", "i686"}

    def summary(self) -> str:
        names = [n for n in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                             "arm_dotprod") if getattr(self, n)]
        return f"{self.arch}: {', '.join(names) or 'no int8 dot-product extensions'}"


def _cpu_flags(cpuinfo: str) -> set[str]:
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in {"flags", "features"}:
            flags.update(value.split())
    return flags


def detect(cpuinfo: str | None = None, arch: str | None = None) -> CpuFeatures:
    """Read the CPU's features (Linux ``/proc/cpuinfo``; elsewhere only the architecture)."""
    arch = (arch or platform.machine() or "unknown").lower()
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        try:
            cpuinfo = path.read_text() if path.exists() else ""
        except OSError:
            cpuinfo = ""
    flags = _cpu_flags(cpuinfo)
    return CpuFeatures(
        arch=arch,
        avx2="avx2" in flags,
        avx512f="avx512f" in flags,
        avx512_vnni="avx512_vnni" in flags or "avx512vnni" in flags,
        avx_vnni="avx_vnni" in flags,
        amx_int8="amx_int8" in flags,
        arm_dotprod="asimddp" in flags,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Recommendation:
    activation: QType
    weight: QType
    reduce_range: bool
    reason: str


def recommend(features: CpuFeatures | None = None) -> Recommendation:
    """The activation/weight types and weight range that run fastest on ``features``."""
    f = features or detect()
    if f.x86:
        if f.vnni or f.amx_int8:
            return Recommendation(activation=QType.U8, weight=QType.S8, reduce_range=False,
                                  reason="x86 with VNNI: u8 activations × s8 weights, full range")
        return Recommendation(activation=QType.U8, weight=QType.S8, reduce_range=True,
                              reason="x86 without VNNI: u8×s8 with 7-bit weights to avoid "
                                     "vpmaddubsw int16 saturation")
    if f.arch in {"aarch64", "arm64"}:
        return Recommendation(activation=QType.U8, weight=QType.S8, reduce_range=False,
                              reason="Arm: u8 activations × s8 weights")
    return Recommendation(activation=QType.U8, weight=QType.S8, reduce_range=False,
                          reason=f"unknown architecture {f.arch!r}: u8 × s8 default")
