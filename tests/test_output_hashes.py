"""Byte-identical output: the builder models quantized with an explicit target hash to the
values recorded here, on every machine (checked on AVX-512 VNNI and, under qemu, on an
AVX2-only Zen 3) and across refactors. A change that alters them is a behaviour change: update
the table only on purpose, and say why in the commit."""

from __future__ import annotations

import hashlib

import pytest

import onnxq
from tests import builders as B

# A weight's int8 zero point is no longer shared with other weights' (onnxruntime's exact
# u8 x u8 option on CPUs without VNNI failed to load such models): the tables of the models
# with two or more weights of the same zero point changed then, 2026-12-01 (were
# 27a045a4…, 3483642a…, 503b7da5…, 0d21655b…, 01b613e5…, 2b7a6ecd…,
# 81cf0622…, 15d12d64…, 887edf6c…, 975e1804…, 02406cf5…, 2e5e049c…).
# Fast bias correction became the default recipe (and Conv/Gemm without a bias get a zero one to
# move): every table changed on purpose then. Storage compaction (per-channel weight scales on
# the float16 grid and stored as float16, value_info of standard ops' outputs dropped;
# passes/compact.py; scales move up by less than 2**-10), 2026-12-02: every table changed
# on purpose.
EXPECTED = {
    ("conv_bn_relu", "minmax", "qdq"): "509701986c58f48b",
    ("conv_bn_relu", "entropy", "qdq"): "53945a6c01cee54f",
    ("residual_block", "minmax", "qdq"): "a5f2f3fe8267ea30",
    ("residual_block", "entropy", "qdq"): "b1dc96b107176825",
    # HardSwish decomposition became its own pass: same nodes and bit-identical outputs, but
    # the topological sort now breaks ties differently (was 8777edbd…, 033717a4…). Depthwise
    # convs keep 8-bit weights on the 7-bit targets (exact on every x86 CPU), 2026-12-01
    # (were 94a622dc…, aa8b404a…, c37263f5… for the QLinear one). A conv output read only by
    # HardSwish / x·HardSigmoid(x) is quantized from -3 up (plan_bounds: exact, finer steps),
    # 2026-12-03 (were fd163971…, 46f2b3ec…, c9625cd2… for the QLinear one).
    ("depthwise_hardswish", "minmax", "qdq"): "c90b438f9ef59b23",
    ("depthwise_hardswish", "entropy", "qdq"): "a0c8e058182e05ca",
    ("matmul_add", "minmax", "qdq"): "72f529db33451bd0",
    ("matmul_add", "entropy", "qdq"): "1f9b4cdee4306f8b",
    # The bias Add and the attention scale after an int8 MatMul with a float output are
    # folded into MatMulIntegerToFloat (MatMulEpiloguePass; the 3-D MatMul+Add and attention
    # tables changed: 24a296d6…, 17497083…, c6e3f163… for the 3-D ones, 8eb1f2eb…, d9d581f1…,
    # d4229ed8… for attention; the 3-D QDQ and QLinear forms are now the same graph). Then the
    # q/k/v products are no longer requantized before their bias (UnquantizedBiasPass;
    # attention was e455541a…, 119e72e5…, a23fec3b…)
    ("matmul_add_3d", "minmax", "qdq"): "f9829ac4399ac7ba",
    ("matmul_add_3d", "entropy", "qdq"): "e7c762c6d5eab8e1",
    # Add -> LayerNormalization written as Sum (UnfusedLayerNormAddPass; was 98ec08a1…,
    # 71093469…, 7abba8cf… for the QLinear one)
    ("attention_block", "minmax", "qdq"): "001ebcc68b393376",
    ("attention_block", "entropy", "qdq"): "a4bed3ca86d36806",
    ("conv_bn_relu", "minmax", "qlinear"): "9db1f0c2729ce0e9",
    ("residual_block", "minmax", "qlinear"): "69c5af671facf440",
    ("depthwise_hardswish", "minmax", "qlinear"): "f4840c98ea268f5a",
    ("matmul_add", "minmax", "qlinear"): "69025b455842aec6",
    ("matmul_add_3d", "minmax", "qlinear"): "f9829ac4399ac7ba",
    ("attention_block", "minmax", "qlinear"): "42f6674dc53acb2c",
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
