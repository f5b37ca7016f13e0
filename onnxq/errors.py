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
    "user_failure",
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


def user_failure(exc: BaseException) -> str | None:
    """The one-line error for a failure the user's files or data caused, or None (a bug)."""
    if isinstance(exc, OSError):  # the file system said no: a full disk, a read-only folder
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}; check the path, its permissions and the free space"
    if type(exc).__module__.startswith("onnxruntime"):  # a session run on the user's data
        text = " ".join(str(exc).split())
        return (f"onnxruntime failed: {text[:400]}; check that the data matches the model's "
                "inputs (shapes, batch size, value ranges such as token ids). One .npz is split "
                "along its first axis into samples: for a model whose first dim is not a batch, "
                "give a folder of .npz files, one feed each. If the FP32 model runs on this "
                "data, this is an onnxq bug: please report it")
    return None
