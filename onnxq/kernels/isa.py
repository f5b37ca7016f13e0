"""CPU instruction-set detection and the int8 types it makes fast.

onnxruntime's x86 int8 kernels are u8 × s8: ``vpdpbusd`` (AVX512-VNNI / AVX-VNNI) multiplies
unsigned activations by signed weights. Without VNNI, ``vpmaddubsw`` sums pairs of u8×s8
products into int16 and can saturate, so weights are kept to 7 bits (reduce_range).
On Arm, ``sdot``/``udot`` (dot-product extension) handle s8 × s8 natively.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from onnxq.qtypes import QType

__all__ = ["CpuFeatures", "detect", "Recommendation", "recommend", "TARGETS", "Target",
           "resolve_target", "target_of", "host_target", "TARGET_ENV", "exact_depthwise",
           "weight_reduce_range"]

#: Environment variable that sets what ``target="auto"`` resolves to (instead of the host CPU),
#: e.g. to run the test suite as an AVX2-only machine would quantize.
TARGET_ENV = "ONNXQ_TARGET"


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


def _cpuid_flags() -> set[str] | None:
    """Features from the CPUID instruction as numpy's runtime dispatcher sees them (what the
    process really runs on, also under an emulator or a VM that hides features), in
    /proc/cpuinfo spelling; None when numpy does not expose them."""
    feats: Mapping[str, bool]
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as np2_feats
    except ImportError:  # pragma: no cover - numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as np1_feats
        except ImportError:
            return None
        feats = np1_feats
    else:
        feats = np2_feats
    names = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512VNNI": "avx512_vnni",
             "ASIMDDP": "asimddp"}
    return {flag for key, flag in names.items() if feats.get(key)}


def _read_cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    try:
        return path.read_text() if path.exists() else ""
    except OSError:
        return ""


def detect(cpuinfo: str | None = None, arch: str | None = None) -> CpuFeatures:
    """Read the CPU's features: CPUID (through numpy) and ``/proc/cpuinfo`` on Linux.

    CPUID wins where the two disagree (an emulator such as ``qemu-x86_64 -cpu Haswell`` shows
    the host's /proc/cpuinfo); AVX-VNNI and AMX, which numpy does not report, are taken from
    /proc/cpuinfo only when it agrees with CPUID on AVX2 and AVX-512.
    """
    arch = (arch or platform.machine() or "unknown").lower()
    from_cpuid = None
    if cpuinfo is None:
        from_cpuid, cpuinfo = _cpuid_flags(), _read_cpuinfo()
    flags = _cpu_flags(cpuinfo)
    if "avx512vnni" in flags:
        flags.add("avx512_vnni")
    if from_cpuid is not None:
        core = {"avx2", "avx512f", "avx512_vnni", "asimddp"}
        agrees = bool(flags) and from_cpuid == (flags & core)
        flags = from_cpuid | (flags - core if agrees else set())
    return CpuFeatures(
        arch=arch,
        avx2="avx2" in flags,
        avx512f="avx512f" in flags,
        avx512_vnni="avx512_vnni" in flags,
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


#: Target instruction sets for ``--target``. ``auto``: the host CPU; ``portable``: types that
#: keep their accuracy on every x86-64 CPU (7-bit weights: no int16 saturation anywhere).
TARGETS: dict[str, str] = {
    "auto": "the CPU quantizing the model (or $ONNXQ_TARGET when set)",
    "avx2": "x86 AVX2 without VNNI (u8 x s8 pairs saturate in int16: 7-bit weights)",
    "avx512": "x86 AVX-512 without VNNI (same saturation as AVX2: 7-bit weights)",
    "vnni": "x86 with AVX512-VNNI or AVX-VNNI (exact int32 dot products: 8-bit weights)",
    "amx": "x86 with AMX-INT8 (exact: 8-bit weights)",
    "portable": "any x86-64 CPU: 7-bit weights, never saturates, same accuracy everywhere",
    "arm": "Arm with the dot-product extension (exact: 8-bit weights)",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A concrete target: the types to quantize for and whether its u8 x s8 kernels saturate
    pairs of products in int16 (``vpmaddubsw``)."""

    name: str
    saturates: bool
    recommendation: Recommendation


def host_target(features: CpuFeatures | None = None) -> str:
    """The concrete target name of a CPU (what ``auto`` means on it)."""
    f = features or detect()
    if f.x86:
        if f.amx_int8:
            return "amx"
        if f.vnni:
            return "vnni"
        return "avx512" if f.avx512f else "avx2"
    if f.arch in {"aarch64", "arm64"}:
        return "arm"
    return "portable"


def resolve_target(name: str | None, features: CpuFeatures | None = None) -> str:
    """``auto`` (or None) → ``$ONNXQ_TARGET`` if set, else the host's target; others as given."""
    name = (name or "auto").lower()
    if name == "auto":
        forced = os.environ.get(TARGET_ENV, "").strip().lower()
        if forced and forced != "auto":
            if forced not in TARGETS:
                raise ValueError(f"{TARGET_ENV}={forced!r} is not a target; choose one of "
                                 f"{', '.join(t for t in TARGETS if t != 'auto')}")
            return forced
        return host_target(features)
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    return name


def target_of(name: str | None, features: CpuFeatures | None = None) -> Target:
    """The concrete ``Target`` for a target name (``auto`` resolved on ``features``)."""
    concrete = resolve_target(name, features)
    saturates = concrete in {"avx2", "avx512"}
    seven_bit = saturates or concrete == "portable"
    reason = TARGETS[concrete]
    rec = Recommendation(activation=QType.U8, weight=QType.S8, reduce_range=seven_bit,
                         reason=f"target {concrete}: {reason}")
    return Target(name=concrete, saturates=saturates, recommendation=rec)


def exact_depthwise(weight_shape: tuple[int, ...] | list[int], group: int) -> bool:
    """A Conv weight of shape ``weight_shape`` with ``group`` groups is depthwise in
    onnxruntime's sense (one input and one output channel per group), so its int8 products run
    in MLAS's depthwise kernels. Those widen u8 and s8 to int16 before multiplying and add in
    int32: exact on every x86 CPU, with or without VNNI, so 8-bit weights never saturate there."""
    shape = tuple(int(d) for d in weight_shape)
    return len(shape) >= 3 and shape[1] == 1 and group >= 1 and shape[0] == group


def weight_reduce_range(op: str, weight_shape: tuple[int, ...] | list[int] | None,
                        group: int, reduce_range: bool) -> bool:
    """The ``reduce_range`` (7-bit weights) of one ``op`` node's weight on a target whose own
    is ``reduce_range``: every weight keeps it, except depthwise convs, which get 8 bits since
    they are exact everywhere (``exact_depthwise``)."""
    if not reduce_range:
        return False
    return not (op == "Conv" and weight_shape is not None and exact_depthwise(weight_shape, group))
