"""Scale-out on Ray (``onnxq.distributed``): sharded calibration gives byte-identical ranges
for any number of workers, tuning chooses the same model with 1 or 2 workers, a killed worker
changes nothing, zoo runs report failures in their row and skip unchanged models; without the
``[ray]`` extra every command works as before and ``--workers`` says how to install it."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxq
from onnxq import api
from onnxq.calibrate import collect_ranges
from onnxq.calibrators import CALIBRATORS, MinMaxCalibrator
from onnxq.cli import main
from onnxq.config import QuantConfig
from onnxq.distributed import Cluster
from onnxq.errors import ConfigError
from onnxq.tune import TuneTarget, _fan_out, tune
from tests import builders as B
from tests.test_tune import _feeds, _outlier_model


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def _model_and_feeds(n: int = 13):
    model = B.mobilenet_shaped(image=32, num_classes=10)
    return model, B.feeds(model, batch=2, n=n, seed=3)


def _all_ranges(model, feeds, cluster=None, calibrator=None) -> str:
    cfg = QuantConfig()
    fused, plan = api.prepare(model, cfg)
    fan = calibrator or _fan_out(cfg)
    collect_ranges(fused.model, plan.calibration_tensors, feeds, fan, progress=False,
                   cluster=cluster)
    results = fan.results if hasattr(fan, "results") else {"one": fan.compute()}
    return json.dumps({m: {t: [r.lo, r.hi] for t, r in sorted(rs.items())}
                       for m, rs in results.items()}, sort_keys=True)


@pytest.mark.parametrize("method", list(CALIBRATORS))
def test_merging_partial_calibrators_is_exact_in_any_order(method):
    """No Ray needed: the property sharding rests on."""
    from onnxq.calibrators import make_calibrator

    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4, 33)).astype(np.float32) * (1 + i) for i in range(10)]
    batches[3][0, 0] = 0.0
    cfg = QuantConfig().with_overrides(calibrator=method, num_bins=512).calibration
    whole = make_calibrator(cfg)
    for b in batches:
        whole.observe("t", b)
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        shards = [make_calibrator(cfg) for _ in range(3)]
        for i, b in enumerate(batches):
            shards[i % 3].observe("t", b)
        merged = make_calibrator(cfg)
        for k in order:
            merged.merge(shards[k])
        assert merged.compute() == whole.compute()


def test_moving_average_minmax_refuses_to_merge():
    a, b = MinMaxCalibrator(moving_average=True), MinMaxCalibrator(moving_average=True)
    a.observe("t", np.ones(3))
    b.observe("t", np.ones(3))
    with pytest.raises(ValueError, match="order of the batches"):
        a.merge(b)
    with pytest.raises(ValueError, match="different calibrators"):
        MinMaxCalibrator().merge(MinMaxCalibrator(symmetric=True))


def test_sharded_ranges_are_byte_identical(ray_cluster):
    """1, 2 and 4 shards (4 workers share 2 CPUs) and one process: the same bytes, for every
    calibrator (one run feeds all four), with a last block of one feed."""
    model, feeds = _model_and_feeds(13)
    here = _all_ranges(model, feeds)
    for workers in (1, 2, 4):
        assert _all_ranges(model, feeds, Cluster(workers=workers)) == here, workers


def test_quantize_with_workers_writes_the_same_model(ray_cluster):
    """The whole run (ranges, the default recipe's bias-correction means) agrees exactly."""
    model, feeds = _model_and_feeds(9)
    one = onnxq.quantize(model, feeds, progress=False)
    two = onnxq.quantize(model, feeds, progress=False, cluster=Cluster(workers=2))
    assert one.model.SerializeToString() == two.model.SerializeToString()


class _KillOnce(MinMaxCalibrator):
    """Kills the worker process it first observes in (a marker file says it happened)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def observe(self, name, array, *, index=None):
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        super().observe(name, array, index=index)


def test_a_killed_calibration_worker_changes_nothing(ray_cluster, tmp_path):
    model, feeds = _model_and_feeds(9)
    marker = str(tmp_path / "killed")
    plain = _all_ranges(model, feeds, calibrator=MinMaxCalibrator())
    sharded = _all_ranges(model, feeds, Cluster(workers=2), calibrator=_KillOnce(marker))
    assert os.path.exists(marker)  # a worker really died
    assert sharded == plain


def _trials(result) -> list:
    return [(t.recipe, t.float_nodes, t.metric, t.meets_target, t.decision)
            for t in result.trials]


class _KillingMetric:
    """The cosine metric, but its first call in a worker kills the worker's process."""

    def __init__(self, metric, marker: str) -> None:
        self.metric, self.marker, self.driver = metric, marker, os.getpid()

    def __call__(self, model: onnx.ModelProto) -> float:
        if os.getpid() != self.driver and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.metric(model)


def test_tuning_chooses_the_same_model_whatever_the_workers(ray_cluster, tmp_path):
    """The search goes through recipes, the doubling and a bisection; 1 and 2 workers (and a
    worker killed mid-trial) record the same trials and choose the same model as one
    process."""
    from onnxq.tune_types import cosine_metric

    model = _outlier_model()
    calib, evals = _feeds(1, 8), _feeds(2, 4)
    target = TuneTarget(max_drop=0.0005, latency=False, max_trials=20)
    base = tune(model, calib, eval_data=evals, target=target)
    assert base.chosen is not None and len(base.trials) >= 6, base.table()
    for workers in (1, 2):
        other = tune(model, calib, eval_data=evals, target=target,
                     cluster=Cluster(workers=workers))
        assert _trials(other) == _trials(base), (workers, other.table(), base.table())
        assert other.model.SerializeToString() == base.model.SerializeToString()
    marker = str(tmp_path / "killed")
    killed = tune(model, calib, _KillingMetric(cosine_metric(model, evals), marker),
                  target=target, cluster=Cluster(workers=2))
    assert os.path.exists(marker)
    assert _trials(killed) == _trials(base)


def _save_npz(path: Path, feeds: list[dict]) -> str:
    path.mkdir(parents=True)
    for i, f in enumerate(feeds):
        np.savez(path / f"{i:03d}.npz", **f)
    return str(path)


def _zoo(tmp_path: Path) -> Path:
    lines = ["[defaults]", "max_drop = 0.05", "[defaults.config]", 'format = "qdq"', ""]
    for name, model in (("cnn", B.conv_bn_relu()), ("mlp", B.matmul_add())):
        onnx.save(model, tmp_path / f"{name}.onnx")
        _save_npz(tmp_path / f"{name}_calib", B.feeds(model, batch=4, n=4, seed=1))
        _save_npz(tmp_path / f"{name}_eval", B.feeds(model, batch=4, n=2, seed=2))
        lines += ["[[models]]", f'name = "{name}"', f'model = "{name}.onnx"',
                  f'calib_data = "{name}_calib"', f'eval_data = "{name}_eval"', ""]
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    lines += ["[[models]]", 'name = "broken"', 'model = "broken.onnx"',
              'calib_data = "cnn_calib"', 'eval_data = "cnn_eval"', ""]
    (tmp_path / "zoo.toml").write_text("\n".join(lines))
    return tmp_path / "zoo.toml"


@pytest.mark.placement  # Ray workers quantize with the real defaults, not the tests' patch
def test_zoo_runs_in_parallel_reports_failures_and_skips_unchanged_models(
        ray_cluster, tmp_path, capsys):
    zoo = _zoo(tmp_path)
    out = tmp_path / "out"
    args = ["zoo", str(zoo), "--out", str(out), "--seconds", "0.2", "--quiet"]
    assert main([*args, "--workers", "2"]) == 0
    rows = {r["name"]: r for r in json.loads((out / "zoo.json").read_text())["rows"]}
    assert rows["cnn"]["status"] == rows["mlp"]["status"] == "ok"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"]
    assert not rows["broken"]["passed"]
    assert all(rows[n]["speedup"] > 0 and abs(rows[n]["drop"]) < 0.05 for n in ("cnn", "mlp"))
    for name in ("zoo.md", "zoo.png", "models/cnn.onnx", "models/mlp.onnx"):
        assert (out / name).is_file(), name
    assert "pass rate" in (out / "zoo.md").read_text()
    # one process: the same metrics; a rerun skips what did not change
    serial = tmp_path / "serial"
    assert main(["zoo", str(zoo), "--out", str(serial), "--no-latency", "--quiet"]) == 0
    again = {r["name"]: r for r in json.loads((serial / "zoo.json").read_text())["rows"]}
    assert again["cnn"]["int8_metric"] == rows["cnn"]["int8_metric"]
    np.savez(tmp_path / "mlp_eval" / "000.npz", **B.feeds(B.matmul_add(), batch=4, seed=9)[0])
    assert main([*args, "--workers", "2"]) == 0
    rerun = {r["name"]: r for r in json.loads((out / "zoo.json").read_text())["rows"]}
    assert rerun["cnn"]["cached"] and not rerun["mlp"]["cached"]
    assert not rerun["broken"]["cached"] and rerun["broken"]["status"] == "failed"


def test_zoo_file_errors_name_the_problem(tmp_path, capsys):
    zoo = tmp_path / "zoo.toml"
    zoo.write_text('[[models]]\nname = "a"\nmodel = "missing.onnx"\ncalib_data = "."\n'
                   'eval_data = "."\n')
    assert main(["zoo", str(zoo), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    zoo.write_text('[[models]]\nname = "a"\nmodle = "x"\n')
    assert main(["zoo", str(zoo), "--out", str(tmp_path / "o")]) == 2
    assert "unknown key(s) ['modle']" in capsys.readouterr().err


def test_without_ray_workers_say_how_to_install(monkeypatch, tmp_path, capsys):
    model = B.conv_bn_relu()
    onnx.save(model, tmp_path / "m.onnx")
    data = _save_npz(tmp_path / "calib", B.feeds(model, batch=2, n=2))
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as without the extra
    args = ["calibrate", str(tmp_path / "m.onnx"), "--calib-data", data, "--quiet"]
    assert main([*args, "-o", str(tmp_path / "r.json"), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'onnxq[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()
    assert main([*args, "-o", str(tmp_path / "r.json")]) == 0  # as today
    assert main([*args, "-o", str(tmp_path / "r1.json"), "--workers", "1"]) == 0
    assert main([*args, "-o", str(tmp_path / "r2.json"), "--workers", "0"]) == 2
    assert "workers=0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="onnxq\\[ray\\]"):
        onnxq.quantize(model, B.feeds(model, batch=2, n=2), progress=False,
                       cluster=Cluster(workers=2))


def test_order_dependent_calibrators_still_run_in_one_process():
    """A moving-average min/max cannot be merged from blocks: one process observes it as one
    stream (exactly as before sharding existed); sharded, it is refused with the reason."""
    from onnxq.errors import CalibrationError

    model, feeds = _model_and_feeds(9)
    cfg = QuantConfig()
    fused, plan = api.prepare(model, cfg)

    class Plain:  # no merge(): always observed as one stream
        def __init__(self) -> None:
            self.inner = MinMaxCalibrator(moving_average=True)
            self.name = "plain"

        def observe(self, name, array, *, index=None):
            self.inner.observe(name, array, index=index)

        def compute(self):
            return self.inner.compute()

    expected = collect_ranges(fused.model, plan.calibration_tensors, feeds, Plain(),
                              progress=False)
    got = collect_ranges(fused.model, plan.calibration_tensors, feeds,
                         MinMaxCalibrator(moving_average=True), progress=False)
    assert got == expected
    with pytest.raises(CalibrationError, match="order of the feeds"):
        collect_ranges(fused.model, plan.calibration_tensors, feeds,
                       MinMaxCalibrator(moving_average=True), progress=False,
                       cluster=Cluster(workers=2))


def test_an_unpicklable_metric_is_a_clear_error(ray_cluster):
    from onnxq.runtime import make_session

    model = _outlier_model()
    session = make_session(model)

    def metric(m):  # holds an open session: cannot travel to a worker
        return float(session is not None)

    with pytest.raises(ConfigError, match="picklable"):
        tune(model, _feeds(1, 4), metric, target=TuneTarget(latency=False, max_trials=2),
             cluster=Cluster(workers=2))
