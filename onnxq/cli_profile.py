"""``onnxq profile MODEL [INT8_MODEL] --data PATH``: time per region and op type."""

from __future__ import annotations

import argparse

from onnxq.io import write_text_atomic

__all__ = ["add_parser", "cmd_profile"]


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="time per node, region and op type (FP32 vs INT8) "
                                       "from onnxruntime's profiler")
    p.add_argument("model", help="the FP32 .onnx model (regions are its compute nodes)")
    p.add_argument("int8", nargs="?", default=None, help="its INT8 model, to compare")
    p.add_argument("--data", required=True, metavar="PATH", help="feeds (.npz or a folder); "
                   "the first one is profiled")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=20, help="largest regions to print (0: all)")
    p.add_argument("--json", default=None, metavar="FILE.json")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="bar chart FP32 vs INT8 per region")


def cmd_profile(args: argparse.Namespace) -> int:
    from onnxq.cli import guard_outputs
    from onnxq.data import load_feeds
    from onnxq.errors import CalibrationError
    from onnxq.profile import plot_regions, profile, render_table, to_json

    guard_outputs({"--json": args.json, "--plot": args.plot},
                  [args.model, args.int8, args.data])
    feed = next(iter(load_feeds(args.data, batch=args.batch)), None)
    if feed is None:
        raise CalibrationError(f"{args.data}: no feed to profile with")
    result = profile(args.model, feed, args.int8, runs=args.runs, threads=args.threads)
    print(render_table(result, top=args.top or None))
    if args.json:
        write_text_atomic(args.json, to_json(result))
    if args.plot:
        write_text_atomic(args.plot, plot_regions(result))
        print(f"wrote {args.plot}")
    return 0
