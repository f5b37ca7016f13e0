"""Shared fixtures. Models are built in code (tests/builders.py); nothing is downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import builders as B  # noqa: E402


@pytest.fixture(autouse=True)
def _every_planned_node_int8(request, monkeypatch):
    """The suite's small models (8-16 channels, 16x16 images) are predicted faster in float
    by the latency placement, which would keep them float and leave untested the quantization
    mechanics these tests check. They run with objective="size" (every planned node int8)
    unless marked ``placement``: the default objective is tested there (test_placement.py,
    the trained digits model, the real-model zoo). Tests only; onnxq has no global state."""
    if request.node.get_closest_marker("placement") is None:
        from onnxq.config import PlacementConfig

        monkeypatch.setitem(PlacementConfig.__init__.__kwdefaults__, "objective", "size")


def run_model(model: onnx.ModelProto, feed: dict, *, threads: int = 1,
              optimized_path: str | None = None) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


@pytest.fixture(params=sorted(B.ALL_SMALL))
def small_model_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def calib_cache():
    """Calibration feeds per model name (built once per session)."""
    cache: dict[str, list] = {}

    def get(name: str, model: onnx.ModelProto) -> list:
        if name not in cache:
            cache[name] = B.feeds(model, batch=4, n=8, seed=1)
        return cache[name]

    return get
