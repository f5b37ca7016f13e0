"""Scale-out on Ray: wall time of a 16-trial tuning run and of a 4-model zoo run in one
process, on 1 Ray worker and on 2, on this machine; Ray's start-up and per-trial overhead.

    python -m benchmarks.bench_ray [--quick] [--rounds 2] [--out DIR]

The tuning run uses a stand-in for an expensive user metric: it runs the candidate model over
a fixed evaluation set (the cost, ~1 s here) and scores it by how many MatMuls stayed float,
so the search takes the same 16 trials (recipes, doubling, bisection) every time. Modes run
interleaved, ``--rounds`` times; the best time per mode is reported. Results:
benchmarks/results/ray.{md,json}.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks import common
from onnxq.distributed import Cluster
from onnxq.tune import TuneTarget, tune

ROOT = Path(__file__).resolve().parents[1]


def deep_mlp(layers: int, width: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    graph = helper.make_graph(
        nodes, "deep_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class CostlyMetric:
    """Runs the model over ``feeds`` (the cost of a real metric), then scores it as minus
    the number of MatMuls that read a dequantized input (int8 MatMuls)."""

    def __init__(self, feeds: list[dict]) -> None:
        self.feeds = feeds

    def __call__(self, model: onnx.ModelProto) -> float:
        from onnxq.runtime import make_session

        session = make_session(model, threads=1)
        for feed in self.feeds:
            session.run(None, feed)
        dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return -float(sum(1 for n in model.graph.node
                          if n.op_type == "MatMul" and any(i in dq for i in n.input)))


def _tuning(cluster: Cluster | None, model, calib, metric, max_trials: int):
    t0 = time.perf_counter()
    result = tune(model, calib, metric, cluster=cluster,
                  target=TuneTarget(max_drop=30.0, latency=False, max_trials=max_trials))
    return time.perf_counter() - t0, result


def _zoo_file(folder: Path, quick: bool) -> Path:
    from tests import builders as B

    image = 32 if quick else 128
    models = {"resnet18": B.resnet18_shaped(image=image, num_classes=10),
              "mobilenet": B.mobilenet_shaped(image=image, num_classes=10),
              "lcnet": B.lcnet_shaped(image=image, num_classes=10),
              "mlp": deep_mlp(12, 256)}
    lines = []
    for name, model in models.items():
        onnx.save(model, folder / f"{name}.onnx")
        for kind, seed, n in (("calib", 1, 16), ("eval", 2, 16)):
            (folder / f"{name}_{kind}").mkdir()
            for i, feed in enumerate(B.feeds(model, batch=4, n=n, seed=seed)):
                np.savez(folder / f"{name}_{kind}" / f"{i:03d}.npz", **feed)
        lines += ["[[models]]", f'name = "{name}"', f'model = "{name}.onnx"',
                  f'calib_data = "{name}_calib"', f'eval_data = "{name}_eval"', ""]
    (folder / "zoo.toml").write_text("\n".join(lines))
    return folder / "zoo.toml"


def _zoo(cluster: Cluster | None, zoo: Path, out: Path) -> tuple[float, list[dict]]:
    from onnxq.cli_zoo import run_zoo
    from onnxq.zoo import read_zoo

    t0 = time.perf_counter()
    rows = run_zoo(read_zoo(zoo), out, cluster=cluster, latency=False, rerun=True,
                   progress=False)
    return time.perf_counter() - t0, rows


def _modes() -> dict[str, Cluster | None]:
    return {"one process": None, "Ray, 1 worker": Cluster(workers=1, address="auto"),
            "Ray, 2 workers": Cluster(workers=2, address="auto")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import ray

    load = common.wait_for_idle(max_wait=5 if args.quick else 60)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}})
    init_s = time.perf_counter() - t0
    model = deep_mlp(80, 128)
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((8, 128)).astype(np.float32)} for _ in range(8)]
    evals = [{"x": rng.standard_normal((64, 128)).astype(np.float32)}
             for _ in range(40 if args.quick else 2000)]
    metric = CostlyMetric(evals)
    t0 = time.perf_counter()
    metric(model)
    metric_s = time.perf_counter() - t0
    tuning: dict[str, list[float]] = {m: [] for m in _modes()}
    zoo_t: dict[str, list[float]] = {m: [] for m in _modes()}
    logs, zoo_rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        zoo = _zoo_file(Path(tmp), args.quick)
        for _ in range(args.rounds):
            for mode, cluster in _modes().items():
                seconds, result = _tuning(cluster, model, calib, metric, 16)
                tuning[mode].append(seconds)
                logs[mode] = [(t.recipe, t.metric, t.decision) for t in result.trials]
                seconds, rows = _zoo(cluster, zoo, Path(tmp) / mode.replace(" ", "_"))
                zoo_t[mode].append(seconds)
                zoo_rows[mode] = [(r["name"], r["status"], r.get("int8_metric")) for r in rows]
    ray.shutdown()
    payload = _payload(tuning, zoo_t, logs, zoo_rows, init_s, metric_s, load)
    common.publish("ray", args.quick, payload, _text(payload), args.out)
    return 0


def _payload(tuning, zoo_t, logs, zoo_rows, init_s, metric_s, load) -> dict:
    best = {m: min(v) for m, v in tuning.items()}
    zoo_best = {m: min(v) for m, v in zoo_t.items()}
    trials = len(next(iter(logs.values())))
    same_log = all(log == logs["one process"] for log in logs.values())
    same_zoo = all(r == zoo_rows["one process"] for r in zoo_rows.values())
    return {"environment": common.environment(), "load": load, "ray_init_s": init_s,
            "metric_s": metric_s, "trials": trials, "tuning_s": tuning, "zoo_s": zoo_t,
            "tuning_best_s": best, "zoo_best_s": zoo_best,
            "ray_overhead_per_trial_s": (best["Ray, 1 worker"] - best["one process"]) / trials,
            "tuning_speedup_2_workers": best["Ray, 1 worker"] / best["Ray, 2 workers"],
            "zoo_speedup_2_workers": zoo_best["Ray, 1 worker"] / zoo_best["Ray, 2 workers"],
            "same_trial_log": same_log, "same_zoo_results": same_zoo}


def _text(p: dict) -> str:
    env = p["environment"]
    lines = [f"Scale-out on Ray ({env.get('cpu', '?')}, ISA {env.get('isa', '?')}, "
             f"onnxruntime {env.get('onnxruntime')}, {env.get('date')}, load {p['load']:.2f}; "
             "Ray started once with num_cpus=2: "
             f"{p['ray_init_s']:.1f} s)", "",
             "| run | one process | Ray, 1 worker | Ray, 2 workers | 2 vs 1 worker |",
             "|---|---|---|---|---|"]
    for label, key, speed in ((f"tuning, {p['trials']} trials (metric {p['metric_s']:.2f} s)",
                               "tuning_best_s", "tuning_speedup_2_workers"),
                              ("zoo, 4 models (quantize + score)", "zoo_best_s",
                               "zoo_speedup_2_workers")):
        t = p[key]
        lines.append(f"| {label} | {t['one process']:.1f} s | {t['Ray, 1 worker']:.1f} s | "
                     f"{t['Ray, 2 workers']:.1f} s | {p[speed]:.2f}x |")
    lines += ["", f"Ray's overhead per trial (1 worker vs one process, actor start-up "
              f"included): {p['ray_overhead_per_trial_s']:.3f} s",
              f"same trial log in every mode: {p['same_trial_log']}; same zoo results: "
              f"{p['same_zoo_results']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
