"""Exception hierarchy. Every message names the object at fault and how to fix it."""

from __future__ import annotations

__all__ = [
    "OnnxqError",
    "ConfigError",
    "ModelError",
    "OutputPathError",
    "UnsupportedOpError",
    "CalibrationError",
    "PassError",
]


class OnnxqError(Exception):
    """Base class of every error onnxq raises on purpose (CLI exit code 2)."""


class ConfigError(OnnxqError):
    """An invalid configuration value or option combination."""


class ModelError(OnnxqError):
    """The model file or graph cannot be read, validated or written."""


class UnsupportedOpError(ModelError):
    """The model uses an operator or opset onnxq cannot handle."""


class CalibrationError(OnnxqError):
    """Calibration data is missing, malformed, or produced unusable ranges."""


class PassError(OnnxqError):
    """A graph pass failed; the message names the pass and the passes before it."""


class OutputPathError(ConfigError, ModelError):
    """An output path onnxq cannot or must not write (missing folder, a directory or device,
    one of its own inputs, another output). Both a ``ConfigError`` and a ``ModelError``, the
    two classes such problems were reported as before this class existed."""
