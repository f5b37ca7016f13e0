"""Measure the CPU EP's float and int8 kernel costs on this host and write a cost table (JSON)
that ``placement.cost_table = "PATH"`` (or the shipped tables under onnxq/placement/tables/)
uses.

    python tools/cost_table.py out.json --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from onnxq import runtime
    from onnxq.kernels.isa import host_target
    from onnxq.placement.costs import _cpu_model
    from onnxq.placement.measure import measure_table

    table = measure_table(threads=args.threads, repeats=args.repeats,
                          progress=lambda what: print(what, file=sys.stderr))
    table["meta"] = {"cpu": _cpu_model(), "target": host_target(),
                     "onnxruntime": runtime.ort_version(), "threads": args.threads,
                     "repeats": args.repeats, "measured": "host"}
    Path(args.out).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
