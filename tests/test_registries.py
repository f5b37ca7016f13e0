"""One registry per choice: every name round-trips CLI → config → factory, and the CLI offers
exactly the registry's names (nothing is listed in two places)."""

from __future__ import annotations

import argparse

import pytest

from onnxq import api
from onnxq.calibrators import CALIBRATORS, METHODS, Calibrator, make_calibrator
from onnxq.cli import build_parser, overrides
from onnxq.config import FORMATS, QuantConfig
from onnxq.emulate import EMULATED_ISAS
from onnxq.kernels.isa import TARGETS, target_of
from onnxq.qtypes import QTYPES, QType


def _choices(parser: argparse.ArgumentParser, command: str, flag: str) -> list[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return list(action.choices)


def _config(argv: list[str]) -> QuantConfig:
    return api._resolve_config(None, overrides(build_parser().parse_args(argv)))


BASE = ["quantize", "m.onnx", "out.onnx"]


@pytest.mark.parametrize("name", list(CALIBRATORS))
def test_calibrator_names_round_trip(name):
    cfg = _config([*BASE, "--calibrator", name])
    assert cfg.calibration.method == name
    assert QuantConfig.from_dict(cfg.to_dict()).calibration.method == name
    cal = make_calibrator(cfg.calibration)
    assert isinstance(cal, Calibrator) and cal.name == name


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_names_round_trip(name):
    cfg = _config([*BASE, "--format", name])
    assert cfg.format == name and callable(api.LOWERINGS[name])
    assert set(api.LOWERINGS) == set(FORMATS)


@pytest.mark.parametrize("name", list(QTYPES))
def test_type_names_round_trip(name):
    cfg = _config([*BASE, "--activation-type", name, "--weight-type", name])
    act, weight, _ = api.types_for(cfg)
    assert act is weight is QTYPES[name] and isinstance(act, QType)


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_names_round_trip(name):
    cfg = _config([*BASE, "--target", name])
    assert cfg.target != "auto" and target_of(cfg.target).name == cfg.target
    if name != "auto":
        assert cfg.target == name


def test_cli_choices_are_the_registries():
    parser = build_parser()
    assert _choices(parser, "quantize", "--calibrator") == list(METHODS)
    assert _choices(parser, "calibrate", "--calibrator") == list(METHODS)
    for command in ("quantize", "tune"):
        assert _choices(parser, command, "--format") == list(FORMATS)
        assert _choices(parser, command, "--target") == list(TARGETS)
    assert _choices(parser, "quantize", "--activation-type") == list(QTYPES)
    assert _choices(parser, "compare", "--emulate") == list(EMULATED_ISAS)


def test_registries_are_read_only():
    for registry in (CALIBRATORS, FORMATS, QTYPES, api.LOWERINGS):
        with pytest.raises(TypeError):
            registry["new"] = None  # type: ignore[index]
