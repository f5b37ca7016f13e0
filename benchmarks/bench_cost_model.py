"""The placement's cost model against onnxruntime's profiler: per region (a compute node with
its followers, as ``onnxq profile`` charges them), predicted vs measured µs in FP32 and in
all-int8, and the int8/float ratio the placement decides on; Spearman rank correlation and
mean relative error per region class (pointwise, depthwise, dense conv, GEMM).

    python -m benchmarks.bench_cost_model [--quick] [--zoo NAME ...]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np
import onnx

import onnxq
from benchmarks import common
from onnxq import graph as G
from onnxq.kernels.isa import host_target
from onnxq.placement import costs
from onnxq.placement import model as cost_model
from onnxq.placement.shapes import batch1_shapes
from onnxq.profile import _regions, profile
from tests import builders as B


def _predicted(fp32: onnx.ModelProto, table) -> dict[str, dict]:
    """Region → predicted float and int8 µs and its class, from the cost model."""
    shapes = batch1_shapes(fp32)
    graph = G.import_graph(fp32)
    names, _ = _regions(fp32)
    out: dict[str, dict] = defaultdict(lambda: {"float": 0.0, "int8": 0.0, "class": None})
    for node in graph.nodes:
        cost = cost_model.node_cost(node, shapes, table)
        if cost is None:
            continue
        region = out[names.get(node.name, "(input)")]
        producer = G.producer(node.inputs[0]) if node.inputs else None
        fused = (producer is not None and producer.op in ("Conv", "BatchNormalization")
                 and node.op in costs.FUSED_ACTIVATIONS)
        region["float"] += 0.0 if fused else cost.float_us
        region["int8"] += cost.int8_us
        if node.op == "Conv":
            cin = shapes.get(node.inputs[0].name, (1, 1))[1]
            region["class"] = costs.conv_kind(node, cin).rstrip("35")
        elif node.op in ("Gemm", "MatMul"):
            region["class"] = "gemm"
    return out


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def evaluate(name: str, fp32: onnx.ModelProto, feed: dict, calib: list, runs: int) -> list[dict]:
    table = costs.table_for_target(host_target())
    int8 = onnxq.quantize(fp32, calib, progress=False, objective="size").model
    measured = {r.region: r for r in profile(fp32, feed, int8, runs=runs).rows}
    rows = []
    for region, p in _predicted(fp32, table).items():
        m = measured.get(region)
        if m is None or p["class"] is None or not m.fp32_us or not m.int8_us:
            continue
        rows.append({"model": name, "region": region, "class": p["class"],
                     "pred_fp32": p["float"], "meas_fp32": m.fp32_us,
                     "pred_int8": p["int8"], "meas_int8": m.int8_us})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    groups = defaultdict(list)
    for r in rows:
        groups[r["class"]].append(r)
    groups["all"] = rows
    for cls, rs in groups.items():
        pf, mf = [r["pred_fp32"] for r in rs], [r["meas_fp32"] for r in rs]
        pi, mi = [r["pred_int8"] for r in rs], [r["meas_int8"] for r in rs]
        ratio_p = [a / b for a, b in zip(pi, pf, strict=True)]
        ratio_m = [a / b for a, b in zip(mi, mf, strict=True)]
        err = lambda p, m: float(np.mean([abs(x - y) / y for x, y in zip(p, m, strict=True)]))  # noqa: E731
        agree = np.mean([(a < 1) == (b < 1) for a, b in zip(ratio_p, ratio_m, strict=True)])
        out.append({"class": cls, "regions": len(rs), "rho_fp32": _spearman(pf, mf),
                    "rho_int8": _spearman(pi, mi), "rho_ratio": _spearman(ratio_p, ratio_m),
                    "err_fp32": err(pf, mf), "err_int8": err(pi, mi),
                    "same_winner": float(agree)})
    return out


COLUMNS = [("class", "class", str), ("regions", "regions", str)] + [
    (t, k, lambda v: f"{v:.2f}") for t, k in (
        ("rank corr. FP32", "rho_fp32"), ("rank corr. INT8", "rho_int8"),
        ("rank corr. INT8/FP32", "rho_ratio"), ("mean rel. error FP32", "err_fp32"),
        ("mean rel. error INT8", "err_int8"), ("same winner", "same_winner"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--zoo", nargs="*", default=[], help="zoo models (bench extra)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    image, runs = (96, 20) if args.quick else (224, 100)
    models = {"lcnet": B.lcnet_shaped(image=image), "mobilenetv3": B.mobilenet_shaped(
        image=image), "resnet18": B.resnet18_shaped(image=image)}
    rows = []
    for name, m in models.items():
        rows += evaluate(name, m, B.feeds(m, seed=5)[0], B.feeds(m, n=4, seed=1), runs)
    if args.zoo:
        from benchmarks.zoo import LOADERS

        for name in args.zoo:
            bench = LOADERS[name]()
            rows += evaluate(name, bench.model, bench.feed_b1, list(bench.calib)[:8], runs)
    summary = summarize(rows)
    env = common.environment()
    text = (f"Cost model ({costs.table_for_target(host_target()).source.rsplit('/', 1)[-1]}) "
            f"vs onnxruntime's profiler, batch 1, 2 threads, {env['cpu']} (ISA {env['isa']}), "
            f"{env['date']}; models: {', '.join(dict.fromkeys(r['model'] for r in rows))}\n\n"
            + common.markdown_table(summary, COLUMNS))
    common.publish("cost_model", args.quick, {"summary": summary, "regions": rows,
                                             "environment": env}, text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
