"""Time per op type of one model, or two side by side, from onnxruntime's profiler (CPU EP).

    python tools/profile_model.py fp32.onnx int8.onnx --data eval.npz --runs 20 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


def profile(model: str, feed: dict, *, runs: int, threads: int) -> dict[str, dict]:
    """{op type: {"ms": mean ms per run, "nodes": count}} and the ``top`` nodes."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="onnxq-profile-") as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "p")
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        for _ in range(3):
            sess.run(None, feed)
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    for e in events:
        args = e.get("args", {})
        if e.get("cat") != "Node" or "op_name" not in args or not e["name"].endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        by_op[args["op_name"]] += e["dur"] / 1000.0
        by_node[f"{node} ({args['op_name']})"] += e["dur"] / 1000.0
        nodes[args["op_name"]].add(node)
    total = runs + 3
    return {"ops": {op: {"ms": ms / total, "nodes": len(nodes[op])} for op, ms in by_op.items()},
            "top": sorted(((ms / total, n) for n, ms in by_node.items()), reverse=True)[:10]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="one or two .onnx models")
    parser.add_argument("--data", required=True, help="feeds (.npz or folder), as onnxq uses")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    from onnxq.data import load_feeds

    feed = next(iter(load_feeds(args.data, batch=args.batch)))
    results = {m: profile(m, feed, runs=args.runs, threads=args.threads) for m in args.models}
    ops = sorted({op for r in results.values() for op in r["ops"]},
                 key=lambda op: -max(r["ops"].get(op, {"ms": 0})["ms"] for r in results.values()))
    names = [Path(m).name for m in args.models]
    print(f"{'op type':<34}" + "".join(f"{n[:22]:>24}" for n in names))
    for op in ops:
        cells = [r["ops"].get(op) for r in results.values()]
        print(f"{op:<34}" + "".join(f"{c['ms']:>14.3f} ms ({c['nodes']:>3})" if c else f"{'-':>24}"
                                    for c in cells))
    print(f"{'total':<34}" + "".join(f"{sum(v['ms'] for v in r['ops'].values()):>17.3f} ms   "
                                     for r in results.values()))
    for name, r in zip(names, results.values(), strict=True):
        print(f"slowest nodes of {name}: " + ", ".join(f"{n} {ms:.3f} ms" for ms, n in r["top"][:5]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
