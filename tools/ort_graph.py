"""The graph onnxruntime runs after its optimizations (CPU EP): op histogram and leftover
QuantizeLinear/DequantizeLinear (each one is a fusion that did not happen).

    python tools/ort_graph.py model.int8.onnx [--save optimized.onnx] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path


def optimized(model: str, save: str | None = None, threads: int = 2):
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="onnxq-ortgraph-") as tmp:
        path = save or str(Path(tmp) / "optimized.onnx")
        so = ort.SessionOptions()
        so.optimized_model_filepath = path
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        return onnx.load(path, load_external_data=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--save", default=None, help="also write the optimized model here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    graph = optimized(args.model, args.save, args.threads).graph
    hist = Counter(n.op_type for n in graph.node)
    print(f"{args.model}: {len(graph.node)} nodes after onnxruntime's optimizations")
    for op, n in hist.most_common():
        print(f"  {op:<36}{n:>6}")
    left = [n.name for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    print(f"leftover Q/DQ: {len(left)}" + (f" ({', '.join(left[:8])}{' ...' if len(left) > 8 else ''})"
                                           if left else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
