"""More real models that ship inside registry packages (see ``benchmarks/real_models.py`` for
the conventions): one module per package family, each with ``LOADERS`` (model name → loader
returning a ``Bench``) and ``PINS`` (the pip requirements it needs, part of the ``bench``
extra)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["LOADERS", "PINS", "MODULES"]

MODULES = ("speech", "ocr", "vision", "audio", "speaker")

LOADERS: dict[str, Callable] = {}
PINS: list[str] = []
for _name in MODULES:
    try:
        _module = importlib.import_module(f"benchmarks.zoo.{_name}")
    except ModuleNotFoundError as _exc:  # a module not written yet, or its import failed
        if _exc.name != f"benchmarks.zoo.{_name}":
            raise
        continue
    LOADERS.update(_module.LOADERS)
    PINS.extend(_module.PINS)
