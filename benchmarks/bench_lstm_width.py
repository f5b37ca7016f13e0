"""Where an int8 LSTM pays: onnxruntime's DynamicQuantizeLSTM (onnxq's int8 LSTM, objective
``size``) against the float LSTM, over hidden sizes, input features, sequence lengths and
directions, batch 1 — the measurement behind ``onnxq/placement/recurrent.py``'s rule (an LSTM
narrower than the target cost table's ``lstm_min_int8_hidden`` stays float by default). Each row is timed
interleaved (float, int8, float, ...) in one process; compare ratios, not times.

    python -m benchmarks.bench_lstm_width [--quick] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxq
from benchmarks import common
from onnxq.kernels.isa import resolve_target
from onnxq.placement.costs import table_for_target
from onnxq.placement.recurrent import MIN_INT8_HIDDEN


def lstm(features: int, hidden: int, dirs: int, steps: int) -> onnx.ModelProto:
    """One LSTM over x [steps, 1, features] (ONNX's default layout), random weights."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((dirs, 4 * hidden, features)) / np.sqrt(features)
    r = rng.standard_normal((dirs, 4 * hidden, hidden)) / np.sqrt(hidden)
    inits = [numpy_helper.from_array(w.astype(np.float32), "W"),
             numpy_helper.from_array(r.astype(np.float32), "R"),
             numpy_helper.from_array(np.zeros((dirs, 8 * hidden), np.float32), "B")]
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], name="lstm",
                            hidden_size=hidden,
                            direction="bidirectional" if dirs == 2 else "forward")
    graph = helper.make_graph(
        [node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                       [steps, 1, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def measure(features: int, hidden: int, dirs: int, steps: int, threads: int,
            seconds: float) -> dict:
    model = lstm(features, hidden, dirs, steps)
    feeds = [{"x": np.random.default_rng(s).standard_normal((steps, 1, features))
              .astype(np.float32)} for s in range(2)]
    int8 = onnxq.quantize(model, feeds, progress=False, objective="size").model
    default = onnxq.quantize(model, feeds, progress=False).model
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in int8.graph.node)
    lat = common.time_interleaved({"float": common.session(model, threads),
                                   "int8": common.session(int8, threads)}, feeds[0],
                                  min_seconds=seconds)
    return {"steps": steps, "features": features, "hidden": hidden, "directions": dirs,
            "float_us": lat["float"] * 1e6, "int8_us": lat["int8"] * 1e6,
            "int8_speedup": lat["float"] / lat["int8"],
            "default": "int8" if any(n.op_type == "DynamicQuantizeLSTM"
                                     for n in default.graph.node) else "float"}


COLUMNS = [("steps", "steps", str), ("features", "features", str), ("hidden", "hidden", str),
           ("directions", "directions", str), ("float µs", "float_us", common._fmt(1)),
           ("int8 µs", "int8_us", common._fmt(1)),
           ("int8 speed-up", "int8_speedup", common._fmt(2)),
           ("onnxq default", "default", str)]


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    load = common.wait_for_idle(max_wait=60)
    grid = [(t, k, h, d) for t in ((1, 200) if args.quick else (1, 8, 64, 200))
            for k in ((24, 314) if args.quick else (24, 138, 314))
            for h in ((25, 256) if args.quick else (16, 32, 64, 128, 256, 512))
            for d in (1, 2) if d == 1 or t in (1, 200)]
    rows = []
    for steps, features, hidden, dirs in grid:
        rows.append(measure(features, hidden, dirs, steps, args.threads,
                            0.3 if args.quick else 0.8))
        print(rows[-1], flush=True)
    env = common.environment()
    threshold = table_for_target(resolve_target("auto")).lstm_min_int8_hidden(MIN_INT8_HIDDEN)
    right = sum((r["default"] == "int8") == (r["int8_speedup"] > 1.0) for r in rows)
    text = (f"LSTM width, batch 1, {args.threads} threads, onnxruntime {env['onnxruntime']}, "
            f"{env['cpu']} (ISA {env['isa']}), onnxq {env['onnxq_revision']}, {env['date']}, "
            f"load {load:.2f}\n\nonnxq's default (int8 from hidden_size {threshold}) "
            f"picks the faster kernel in {right} of {len(rows)} rows.\n\n"
            + common.markdown_table(rows, COLUMNS))
    common.publish("lstm_width", args.quick, {"rows": rows, "environment": env,
                                              "load_average_at_start": load}, text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
