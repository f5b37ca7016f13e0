"""Byte-identical output: the builder models quantized with an explicit target hash to the
values recorded here, on every machine (checked on AVX-512 VNNI and, under qemu, on an
AVX2-only Zen 3) and across refactors. A change that alters them is a behaviour change: update
the table only on purpose, and say why in the commit."""

from __future__ import annotations

import hashlib

import pytest

import onnxq
from tests import builders as B

EXPECTED = {
    ("conv_bn_relu", "minmax", "qdq"): "7d14d941b67d435f",
    ("conv_bn_relu", "entropy", "qdq"): "317cf5eca86d34ee",
    ("residual_block", "minmax", "qdq"): "bbfcfb421acf56f2",
    ("residual_block", "entropy", "qdq"): "cc3fba33ce7a23d0",
    # HardSwish decomposition became its own pass: same nodes and bit-identical outputs, but
    # the topological sort now breaks ties differently (was 8777edbd…, 033717a4…).
    ("depthwise_hardswish", "minmax", "qdq"): "3a7b68c1e0b3d4eb",
    ("depthwise_hardswish", "entropy", "qdq"): "f2ab440206f011ea",
    ("matmul_add", "minmax", "qdq"): "6c6c2ef46a908255",
    ("matmul_add", "entropy", "qdq"): "d468cde61bc64f10",
    ("matmul_add_3d", "minmax", "qdq"): "d1f7b5f9df1a38ba",
    ("matmul_add_3d", "entropy", "qdq"): "bd546de1bfec09bb",
    ("attention_block", "minmax", "qdq"): "d2bd633ed4007d84",
    ("attention_block", "entropy", "qdq"): "12f46fa92860c943",
    ("conv_bn_relu", "minmax", "qlinear"): "1ff3894416e34bcc",
    ("residual_block", "minmax", "qlinear"): "86a401a53e915d85",
    ("depthwise_hardswish", "minmax", "qlinear"): "f76867739d35d3ef",
    ("matmul_add", "minmax", "qlinear"): "e57cb00b859d9c57",
    ("matmul_add_3d", "minmax", "qlinear"): "d9424ec4224c30e2",
    ("attention_block", "minmax", "qlinear"): "c1ccb1b05268fe5e",
}


def _digest(name: str, calibrator: str, fmt: str) -> str:
    model = getattr(B, name)()
    # objective=size: the quantization itself (the placement would keep these tiny models
    # mostly float; its own determinism is tested in test_placement.py)
    result = onnxq.quantize(model, B.feeds(model, batch=2, n=4, seed=1), progress=False,
                            target="portable", calibrator=calibrator, format=fmt,
                            objective="size")
    return hashlib.sha256(result.model.SerializeToString(deterministic=True)).hexdigest()[:16]


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: "-".join(k))
def test_output_bytes_are_unchanged(key):
    assert _digest(*key) == EXPECTED[key]
