"""Unit tests of the L0/L2 modules: quant math, config, ISA detection, data files, pipeline."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from onnxq import quant_math as qm
from onnxq.config import QuantConfig
from onnxq.data import load_feeds
from onnxq.errors import CalibrationError, ConfigError, PassError
from onnxq.kernels.isa import detect, recommend
from onnxq.pipeline import PassResult, Pipeline
from onnxq.qtypes import QType, TensorRange
from tests import builders as B


# -- quant math -----------------------------------------------------------------------------
def test_activation_params_closed_form():
    p = qm.activation_params(TensorRange(-1.0, 3.0), QType.U8)
    assert np.isclose(p.scale, 4.0 / 255) and int(p.zero_point) == 64
    # zero is exactly representable
    assert qm.dequantize(qm.quantize(np.zeros(3, np.float32), p), p).tolist() == [0, 0, 0]
    relu = qm.activation_params(TensorRange(0.0, 6.0), QType.U8)
    assert int(relu.zero_point) == 0 and np.isclose(relu.scale, 6.0 / 255)
    s8 = qm.activation_params(TensorRange(-2.0, 2.0), QType.S8, symmetric=True)
    assert int(s8.zero_point) == 0 and np.isclose(s8.scale, 4.0 / 255)


def test_constant_zero_tensor_gets_valid_scale():
    p = qm.activation_params(TensorRange(0.0, 0.0), QType.U8)
    assert float(p.scale) > 0 and np.isfinite(p.scale)


def test_weight_params_per_channel_symmetric_and_reduce_range():
    w = np.array([[1.0, -2.0], [0.5, 0.25]], np.float32)
    p = qm.weight_params(w, QType.S8, axis=0)
    # per-channel scales are moved up onto the float16 grid (stored as float16, exactly)
    assert np.all(p.scale >= np.array([2.0 / 127, 0.5 / 127], np.float32))
    np.testing.assert_allclose(p.scale, [2.0 / 127, 0.5 / 127], rtol=2.0**-10)
    assert np.array_equal(p.scale.astype(np.float16).astype(np.float32), p.scale)
    q = qm.quantize(w, p)
    assert q.dtype == np.int8 and q.max() == 127 and q.min() == -127
    assert np.abs(qm.dequantize(q, p) - w).max() <= p.scale.max() / 2 + 1e-7
    r = qm.weight_params(w, QType.S8, axis=None, reduce_range=True)
    assert np.abs(qm.quantize(w, r)).max() == 63


def test_quantize_rounds_half_to_even_and_saturates():
    p = qm.activation_params(TensorRange(0.0, 255.0), QType.U8)  # scale 1, zp 0
    x = np.array([0.5, 1.5, 2.5, -3.0, 300.0], np.float32)
    assert qm.quantize(x, p).tolist() == [0, 2, 2, 0, 255]


def test_bias_quantization_and_saturation_count():
    w = qm.weight_params(np.ones((2, 3), np.float32), QType.S8, axis=0)
    bp = qm.bias_params(np.float32(0.1), w)
    values, sat = qm.quantize_bias(np.array([1.0, 1e9]), bp)
    assert values.dtype == np.int32 and sat == 1
    assert np.isclose(values[0] * bp.scale[0], 1.0, rtol=1e-3)


def test_nonfinite_range_is_rejected():
    with pytest.raises(CalibrationError, match="NaN/Inf"):
        TensorRange(0.0, float("nan"))


# -- config ---------------------------------------------------------------------------------
def test_config_round_trip_and_unknown_keys(tmp_path):
    cfg = QuantConfig().with_overrides(per_channel=False, exclude_nodes=["a"],
                                       activation_type="s8")
    assert QuantConfig.from_dict(json.loads(cfg.to_json())) == cfg
    toml = tmp_path / "c.toml"
    toml.write_text('exclude_op_types = ["Softmax"]\n[weight]\nper_channel = false\n')
    loaded = QuantConfig.from_file(toml)
    assert loaded.weight.per_channel is False and loaded.exclude_op_types == ("Softmax",)
    with pytest.raises(ConfigError, match="valid keys: dtype, per_channel, reduce_range"):
        QuantConfig.from_dict({"weight": {"per_chanel": True}})
    with pytest.raises(ConfigError, match="choose one of"):
        QuantConfig.from_dict({"format": "onnx"})
    with pytest.raises(ConfigError, match="list of strings"):
        QuantConfig(exclude_nodes="conv1")


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        QuantConfig().format = "qdq"  # type: ignore[misc]


# -- ISA ------------------------------------------------------------------------------------
def test_isa_detection_from_cpuinfo_text():
    vnni = detect("flags\t: fpu avx2 avx512f avx512_vnni\n", arch="x86_64")
    assert vnni.vnni and recommend(vnni).reduce_range is False
    old = detect("flags\t: fpu avx2\n", arch="x86_64")
    assert not old.vnni and recommend(old).reduce_range is True
    arm = detect("Features\t: fp asimd asimddp\n", arch="aarch64")
    assert arm.arm_dotprod and recommend(arm).activation is QType.U8
    assert detect().arch  # this machine


# -- data files -----------------------------------------------------------------------------
def test_npz_split_and_folder(tmp_path):
    np.savez(tmp_path / "all.npz", a=np.arange(10, dtype=np.float32).reshape(5, 2),
             b=np.zeros((5, 1), np.int64))
    feeds = load_feeds(tmp_path / "all.npz", batch=2)
    batches = list(feeds)
    assert len(feeds) == 3 and [f["a"].shape[0] for f in batches] == [2, 2, 1]
    folder = tmp_path / "dir"
    folder.mkdir()
    for i in range(3):
        np.savez(folder / f"{i}.npz", a=np.full((1, 2), i, np.float32))
    assert [float(f["a"][0, 0]) for f in load_feeds(folder)] == [0.0, 1.0, 2.0]
    np.savez(tmp_path / "ragged.npz", a=np.zeros((3, 2)), b=np.zeros((4, 2)))
    with pytest.raises(CalibrationError, match="leading sample axis"):
        load_feeds(tmp_path / "ragged.npz")
    (tmp_path / "junk.npz").write_text("nope")
    with pytest.raises(CalibrationError, match="numpy.savez"):
        list(load_feeds(tmp_path / "junk.npz"))


# -- pipeline contract ----------------------------------------------------------------------
class _Boom:
    name = "boom"

    def run(self, graph: gs.Graph) -> PassResult:
        raise ValueError("kaput")


class _Nop:
    name = "nop"

    def run(self, graph: gs.Graph) -> PassResult:
        return PassResult(graph=graph, modified=False)


def test_pipeline_names_failing_pass_and_keeps_input():
    model = B.conv_bn_relu()
    before = model.SerializeToString()
    with pytest.raises(PassError, match=r"'boom' failed after \['nop'\].*kaput"):
        Pipeline([_Nop(), _Boom()]).run(model)
    assert model.SerializeToString() == before
    result = Pipeline([_Nop()], debug=True, snapshots=True).run(model)
    assert not result.modified and result.records[0].name == "nop"
    assert len(result.snapshots) == 1
    with pytest.raises(TypeError, match="not a Pass"):
        Pipeline([object()])  # type: ignore[list-item]


@pytest.mark.parametrize("data,message", [
    ({"weight": {"per_channel": "false"}}, "weight.per_channel='false' must be a boolean"),
    ({"activation": {"symmetric": "false"}}, "without quotes"),
    ({"weight": {"reduce_range": 1}}, "weight.reduce_range=1 must be a boolean"),
    ({"calibration": {"max_samples": 2.5}}, "calibration.max_samples=2.5 must be an integer"),
    ({"calibration": {"max_samples": 1e400}}, "calibration.max_samples=inf"),
    ({"calibration": {"percentile": "abc"}}, "calibration.percentile='abc' must be a finite"),
    ({"calibration": {"percentile": float("nan")}}, "calibration.percentile=nan"),
    ({"calibration": {"method": "entropy", "num_bins": 256}}, "needs >= 512"),
    ({"fold_activations": 0}, "fold_activations=0 must be a boolean"),
    ({"min_opset": 13.0}, "min_opset=13.0 must be an integer"),
    ({"target": "avx3"}, "target='avx3' is not valid"),
])
def test_config_values_are_type_checked(data, message):
    """Config booleans were not type-checked: "false" (a string) turned symmetric *on*."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        QuantConfig.from_dict(data)


def test_config_accepts_ints_for_floats():
    cfg = QuantConfig.from_dict({"calibration": {"percentile": 99, "max_samples": 4}})
    assert cfg.calibration.percentile == 99 and cfg.calibration.max_samples == 4
