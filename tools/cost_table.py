"""Measure the CPU EP's float and int8 kernel costs on this host and write a cost table (JSON)
that ``placement.cost_table = "PATH"`` (or the shipped tables under onnxq/placement/tables/)
uses.

    python tools/cost_table.py out.json --repeats 3 --threads 2
    python tools/cost_table.py --node-costs-into onnxq/placement/tables/vnni.json --repeats 9

    python tools/cost_table.py --conv-kind-into onnxq/placement/tables/amx.json dense3.nd
    python tools/cost_table.py --bcast-into onnxq/placement/tables/amx.json

The second form measures only the per-op fixed costs (``node_us``) and adds them to an
existing table, leaving its other figures as they were measured: run it on the table's own
CPU (the shipped VNNI and AMX tables lack them). The third does the same for one conv kind
(the volumetric ``dense3.nd``, which older tables lack), the fourth for the NHWC
channel-broadcast costs (``bcast_nhwc_ns``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.5,
                        help="timing per measurement (--node-costs-into, --conv-kind-into)")
    parser.add_argument("--node-costs-into", metavar="TABLE", default=None,
                        help="measure only the per-op node costs and add them to TABLE")
    parser.add_argument("--conv-kind-into", nargs=2, metavar=("TABLE", "KIND"), default=None,
                        help="measure only conv KIND (median of --repeats) and add it to TABLE")
    parser.add_argument("--bcast-into", metavar="TABLE", default=None,
                        help="measure only the NHWC channel-broadcast costs and add them")
    args = parser.parse_args(argv)
    from onnxq import runtime
    from onnxq.kernels.isa import host_target
    from onnxq.placement.costs import _cpu_model

    if args.node_costs_into:
        return _node_costs_into(Path(args.node_costs_into), args.repeats, args.threads,
                                args.seconds, _cpu_model())
    if args.bcast_into:
        return _bcast_into(Path(args.bcast_into), args.repeats, args.threads, args.seconds,
                           _cpu_model())
    if args.conv_kind_into:
        return _conv_kind_into(Path(args.conv_kind_into[0]), args.conv_kind_into[1],
                               args.repeats, args.threads, args.seconds, _cpu_model())
    if not args.out:
        parser.error("give the output file, or --node-costs-into TABLE")
    from onnxq.placement.measure import measure_table

    table = measure_table(threads=args.threads, repeats=args.repeats,
                          progress=lambda what: print(what, file=sys.stderr))
    table["meta"] = {"cpu": _cpu_model(), "target": host_target(),
                     "onnxruntime": runtime.ort_version(), "threads": args.threads,
                     "repeats": args.repeats, "measured": "host"}
    Path(args.out).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


def _node_costs_into(path: Path, repeats: int, threads: int, seconds: float, cpu: str) -> int:
    """The median over ``repeats`` runs of each op's node cost, written into ``path``."""
    import numpy as np

    from onnxq.placement.measure import node_overheads

    table = json.loads(path.read_text())
    runs = [node_overheads(threads, seconds) for _ in range(max(repeats, 1))]
    table["node_us"] = {op: float(np.median([r[op] for r in runs])) for op in runs[0]}
    table.setdefault("meta", {})["node_us"] = (
        f"measured on {cpu} with tools/cost_table.py --node-costs-into ({threads} threads, "
        f"median of {len(runs)} runs)")
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote node_us into {path}: " + ", ".join(f"{k} {v:.2f} µs"
                                                     for k, v in table["node_us"].items()))
    return 0


def _conv_kind_into(path: Path, kind: str, repeats: int, threads: int, seconds: float,
                    cpu: str) -> int:
    """The median over ``repeats`` runs of one conv kind's rates, written into ``path``."""
    from onnxq.placement.measure import CONV_KINDS, _median, measure_convs

    if kind not in CONV_KINDS:
        print(f"error: unknown conv kind {kind!r}; known: {', '.join(CONV_KINDS)}",
              file=sys.stderr)
        return 2
    table = json.loads(path.read_text())
    runs = [measure_convs((kind,), threads=threads, seconds=seconds)
            for _ in range(max(repeats, 1))]
    table["conv_us_per_mmac"][kind] = _median(runs)[kind]
    table.setdefault("meta", {})[kind] = (
        f"measured on {cpu} with tools/cost_table.py --conv-kind-into ({threads} threads, "
        f"median of {len(runs)} runs)")
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {kind} into {path}")
    return 0


def _bcast_into(path: Path, repeats: int, threads: int, seconds: float, cpu: str) -> int:
    """The median over ``repeats`` runs of the NHWC channel-broadcast costs, into ``path``."""
    from onnxq.placement.measure import _median, bcast_nhwc

    table = json.loads(path.read_text())
    runs = [bcast_nhwc(threads, seconds) for _ in range(max(repeats, 1))]
    table["bcast_nhwc_ns"] = _median(runs)
    table.setdefault("meta", {})["bcast_nhwc_ns"] = (
        f"measured on {cpu} with tools/cost_table.py --bcast-into ({threads} threads, "
        f"median of {len(runs)} runs)")
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote bcast_nhwc_ns into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
