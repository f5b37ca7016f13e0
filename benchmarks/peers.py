"""Quantizers run side by side by the benchmark suite, each in a child process.

The parent writes ``fp32.onnx`` and ``calib.npz`` into a work folder and runs::

    python benchmarks/peers.py METHOD WORKDIR

which loads them, quantizes, writes ``METHOD.onnx`` and ``METHOD.json`` (wall seconds of the
quantize call, calibration included, and the child's peak RSS (``VmHWM``, i.e. ru_maxrss of
the child alone),
plus the RSS before the call). This file imports only numpy/onnx/onnxruntime at module level so
that it also runs in the separate virtual environment of onnx-neural-compressor (which pins
numpy < 2); the onnxq / NNCF methods import their packages lazily.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = {
    "onnxq_qdq": "onnxq QDQ",
    "onnxq_qlinear": "onnxq QLinear",
    "ort_default": "ORT quantize_static (defaults)",
    "ort_best": "ORT quantize_static (u8, per-channel, QDQ)",
    "nncf": "NNCF nncf.quantize",
    "inc": "onnx-neural-compressor (QDQ)",
    "inc_dynamic": "onnx-neural-compressor dynamic (s8, per-channel)",
    "onnxq_plain": "onnxq QDQ, recipe plain (no bias correction)",
    "onnxq_bc_full": "onnxq QDQ, recipe bc-full",
    "onnxq_gptq": "onnxq QDQ, recipe gptq (+ bc-fast)",
    "onnxq_gptq_only": "onnxq QDQ, recipe gptq without bias correction",
    "onnxq_dynamic": "onnxq dynamic (DynamicQuantizeMatMul)",
    "onnxq_dynamic_fa": "onnxq dynamic, --fuse-attention (QAttention)",
    "onnxq_ov": "onnxq QDQ made for the OpenVINO EP (--ep openvino)",
    "ort_dynamic": "ORT quantize_dynamic (s8, per-channel, after its transformer optimizer)",
}
#: onnxq's accuracy-recovery recipes as extra rows (the ablation): method → quantize overrides
RECIPE_METHODS = {"onnxq_plain": {"bias_correction": "off", "rounding": "nearest"},
                  "onnxq_bc_full": {"bias_correction": "full"},
                  "onnxq_gptq": {"rounding": "gptq", "bias_correction": "fast"},
                  "onnxq_gptq_only": {"rounding": "gptq", "bias_correction": "off"},
                  "onnxq_dynamic": {"mode": "dynamic", "format": "qlinear"},
                  "onnxq_dynamic_fa": {"mode": "dynamic", "format": "qlinear",
                                       "fuse_attention": True},
                  "onnxq_ov": {"target_ep": "openvino"}}
ONNXQ_METHODS = ("onnxq_qdq", "onnxq_qlinear")
ORT_METHODS = ("ort_default", "ort_best", "ort_dynamic")
EXTERNAL_METHODS = ("nncf", "inc", "inc_dynamic")

INC_PACKAGES = ["onnx-neural-compressor", "prettytable", "scipy"]
CACHE = Path(os.environ.get("ONNXQ_BENCH_CACHE", Path.home() / ".cache" / "onnxq-bench"))


# ------------------------------------------------------------------ calibration data on disk
def save_feeds(feeds: list[dict], path: Path) -> None:
    import numpy as np

    arrays = {f"{i}/{name}": np.asarray(value) for i, feed in enumerate(feeds)
              for name, value in feed.items()}
    np.savez(path, **arrays)


def load_feeds(path: Path) -> list[dict]:
    import numpy as np

    with np.load(path) as data:
        feeds: dict[int, dict] = {}
        for key in data.files:
            index, name = key.split("/", 1)
            feeds.setdefault(int(index), {})[name] = data[key]
    return [feeds[i] for i in sorted(feeds)]


def peak_rss_mb() -> float:
    """Peak resident set of this process in MB: VmHWM (reset by exec, unlike ru_maxrss, which
    Linux carries over from the parent through fork + exec: a child started by a 1 GiB parent
    reads 1050 MiB there and 10 MiB here); ru_maxrss where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ------------------------------------------------------------------ the methods (child side)
def _ort(src: Path, dst: Path, feeds: list[dict], best: bool | None) -> None:
    import onnx

    from benchmarks.common import ort_quantize_static

    if best is None:  # dynamic: onnxruntime's transformer fusions first, as INC validates it
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers import optimizer

        fused = optimizer.optimize_model(str(src), model_type="bert", opt_level=1)
        fused.save_model_to_file(str(dst.with_suffix(".fused.onnx")))
        quantize_dynamic(str(dst.with_suffix(".fused.onnx")), str(dst), per_channel=True,
                         weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return

    model, _ = ort_quantize_static(onnx.load(str(src)), feeds, best=best)
    onnx.save(model, str(dst))


def _onnxq(src: Path, dst: Path, feeds: list[dict], fmt: str, **overrides) -> None:
    import onnx

    import onnxq

    # the path, as `onnxq quantize` reads it (onnxq loads its one private copy itself)
    result = onnxq.quantize(str(src), feeds, format=fmt, progress=False, **overrides)
    onnx.save(result.model, str(dst))


def _nncf(src: Path, dst: Path, feeds: list[dict]) -> None:
    import nncf
    import onnx

    model = onnx.load(str(src))
    quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds))
    onnx.save(quantized, str(dst))


def _inc(src: Path, dst: Path, feeds: list[dict], dynamic: bool = False) -> None:
    from onnx_neural_compressor.data_reader import CalibrationDataReader
    from onnx_neural_compressor.quantization import QuantFormat, config, quantize

    if dynamic:  # its dynamic quantizer: s8 weights per channel, no calibration
        quantize(str(src), str(dst), config.DynamicQuantConfig(per_channel=True))
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self):
            return next(self.it, None)

        def rewind(self):
            self.it = iter(feeds)

    cfg = config.StaticQuantConfig(Reader(), quant_format=QuantFormat.QDQ,
                                   calibration_sampling_size=len(feeds))
    quantize(str(src), str(dst), cfg)


def run_child(method: str, workdir: Path) -> dict:
    src, dst = workdir / "fp32.onnx", workdir / f"{method}.onnx"
    feeds = load_feeds(workdir / "calib.npz")
    before = peak_rss_mb()
    start = time.perf_counter()
    if method in ORT_METHODS:
        _ort(src, dst, feeds, best=None if method == "ort_dynamic" else method == "ort_best")
    elif method in ONNXQ_METHODS:
        _onnxq(src, dst, feeds, "qdq" if method == "onnxq_qdq" else "qlinear")
    elif method in RECIPE_METHODS:
        options = dict(RECIPE_METHODS[method])
        _onnxq(src, dst, feeds, options.pop("format", "qdq"), **options)
    elif method == "nncf":
        _nncf(src, dst, feeds)
    elif method in ("inc", "inc_dynamic"):
        _inc(src, dst, feeds, dynamic=method == "inc_dynamic")
    else:
        raise SystemExit(f"unknown method {method!r}; known: {sorted(METHODS)}")
    seconds = time.perf_counter() - start
    info = {"method": method, "quantize_s": seconds, "peak_rss_mb": peak_rss_mb(),
            "rss_before_mb": before}
    (workdir / f"{method}.json").write_text(json.dumps(info))
    return info


# ------------------------------------------------------------------ parent side
def available(method: str) -> str | None:
    """None if ``method`` can run here, else the reason it cannot."""
    import importlib.util

    if method == "nncf" and importlib.util.find_spec("nncf") is None:
        return "not available: pip install nncf"
    if method.startswith("inc"):
        try:
            inc_python()
        except RuntimeError as exc:
            return f"not available: {exc}"
    return None


def inc_python(create: bool = True) -> str:
    """The Python of onnx-neural-compressor's own virtual environment (created on first use
    under ``~/.cache/onnxq-bench/inc-venv``: INC pins numpy < 2, onnxq's venv has numpy 2)."""
    venv = CACHE / "inc-venv"
    python = venv / "bin" / "python"
    marker = venv / ".onnxq-installed"
    failed = venv.parent / "inc-venv.failed"
    if marker.exists():
        return str(python)
    if failed.exists():
        raise RuntimeError(f"an earlier install failed (see {failed}; delete it to retry)")
    if not create:
        raise RuntimeError("its venv is not created yet")
    CACHE.mkdir(parents=True, exist_ok=True)
    log = []
    try:
        for cmd in ([sys.executable, "-m", "venv", str(venv)],
                    [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                     *INC_PACKAGES]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False)
            log.append(proc.stdout + proc.stderr)
            if proc.returncode:
                raise RuntimeError(f"{' '.join(cmd[:4])} … failed: "
                                   f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        probe = subprocess.run([str(python), "-c", "import onnx_neural_compressor"],
                               capture_output=True, text=True, timeout=300, check=False)
        if probe.returncode:
            raise RuntimeError(f"import failed: {probe.stderr.strip().splitlines()[-1:]}")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        failed.write_text("\n".join(log) + f"\n{exc}\n")
        raise RuntimeError(f"pip install {' '.join(INC_PACKAGES)} in {venv}: {exc}") from exc
    marker.write_text("ok\n")
    return str(python)


def quantize_in_child(method: str, fp32_path: Path, calib_path: Path, *,
                      timeout: float = 3600) -> tuple[object, dict]:
    """Run ``method`` in a child process; returns ``(ModelProto, info)`` or raises
    ``RuntimeError`` with the child's last error line."""
    import onnx

    python = inc_python() if method.startswith("inc") else sys.executable
    with tempfile.TemporaryDirectory(prefix=f"onnxq-bench-{method}-") as tmp:
        work = Path(tmp)
        os.symlink(fp32_path.resolve(), work / "fp32.onnx")
        os.symlink(calib_path.resolve(), work / "calib.npz")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        if not method.startswith("inc"):  # the INC venv must not see onnxq's site-packages
            env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("OMP_NUM_THREADS", "2")
        start = time.perf_counter()
        try:
            proc = subprocess.run([python, str(Path(__file__).resolve()), method, str(work)],
                                  capture_output=True, text=True, timeout=timeout, env=env,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"timed out after {timeout:.0f} s") from exc
        if proc.returncode or not (work / f"{method}.json").exists():
            lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
            raise RuntimeError(lines[-1][:300] if lines else f"exit status {proc.returncode}")
        info = json.loads((work / f"{method}.json").read_text())
        info["child_wall_s"] = time.perf_counter() - start
        model = onnx.load(str(work / f"{method}.onnx"))
    return model, info


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: python {sys.argv[0]} METHOD WORKDIR")
    print(json.dumps(run_child(sys.argv[1], Path(sys.argv[2]))))
