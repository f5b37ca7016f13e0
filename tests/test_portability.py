"""Portability across x86 CPUs: the types follow an explicit target (never silently the host),
the target is recorded in the model, and ``--emulate`` scores a model as another CPU computes
it. Where a check depends on the machine, it is parametrized by ``kernels/isa.py``'s view of
this CPU and says so."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.cli import describe, main
from onnxq.emulate import EmulatedSession
from onnxq.errors import ConfigError
from onnxq.kernels import isa
from tests import builders as B
from tests.conftest import run_model

AVX2_HOST = isa.CpuFeatures(arch="x86_64", avx2=True)
VNNI_HOST = isa.CpuFeatures(arch="x86_64", avx2=True, avx512f=True, avx512_vnni=True)
HOST = isa.host_target()  # what this machine is (CPUID), whatever $ONNXQ_TARGET says


# -------------------------------------------------------------- targets and host detection
def test_targets_resolve_to_types(monkeypatch):
    monkeypatch.delenv(isa.TARGET_ENV, raising=False)
    bits = {t: isa.target_of(t).recommendation.reduce_range for t in isa.TARGETS if t != "auto"}
    assert bits == {"avx2": True, "avx512": True, "vnni": False, "amx": False,
                    "portable": True, "arm": False}
    assert isa.resolve_target("auto", AVX2_HOST) == "avx2"
    assert isa.resolve_target("auto", VNNI_HOST) == "vnni"
    assert isa.resolve_target(None, isa.CpuFeatures(arch="x86_64", avx2=True, avx512f=True)) \
        == "avx512"
    assert isa.resolve_target("auto", isa.CpuFeatures(arch="x86_64", amx_int8=True)) == "amx"
    monkeypatch.setenv(isa.TARGET_ENV, "avx2")
    assert isa.resolve_target("auto", VNNI_HOST) == "avx2"
    assert isa.resolve_target("vnni", AVX2_HOST) == "vnni"  # explicit beats everything
    monkeypatch.setenv(isa.TARGET_ENV, "sse2")
    with pytest.raises(ConfigError, match="ONNXQ_TARGET='sse2'"):
        onnxq.quantize(B.conv_bn_relu(), B.feeds(B.conv_bn_relu()), progress=False)


def test_cpuid_wins_over_proc_cpuinfo(monkeypatch):
    """Under an emulator (qemu -cpu Haswell) /proc/cpuinfo shows the host's flags; the CPU
    the process really runs on is what CPUID says."""
    host_info = "flags\t: fpu avx2 avx512f avx512_vnni avx_vnni amx_int8\n"
    monkeypatch.setattr(isa, "_read_cpuinfo", lambda: host_info)
    monkeypatch.setattr(isa, "_cpuid_flags", lambda: {"avx2"})
    f = isa.detect(arch="x86_64")
    assert (f.avx2, f.avx512f, f.vnni, f.amx_int8) == (True, False, False, False)
    monkeypatch.setattr(isa, "_cpuid_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    f = isa.detect(arch="x86_64")  # they agree: AVX-VNNI and AMX come from /proc/cpuinfo
    assert f.avx512_vnni and f.avx_vnni and f.amx_int8
    monkeypatch.setattr(isa, "_cpuid_flags", lambda: None)  # no numpy view: /proc/cpuinfo
    assert isa.detect(arch="x86_64").amx_int8


@pytest.mark.parametrize("target", ["portable", "avx2", "vnni", "amx"])
def test_types_depend_only_on_the_target(monkeypatch, target):
    """Same inputs + same target → byte-identical output, whichever CPU quantizes."""
    monkeypatch.delenv(isa.TARGET_ENV, raising=False)
    model = B.depthwise_hardswish()
    calib = B.feeds(model, batch=2, n=3, seed=1)
    blobs = []
    for host in (AVX2_HOST, VNNI_HOST):
        monkeypatch.setattr(isa, "detect", lambda *a, _h=host, **k: _h)
        result = onnxq.quantize(model, calib, progress=False, target=target)
        blobs.append(result.model.SerializeToString(deterministic=True))
        meta = {p.key: p.value for p in result.model.metadata_props}
        assert meta["onnxq.target"] == target and result.config.target == target
        assert meta["onnxq.weight_bits"] == ("8" if target in ("vnni", "amx") else "7")
    assert blobs[0] == blobs[1]


def test_auto_follows_the_host_and_is_recorded(monkeypatch):
    monkeypatch.delenv(isa.TARGET_ENV, raising=False)
    model = B.conv_bn_relu()
    calib = B.feeds(model, batch=2, n=3, seed=1)
    seen = {}
    for host in (AVX2_HOST, VNNI_HOST):
        monkeypatch.setattr(isa, "detect", lambda *a, _h=host, **k: _h)
        result = onnxq.quantize(model, calib, progress=False)  # target auto
        seen[result.config.target] = result.report.weight_bits
        assert "auto" not in result.config.to_json()  # the saved config is explicit
    assert seen == {"avx2": 7, "vnni": 8}


# -------------------------------------------------------- a model that saturates on AVX2
def _wide_weight_depthwise_cnn() -> tuple[onnx.ModelProto, list[dict], tuple]:
    """A depthwise CNN whose stem and pointwise weights all sit near full scale ("wide range":
    per-channel int8 values near ±127) on bright images: adjacent u8 x s8 products of the same
    sign overflow int16 on CPUs without VNNI. The head is fitted in closed form (ridge
    regression on FP32 features) so FP32 classifies the held-out images perfectly."""
    rng = np.random.default_rng(0)

    def wide(shape, scale):
        return (rng.choice([-1.0, 1.0], shape) * rng.uniform(0.8, 1.0, shape) * scale
                ).astype(np.float32)

    consts = {"w1": wide((16, 3, 3, 3), 0.3), "b1": np.full(16, -0.5, np.float32),
              "wd": (rng.standard_normal((16, 1, 3, 3)) * 0.5).astype(np.float32),
              "wp": wide((32, 16, 1, 1), 0.2)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="stem", pads=[1] * 4,
                              strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "wd"], ["c2"], name="dw", pads=[1] * 4, group=16,
                              strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "wp"], ["c3"], name="pw"),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat")]

    def build(extra_nodes, extra_consts, out, width):
        c = {**consts, **extra_consts}
        graph = helper.make_graph(
            nodes + extra_nodes, "wide_dw",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", width])],
            [numpy_helper.from_array(v, k) for k, v in c.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    protos = np.random.default_rng(1).uniform(0.0, 1.0, (10, 3, 32, 32)).astype(np.float32)

    def data(n, seed):
        r = np.random.default_rng(seed)
        y = r.integers(0, 10, n)
        x = np.clip(protos[y] + r.normal(0, 0.05, (n, 3, 32, 32)), 0, 1).astype(np.float32)
        return x, y

    x_train, y_train = data(400, 2)
    feats = run_model(build([], {}, "f", 32), {"x": x_train})[0]
    a = np.c_[feats, np.ones(len(feats))]
    w = np.linalg.solve(a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ np.eye(10)[y_train])
    model = build([helper.make_node("Gemm", ["f", "wh", "bh"], ["y"], name="head")],
                  {"wh": w[:-1].astype(np.float32), "bh": w[-1].astype(np.float32)}, "y", 10)
    calib = [{"x": x_train[i:i + 20]} for i in range(0, 200, 20)]
    return model, calib, data(300, 3)


def _accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    return 100.0 * float((np.concatenate(outputs).argmax(1) == labels).mean())


def test_portable_target_keeps_accuracy_where_8_bit_weights_saturate():
    model, calib, (x, y) = _wide_weight_depthwise_cnn()
    feeds = [{"x": x[i:i + 50]} for i in range(0, len(x), 50)]
    fp32 = _accuracy([run_model(model, f)[0] for f in feeds], y)
    assert fp32 >= 99.0, "the model did not fit; the test would mean nothing"
    acc = {}
    for target in ("vnni", "portable"):
        q = onnxq.quantize(model, calib, progress=False, target=target).model
        for cpu in ("vnni", "avx2"):
            sess = EmulatedSession(q, cpu)
            acc[target, cpu] = _accuracy([sess.run(["y"], f)[0] for f in feeds], y)
    assert fp32 - acc["portable", "avx2"] <= 0.5 and fp32 - acc["portable", "vnni"] <= 0.5, acc
    assert fp32 - acc["vnni", "vnni"] <= 0.5, acc
    assert fp32 - acc["vnni", "avx2"] >= 20.0, acc  # 8-bit weights collapse without VNNI


def test_cli_quantize_portable_and_compare_emulated(tmp_path, capsys):
    model, calib, (x, y) = _wide_weight_depthwise_cnn()
    src, out = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    onnx.save(model, src)
    np.savez(tmp_path / "calib.npz", x=np.concatenate([f["x"] for f in calib]))
    np.savez(tmp_path / "eval.npz", x=x[:100])
    assert main(["quantize", str(src), str(out), "--calib-data", str(tmp_path / "calib.npz"),
                 "--calib-batch", "20", "--target", "portable", "--quiet"]) == 0
    for cpu in ("avx2", "vnni"):
        js = tmp_path / f"{cpu}.json"
        assert main(["compare", str(src), str(out), "--data", str(tmp_path / "eval.npz"),
                     "--batch", "50", "--emulate", cpu, "--json", str(js)]) == 0
        payload = json.loads(js.read_text())
        assert payload["emulate"] == cpu
        assert payload["outputs"][0]["top1_agreement"] >= 0.995
        assert f"as on a CPU with {cpu} (emulated)" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    assert "target portable (7-bit weights)" in capsys.readouterr().out


def test_inspect_warns_when_this_cpu_saturates_where_the_target_did_not():
    model, calib, _ = _wide_weight_depthwise_cnn()
    for fmt in ("qdq", "qlinear"):
        wide = onnxq.quantize(model, calib, progress=False, target="vnni", format=fmt).model
        narrow = onnxq.quantize(model, calib, progress=False, target="portable",
                                format=fmt).model
        info = describe(wide, host="avx2")
        assert info["target"] == "vnni" and info["full_range_weights"] >= 2
        assert "--emulate avx2" in info["warning"] and "--target portable" in info["warning"]
        assert describe(wide, host="vnni")["warning"] is None
        assert describe(narrow, host="avx2")["warning"] is None
        assert describe(narrow, host="avx2")["full_range_weights"] == 0


# ------------------------------------------- the emulation against this CPU's onnxruntime
_EXACT = ["conv_bn_relu", "residual_block", "depthwise_hardswish", "matmul_add", "matmul_add_3d"]


@pytest.mark.skipif(HOST not in ("avx2", "avx512", "vnni", "amx"),
                    reason="emulates x86 kernels; this CPU is not x86")
@pytest.mark.parametrize("name", _EXACT)
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_emulating_this_cpu_matches_onnxruntime_bit_for_bit(name, fmt):
    """On an AVX2 machine this checks the int16 saturation model against onnxruntime's AVX2
    kernels (8-bit weights do saturate there); on a VNNI machine, the exact path."""
    model = getattr(B, name)()
    q = onnxq.quantize(model, B.feeds(model, batch=2, n=3, seed=1), progress=False,
                       target="vnni", format=fmt).model
    feed = B.feeds(model, batch=2, n=1, seed=7)[0]
    sess = EmulatedSession(q, HOST)
    names = [o.name for o in q.graph.output]
    for got, want in zip(sess.run(names, feed), run_model(q, feed), strict=True):
        assert np.array_equal(got, want), (name, fmt, HOST, np.abs(got - want).max())
    assert sess.counts.emulated >= 1


@pytest.mark.skipif(HOST not in ("avx2", "avx512", "vnni", "amx"),
                    reason="emulates x86 kernels; this CPU is not x86")
def test_emulating_this_cpu_on_the_saturating_model():
    model, calib, (x, _) = _wide_weight_depthwise_cnn()
    q = onnxq.quantize(model, calib, progress=False, target="vnni").model
    feed = {"x": x[:20]}
    got = EmulatedSession(q, HOST).run(["y"], feed)[0]
    assert np.array_equal(got, run_model(q, feed)[0]), HOST


#: (op, index of the int8 weight, index of its zero point)
_WEIGHT_ZERO_POINTS = {"DequantizeLinear": (0, 2), "QLinearConv": (3, 5),
                       "QLinearMatMul": (3, 5), "QGemm": (3, 5)}


@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_an_8_bit_model_runs_exactly_with_onnxruntimes_u8u8_option(fmt):
    """A model with 8-bit weights deployed on a CPU without VNNI is exact when its session sets
    ``session.x64quantprecision=1``: onnxruntime then rewrites each int8 weight and its zero
    point to uint8. It failed to load onnxq's models while weights shared one zero-point
    constant ("Attempt to replace the existing tensor", onnxruntime 1.32, on a Zen 3)."""
    import onnxruntime as ort

    model = B.residual_block()
    result = onnxq.quantize(model, B.feeds(model, n=4, seed=1), progress=False, target="vnni",
                            objective="size", format=fmt)
    consts = {t.name: t for t in result.model.graph.initializer}
    owner: dict[str, str] = {}
    for node in result.model.graph.node:
        w, z = _WEIGHT_ZERO_POINTS.get(node.op_type, (None, None))
        if w is None or len(node.input) <= z or node.input[w] not in consts or \
                consts[node.input[w]].data_type != TensorProto.INT8:
            continue
        assert owner.setdefault(node.input[z], node.input[w]) == node.input[w], node.input[z]
    assert len(owner) >= 3
    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(result.model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = B.feeds(model, n=1, seed=7)[0]
    want = EmulatedSession(result.model, "vnni").run(None, feed)[0]
    np.testing.assert_allclose(session.run(None, feed)[0], want, rtol=0, atol=1e-4)


def _depthwise_net(rank: int) -> onnx.ModelProto:
    """A 1-D or 2-D depthwise conv between two dense convs, every weight near full scale and
    of one sign per filter: on bright inputs adjacent u8 x s8 products overflow int16 wherever
    a kernel adds them in pairs (``vpmaddubsw``)."""
    rng = np.random.default_rng(5)
    k = (3,) * rank

    def wide(shape, scale):
        sign = rng.choice([-1.0, 1.0], (shape[0],) + (1,) * (len(shape) - 1))
        return (sign * rng.uniform(0.8, 1.0, shape) * scale).astype(np.float32)

    consts = {"w1": wide((8, 4, *k), 0.2), "wd": wide((8, 1, *k), 0.5),
              "wp": wide((8, 8) + (1,) * rank, 0.3)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="stem", pads=[1] * 2 * rank),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "wd"], ["c2"], name="dw", group=8,
                              pads=[1] * 2 * rank),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "wp"], ["y"], name="pw")]
    spatial = [12] * rank
    graph = helper.make_graph(
        nodes, f"dw{rank}d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, *spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, name) for name, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
def test_depthwise_convs_keep_8_bit_weights_on_7_bit_targets(rank, fmt):
    """onnxruntime runs depthwise convs in kernels that widen to int16 before multiplying
    (exact on every x86 CPU), so the 7-bit targets give them full 8-bit weights; the dense convs
    keep 7 bits. Run here, the model computes exactly what exact int8 arithmetic computes, and
    ``inspect`` finds no weight that could saturate."""
    from onnxq.emulate import full_range_weights

    model = _depthwise_net(rank)
    rng = np.random.default_rng(rank)
    calib = [{"x": rng.uniform(0.7, 1.0, (2, 4) + (12,) * rank).astype(np.float32)}
             for _ in range(4)]
    q = onnxq.quantize(model, calib, progress=False, target="avx2", objective="size",
                       format=fmt, bias_correction="off").model
    consts = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer
              if t.data_type == TensorProto.INT8 and len(t.dims) == rank + 2}
    widths = sorted((int(np.abs(v.astype(int)).max()), v.shape[1]) for v in consts.values())
    assert widths == [(63, 4), (63, 8), (127, 1)], widths  # stem, pointwise, depthwise
    assert full_range_weights(q) == []
    feed = {"x": rng.uniform(0.9, 1.0, (2, 4) + (12,) * rank).astype(np.float32)}
    want = EmulatedSession(q, "vnni").run(["y"], feed)[0]
    assert np.array_equal(run_model(q, feed)[0], want)
    if HOST in ("avx2", "avx512"):  # the saturation model agrees: nothing saturates
        assert np.array_equal(EmulatedSession(q, HOST).run(["y"], feed)[0], want)
