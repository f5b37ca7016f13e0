"""What differs between two ONNX models: ops, Q/DQ, size, onnxq metadata, node names.

    python tools/model_diff.py model.int8.onnx other.int8.onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def diff(a: str, b: str) -> dict:
    from onnxq.cli import describe
    from onnxq.io import load_model

    ma, mb = load_model(a), load_model(b)
    da, db = describe(ma), describe(mb)
    ops = sorted(set(da["op_histogram"]) | set(db["op_histogram"]))
    names_a = {n.name for n in ma.graph.node}
    names_b = {n.name for n in mb.graph.node}
    return {
        "ops": {op: (da["op_histogram"].get(op, 0), db["op_histogram"].get(op, 0)) for op in ops
                if da["op_histogram"].get(op, 0) != db["op_histogram"].get(op, 0)},
        "nodes": (da["nodes"], db["nodes"]),
        "qdq": ((da["quantize_linear"], da["dequantize_linear"]),
                (db["quantize_linear"], db["dequantize_linear"])),
        "bytes": (ma.ByteSize(), mb.ByteSize()),
        "target": (da["target"], db["target"]),
        "only_in_a": sorted(names_a - names_b),
        "only_in_b": sorted(names_b - names_a),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    args = parser.parse_args(argv)
    d = diff(args.a, args.b)
    a, b = Path(args.a).name, Path(args.b).name
    print(f"{'':<30}{a[:24]:>26}{b[:24]:>26}")
    print(f"{'nodes':<30}{d['nodes'][0]:>26}{d['nodes'][1]:>26}")
    qa, qb = (f"{q} / {dq}" for q, dq in d["qdq"])
    print(f"{'Q / DQ':<30}{qa:>26}{qb:>26}")
    print(f"{'size (MB)':<30}{d['bytes'][0] / 1e6:>26.3f}{d['bytes'][1] / 1e6:>26.3f}")
    print(f"{'onnxq target':<30}{str(d['target'][0]):>26}{str(d['target'][1]):>26}")
    for op, (x, y) in d["ops"].items():
        print(f"{op:<30}{x:>26}{y:>26}")
    for side, key in ((a, "only_in_a"), (b, "only_in_b")):
        if d[key]:
            print(f"nodes only in {side} ({len(d[key])}): {', '.join(d[key][:12])}"
                  + (" ..." if len(d[key]) > 12 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
