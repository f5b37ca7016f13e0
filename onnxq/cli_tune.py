"""``onnxq tune``: accuracy- and latency-aware search, from the command line."""

from __future__ import annotations

import argparse
import importlib
import json

__all__ = ["add_parser", "cmd_tune"]


def add_parser(sub) -> None:
    t = sub.add_parser("tune", help="search for an INT8 model meeting an accuracy target that "
                                    "is never slower than FP32")
    t.add_argument("input")
    t.add_argument("output")
    t.add_argument("--calib-data", required=True, metavar="PATH")
    t.add_argument("--eval-data", required=True, metavar="PATH",
                   help="evaluation feeds (not overlapping the calibration data)")
    t.add_argument("--batch", type=int, default=1, help="samples per feed when splitting")
    t.add_argument("--metric", default="cosine",
                   help="cosine (output agreement with FP32), top1 (needs --labels-key in the "
                        "eval data) or module:function taking an onnx.ModelProto -> float")
    t.add_argument("--labels-key", default="labels",
                   help="array of the eval data holding the labels (not fed to the model)")
    drop = t.add_mutually_exclusive_group()
    drop.add_argument("--max-drop", type=float, default=None,
                      help="absolute drop allowed (default 0.01; top1 is in [0, 1])")
    drop.add_argument("--max-relative-drop", type=float, default=None)
    t.add_argument("--time-budget", type=float, default=600.0, metavar="SECONDS")
    t.add_argument("--max-trials", type=int, default=40)
    t.add_argument("--no-latency", action="store_true", help="skip the never-slower check")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--log", default=None, metavar="FILE.json", help="the trial log")
    t.add_argument("--config", default=None, metavar="FILE.toml",
                   help="a QuantConfig as TOML or JSON (calibrator settings, types, ...); "
                        "flags override it")
    from onnxq.cli import format_arg, target_arg
    from onnxq.cli_zoo import cluster_args

    format_arg(t)
    target_arg(t)
    cluster_args(t)
    t.add_argument("--quiet", "-q", action="store_true")


def _metric(args, evals: list[dict]):
    from onnxq.errors import ConfigError
    from onnxq.tune import top1_metric

    if args.metric == "cosine":
        return None, [f for f in evals]
    if args.metric == "top1":
        if any(args.labels_key not in f for f in evals):
            raise ConfigError(f"--metric top1 needs an array {args.labels_key!r} (labels) in "
                              "every eval feed")
        labels = [f.pop(args.labels_key) for f in evals]
        return top1_metric(evals, labels), evals
    module, _, name = args.metric.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"--metric {args.metric!r}: cannot import it ({exc}); give "
                          "module:function") from None
    return fn, evals


def cmd_tune(args: argparse.Namespace) -> int:
    from onnxq.cli import guard_outputs
    from onnxq.data import load_feeds
    from onnxq.errors import ConfigError
    from onnxq.io import Staged, save_model
    from onnxq.tune import TuneTarget, tune

    out = guard_outputs({"output": args.output, "--log": args.log},
                        [args.input, args.calib_data, args.eval_data, args.config])["output"]
    if args.max_drop is not None and not args.max_drop >= 0:
        raise ConfigError(f"--max-drop {args.max_drop} must be >= 0 (the drop allowed)")
    if args.max_relative_drop is not None and not args.max_relative_drop >= 0:
        raise ConfigError(f"--max-relative-drop {args.max_relative_drop} must be >= 0")
    evals = [dict(f) for f in load_feeds(args.eval_data, batch=args.batch)]
    evaluate, evals = _metric(args, evals)
    target = TuneTarget(
        max_drop=args.max_drop if args.max_relative_drop is None else None,
        max_relative_drop=args.max_relative_drop, time_budget=args.time_budget,
        max_trials=args.max_trials, latency=not args.no_latency, threads=args.threads)
    if target.max_drop is None and target.max_relative_drop is None:
        target = TuneTarget(max_drop=0.01, time_budget=args.time_budget,
                            max_trials=args.max_trials, latency=not args.no_latency,
                            threads=args.threads)
    from onnxq.api import _resolve_config
    from onnxq.cli import overrides
    from onnxq.cli_zoo import cluster_of

    config = _resolve_config(args.config, overrides(args))
    calib = list(load_feeds(args.calib_data, batch=args.batch))
    result = tune(args.input, calib, evaluate, target=target, eval_data=evals, config=config,
                  cluster=cluster_of(args), progress=not args.quiet)
    with Staged() as staged:  # the model and the log, or neither
        save_model(result.model, out, staged=staged)
        if args.log:
            staged.text(args.log, json.dumps(result.log(), indent=2) + "\n")
        staged.commit()
    if not args.quiet:
        print(result.table())
        print(f"wrote {out}")
    return 0
