"""Tuning: a model where plain PTQ misses the target gets there with a few float ops; the
time budget stops the search with the best model so far."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.config import QuantConfig
from onnxq.emulate import target_session
from onnxq.tune import TuneTarget, tune
from tests.conftest import cosine, run_model


def _outlier_model() -> onnx.ModelProto:
    """Two dense layers; one hidden channel is ~300x larger than the rest (as in LLM/BERT
    outlier features), so a per-tensor int8 activation crushes the other 63 channels."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 64)) / 8).astype(np.float32)
    w1[:, 7] *= 300.0
    w2 = (rng.standard_normal((64, 16)) / 8).astype(np.float32)
    w2[7, :] /= 300.0
    w3 = (rng.standard_normal((16, 10)) / 4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu1"),
         helper.make_node("MatMul", ["r", "w2"], ["h2"], name="fc2"),
         helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
         helper.make_node("MatMul", ["r2", "w3"], ["y"], name="fc3")],
        "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(seed: int, n: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((16, 64)).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("isa", ["avx2", "vnni"])
def test_tuning_meets_a_target_plain_ptq_misses(isa):
    """Both targets' types: with 7-bit weights (AVX2) "first and last layers float" scored
    best among the recipes and used to hide those nodes from the fallback's ranking, so the
    search ended with FP32 on AVX2 machines only. Each trial is scored as the target's CPU
    computes it: on an AVX2 machine a vnni model's fc1 (its weights 8-bit, its output read by a
    float Relu) runs int8 and saturates, where the target's kernels are exact."""
    model = _outlier_model()
    calib, evals = _feeds(1, 8), _feeds(2, 4)
    plain = onnxq.quantize(model, calib, progress=False, target=isa)
    feed = evals[0]
    assert cosine(run_model(model, feed)[0], run_model(plain.model, feed)[0]) < 0.999
    result = tune(model, calib, eval_data=evals, config=QuantConfig(target=isa),
                  target=TuneTarget(max_drop=0.0005, latency=False, max_trials=20))
    assert result.chosen is not None, result.table()
    assert result.chosen.drop <= 0.0005
    assert 1 <= len(result.chosen.float_nodes) <= 2  # a few float ops, not the whole model
    assert len(result.trials) <= 12 + (isa == "avx2")  # + u8-weights where weights are 7-bit
    # as the target's CPU computes it: a vnni model on an AVX2 machine saturates its int8 sums
    tuned = target_session(result.model).run(None, feed)[0]
    assert cosine(run_model(model, feed)[0], tuned) >= 0.9995
    text = result.table()
    assert "chosen: trial" in text and "too inaccurate" in text
    log = result.log()
    assert log["trials"][0]["recipe"].startswith("default") and log["chosen"] is not None


def test_time_budget_stops_with_best_so_far():
    model = _outlier_model()
    result = tune(model, _feeds(1, 4), eval_data=_feeds(2, 2),
                  target=TuneTarget(max_drop=0.0005, time_budget=0.0, latency=False))
    assert "time budget" in result.stopped
    assert len(result.trials) == 1
    # nothing met the target: the FP32 model comes back, never a half-tuned one
    assert result.chosen is None
    onnx.checker.check_model(result.model)


def test_latency_check_never_ships_a_slower_model():
    from tests import builders as B

    model = B.conv_bn_relu()
    result = tune(model, B.feeds(model, batch=8, n=4, seed=1),
                  eval_data=B.feeds(model, batch=8, n=2, seed=2),
                  target=TuneTarget(max_drop=0.01, latency=True, max_trials=8))
    if result.chosen is not None:
        assert result.chosen.latency_ratio is not None and result.chosen.latency_ratio >= 1.0
    else:
        assert "QuantizeLinear" not in {n.op_type for n in result.model.graph.node}


def test_tune_needs_a_metric():
    from onnxq.errors import ConfigError

    with pytest.raises(ConfigError, match="eval_data"):
        tune(_outlier_model(), _feeds(1, 2))


def test_cli_tune_with_top1_labels(tmp_path, capsys):
    from onnxq.cli import main

    model = _outlier_model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((64, 64)).astype(np.float32))
    x = rng.standard_normal((64, 64)).astype(np.float32)
    labels = run_model(model, {"x": x})[0].argmax(1)
    np.savez(tmp_path / "eval.npz", x=x, labels=labels)
    out, log = tmp_path / "tuned.onnx", tmp_path / "log.json"
    assert main(["tune", str(tmp_path / "m.onnx"), str(out), "--calib-data",
                 str(tmp_path / "calib.npz"), "--eval-data", str(tmp_path / "eval.npz"),
                 "--batch", "16", "--metric", "top1", "--max-drop", "0.02", "--no-latency",
                 "--log", str(log)]) == 0
    assert "chosen" in capsys.readouterr().out and out.exists() and log.exists()


def test_ctrl_c_returns_the_best_model_so_far():
    from tests.conftest import cosine as cos

    model = _outlier_model()
    evals = _feeds(2, 2)
    calls = {"n": 0}
    ref = run_model(model, evals[0])[0]

    def evaluate(m):
        calls["n"] += 1
        if calls["n"] == 3:  # FP32, trial 0, then the user presses Ctrl-C
            raise KeyboardInterrupt
        return cos(ref, run_model(m, evals[0])[0])

    result = tune(model, _feeds(1, 4), evaluate,
                  target=TuneTarget(max_drop=0.0005, latency=False))
    assert result.stopped.startswith("interrupted")
    assert len(result.trials) == 1 and not result.trials[0].meets_target
    # nothing had met the target: FP32 comes back (a complete, valid model)
    assert result.chosen is None
    assert "QuantizeLinear" not in {n.op_type for n in result.model.graph.node}
    onnx.checker.check_model(result.model)


def test_tune_keeps_the_users_calibration_settings():
    """tune used to build every calibrator from QuantConfig() defaults: allow_nonfinite (and
    num_bins, percentile) never reached the calibration run."""
    model = _outlier_model()
    calib = _feeds(1, 4)
    calib[1]["x"][0, 0] = np.nan
    config = QuantConfig().with_overrides(allow_nonfinite=True, num_bins=512, percentile=99.9)
    result = tune(model, calib, eval_data=_feeds(2, 2), config=config,
                  target=TuneTarget(max_drop=0.5, latency=False, max_trials=2))
    assert result.chosen is not None and result.trials[0].metric is not None


def test_tune_uses_the_users_calibrator_settings(monkeypatch):
    import importlib

    tune_module = importlib.import_module("onnxq.tune")

    seen = []
    real = tune_module.make_calibrator
    monkeypatch.setattr(tune_module, "make_calibrator",
                        lambda cfg: seen.append(cfg) or real(cfg))
    config = QuantConfig().with_overrides(num_bins=512, percentile=99.9)
    tune(_outlier_model(), _feeds(1, 2), eval_data=_feeds(2, 1), config=config,
         target=TuneTarget(max_drop=0.5, latency=False, max_trials=1))
    assert {c.method for c in seen} == {"minmax", "entropy", "percentile", "mse"}
    assert all(c.num_bins == 512 and c.percentile == 99.9 for c in seen)


def test_cli_tune_takes_config_format_and_target(tmp_path):
    from onnxq.cli import main

    onnx.save(_outlier_model(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((32, 64)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.standard_normal((32, 64)).astype(np.float32))
    (tmp_path / "cfg.toml").write_text("[calibration]\nnum_bins = 512\n")
    out = tmp_path / "tuned.onnx"
    assert main(["tune", str(tmp_path / "m.onnx"), str(out), "--calib-data",
                 str(tmp_path / "calib.npz"), "--eval-data", str(tmp_path / "eval.npz"),
                 "--batch", "16", "--max-drop", "0.5", "--no-latency", "--max-trials", "1",
                 "--config", str(tmp_path / "cfg.toml"), "--format", "qlinear",
                 "--target", "portable", "--quiet"]) == 0
    tuned = onnx.load(str(out))
    assert "QLinearMatMul" in {n.op_type for n in tuned.graph.node}
    assert {p.key: p.value for p in tuned.metadata_props}["onnxq.target"] == "portable"


def test_tune_tries_dynamic_mode_on_an_encoder_and_keeps_the_faster():
    """A model whose compute is all MatMul gets dynamic mode as one more trial, timed beside
    the static choice in one interleaved run; a CNN is not offered it."""
    from onnxq.tune_mode import DYNAMIC
    from tests import builders as B

    model = B.attention_block(layers=2)
    result = tune(model, B.feeds(model, n=6, seed=1), eval_data=B.feeds(model, n=3, seed=2),
                  target=TuneTarget(max_drop=0.01, latency=True, max_trials=8), progress=False)
    dynamic = [t for t in result.trials if t.recipe == DYNAMIC]
    assert len(dynamic) == 1 and dynamic[0].metric is not None, result.table()
    t = dynamic[0]
    ops = {n.op_type for n in result.model.graph.node}
    if result.chosen is t:  # chosen: it met the target and measured faster
        assert t.meets_target and t.latency_ratio is not None
        assert "faster than the static choice" in t.decision or "no static" in t.decision
        assert "QuantizeLinear" not in ops and ops & {"DynamicQuantizeLinear",
                                                      "DynamicQuantizeMatMul"}
    else:
        assert "rejected" in t.decision or "not faster" in t.decision or \
            "slower than FP32" in t.decision
    cnn = B.conv_bn_relu()
    other = tune(cnn, B.feeds(cnn, n=4, seed=1), eval_data=B.feeds(cnn, n=2, seed=2),
                 target=TuneTarget(max_drop=0.01, latency=False, max_trials=4),
                 progress=False)
    assert DYNAMIC not in {t.recipe for t in other.trials}
