"""The ``onnxq`` command line. Exit codes: 0 success, 2 bad input or usage, 1 internal error."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import traceback
from collections import Counter
from pathlib import Path

from onnxq import cli_zoo
from onnxq.calibrators import METHODS
from onnxq.errors import ConfigError, OnnxqError, user_failure
from onnxq.qtypes import QTYPES

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_BAD_INPUT, f"onnxq: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onnxq", description="Static INT8 quantization of ONNX models.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    q = sub.add_parser("quantize", help="quantize a model to INT8 (QDQ or QLinear)")
    q.add_argument("input", help="FP32 model: .onnx, TorchScript .pt, .keras/.h5, SavedModel "
                                 "folder or .tflite (exported to ONNX first)")
    q.add_argument("--save-fp32", default=None, metavar="FILE.onnx",
                   help="also write the exported FP32 ONNX model (framework inputs)")
    _export_args(q)
    q.add_argument("output", help="where to write the INT8 .onnx model")
    q.add_argument("--ranges", default=None, metavar="FILE.json",
                   help="reuse ranges from onnxq calibrate instead of calibrating")
    _calibration_args(q, required=False)
    format_arg(q)
    mode_arg(q)
    pc = q.add_mutually_exclusive_group()
    pc.add_argument("--per-channel", dest="per_channel", action="store_true", default=None)
    pc.add_argument("--per-tensor", dest="per_channel", action="store_false")
    q.add_argument("--activation-type", choices=list(QTYPES), default=None)
    q.add_argument("--weight-type", choices=list(QTYPES), default=None)
    q.add_argument("--reduce-range", action="store_true", default=None,
                   help="7-bit weights (for x86 CPUs without VNNI)")
    target_arg(q)
    placement_args(q)
    q.add_argument("--exclude-nodes", nargs="+", default=None, metavar="NAME")
    q.add_argument("--exclude-op-types", nargs="+", default=None, metavar="TYPE")
    q.add_argument("--report", default=None, metavar="FILE.json|.html",
                   help="what was quantized and what stayed float, and why (JSON, or a page)")

    c = sub.add_parser("calibrate", help="measure activation ranges and save them as JSON")
    c.add_argument("input", help="FP32 .onnx model")
    c.add_argument("-o", "--output", required=True, metavar="FILE.json")
    _calibration_args(c, required=True)

    e = sub.add_parser("export", help="export a framework model to ONNX (no quantization)")
    e.add_argument("input", help="TorchScript .pt, .keras/.h5, SavedModel folder or .tflite")
    e.add_argument("output", help="where to write the .onnx model")
    _export_args(e)

    from onnxq import cli_profile, cli_score, cli_tune, cli_zoo

    cli_score.add_parsers(sub)
    cli_tune.add_parser(sub)
    cli_profile.add_parser(sub)
    cli_zoo.add_parser(sub)

    i = sub.add_parser("inspect", help="op histogram and quantization summary of a model")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def format_arg(p: argparse.ArgumentParser) -> None:
    from onnxq.config import FORMATS

    p.add_argument("--format", choices=list(FORMATS), default=None,
                   help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()) + " (default qdq)")


def mode_arg(p: argparse.ArgumentParser) -> None:
    from onnxq.config import MODES

    p.add_argument("--mode", choices=list(MODES), default=None,
                   help="; ".join(f"{k}: {v}" for k, v in MODES.items()) + " (default static)")
    p.add_argument("--fuse-attention", action="store_true", default=None,
                   help="dynamic mode: fuse BERT-style attention into onnxruntime's Attention "
                        "and run it as QAttention (see docs/transformers.md)")


def target_arg(p: argparse.ArgumentParser) -> None:
    from onnxq.config import TARGET_EPS
    from onnxq.kernels.isa import TARGETS

    p.add_argument("--ep", dest="target_ep", choices=list(TARGET_EPS), default=None,
                   help="execution provider the model is made for: " + "; ".join(
                       f"{k}: {v}" for k, v in TARGET_EPS.items()) + " (default cpu)")
    p.add_argument("--target", choices=list(TARGETS), default=None,
                   help="CPU the types are chosen for: " + "; ".join(
                       f"{k}: {v}" for k, v in TARGETS.items()) + " (default auto)")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=None, metavar="1x3x224x224",
                   help="example input shape for TorchScript/Keras export (repeat per input)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset for the export")
    p.add_argument("--dynamo", action="store_true", default=None,
                   help="use torch.export (dynamo) instead of the TorchScript exporter")


def _export_options(args: argparse.Namespace) -> dict:
    options: dict = {}
    if args.input_shape:
        try:
            options["input_shapes"] = [tuple(int(d) for d in s.lower().split("x"))
                                       for s in args.input_shape]
        except ValueError:
            raise ConfigError(f"--input-shape {args.input_shape} must look like 1x3x224x224"
                              ) from None
    if args.opset is not None:
        options["opset"] = args.opset
    if args.dynamo:
        options["dynamo"] = True
    return options


def _calibration_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--calib-data", required=required, metavar="PATH",
                   help="folder of .npz feeds, or one .npz with a leading sample axis")
    p.add_argument("--calib-batch", type=int, default=1, metavar="N",
                   help="samples per feed when splitting one .npz (default 1)")
    for flag, meta, text in (("--preprocess", "imagenet|unit|raw|FILE.toml", "images"),
                             ("--tokenizer", "tokenizer.json", "a .txt file, one text a line")):
        p.add_argument(flag, default=None, metavar=meta, help=f"raw data: {text} (docs/data.md)")
    p.add_argument("--sample-rate", type=int, default=16000, help="raw data: a .wav folder")
    p.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="use at most N calibration feeds")
    p.add_argument("--calibrator", default=None,
                   choices=list(METHODS),
                   help="calibration method (default auto: minmax or percentile, whichever "
                        "model is closer to FP32 on the calibration feeds)")
    p.add_argument("--percentile", type=float, default=None,
                   help="percentile for --calibrator percentile (default 99.999)")
    p.add_argument("--num-bins", type=int, default=None,
                   help="histogram bins for entropy/percentile/mse (default 2048)")
    p.add_argument("--ignore-nonfinite", dest="allow_nonfinite", action="store_true",
                   default=None, help="skip NaN/Inf values in calibration instead of failing")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="a QuantConfig as TOML or JSON; flags override it")
    from onnxq.cli_zoo import cluster_args

    cluster_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")


def _version() -> str:
    from onnxq import __version__

    return f"onnxq {__version__}"


def placement_args(p: argparse.ArgumentParser) -> None:
    from onnxq.config import OBJECTIVES

    p.add_argument("--objective", choices=list(OBJECTIVES), default=None,
                   help="latency (default): int8 only where the cost model predicts it "
                        "faster; balanced: int8 unless float is >= 20%% faster; size: int8 "
                        "wherever possible")
    p.add_argument("--cost-table", default=None, metavar="target|host|FILE.json",
                   help="the placement's cost table: shipped for the target ISA (default), "
                        "measured on this host once and cached, or a file")
    p.add_argument("--recipe", default=None, metavar="NAME[,NAME]",
                   help="accuracy recovery: bc-fast (default), bc-full, gptq, cle, plain, "
                        "float-data, u8-weights (see docs/accuracy.md)")


def overrides(args: argparse.Namespace) -> dict:
    mapping = {"format": "format", "mode": "mode", "fuse_attention": "fuse_attention",
               "calibrator": "calibrator", "per_channel": "per_channel",
               "activation_type": "activation_type", "weight_type": "weight_type",
               "reduce_range": "reduce_range", "exclude_nodes": "exclude_nodes",
               "exclude_op_types": "exclude_op_types", "max_samples": "max_samples",
               "allow_nonfinite": "allow_nonfinite", "percentile": "percentile",
               "num_bins": "num_bins", "target": "target", "objective": "objective",
               "cost_table": "cost_table", "target_ep": "target_ep"}
    out = {key: getattr(args, attr, None) for attr, key in mapping.items()
           if getattr(args, attr, None) is not None}
    if getattr(args, "recipe", None):
        from onnxq.config import recipe_overrides

        out.update(recipe_overrides(args.recipe))
    return out


def guard_outputs(outputs: dict, inputs: list) -> dict[str, Path]:
    """Every output path checked against every input file (model, its external data, data,
    ranges, config) and the other outputs, before anything runs or is written."""
    from onnxq.io import check_outputs, model_files

    files: list = []
    for src in inputs:
        if src is not None:
            files.extend(model_files(src) if str(src).lower().endswith(".onnx") else [src])
    return check_outputs(outputs, files)


def _framework_only(args: argparse.Namespace) -> None:
    """Export options mean nothing for an ONNX input: refuse them rather than ignore them."""
    given = [flag for flag, value in (("--input-shape", args.input_shape), ("--opset", args.opset),
                                      ("--dynamo", args.dynamo),
                                      ("--save-fp32", getattr(args, "save_fp32", None)))
             if value]
    if given and str(args.input).lower().endswith(".onnx"):
        raise ConfigError(f"{', '.join(given)} only apply to framework models (.pt, .keras, "
                          "SavedModel, .tflite); the input is already ONNX: drop them")


def _cmd_quantize(args: argparse.Namespace) -> int:
    from onnxq.api import _resolve_config, quantize
    from onnxq.io import Staged, load_ranges, save_model
    from onnxq.raw_data import feeds_from, raw_inputs
    from onnxq.report_html import report_text

    _framework_only(args)
    if args.ranges and args.calib_data:
        raise ConfigError("give either --ranges (reuse measured ranges) or --calib-data "
                          "(calibrate now), not both")
    paths = guard_outputs({"output": args.output, "--report": args.report,
                           "--save-fp32": args.save_fp32},
                          [args.input, args.calib_data, args.ranges, args.config,
                           *raw_inputs(args)])
    out = paths["output"]
    config = _resolve_config(args.config, overrides(args))
    model = args.input  # loaded once, by the pipeline (a framework file is exported first)
    if args.ranges:
        ranges, feeds = load_ranges(args.ranges), None
    elif args.calib_data:
        ranges, feeds = None, feeds_from(args)
    else:  # fine for an already-quantized (QAT) model; quantize() says so otherwise
        ranges, feeds = None, None
    result = quantize(model, feeds, config, ranges=ranges, progress=not args.quiet,
                      export_options=_export_options(args), cluster=cli_zoo.cluster_of(args))
    with Staged() as staged:  # every output, or none (an error leaves no half-done set)
        save_model(result.model, out, staged=staged)
        if args.save_fp32 and result.source is not None:
            save_model(result.source, args.save_fp32, staged=staged)
        if args.report:
            staged.text(args.report, report_text(result.report, args.report))
        staged.commit()
    if not args.quiet:
        print(result.report.summary())
        print(f"wrote {out}")
    return EXIT_OK


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from onnxq.api import _resolve_config, calibrate
    from onnxq.io import save_ranges
    from onnxq.raw_data import feeds_from, raw_inputs

    out = guard_outputs({"--output": args.output}, [args.input, args.calib_data, args.config,
                                                    *raw_inputs(args)])["--output"]
    config = _resolve_config(args.config, overrides(args))
    feeds = feeds_from(args)
    ranges = calibrate(args.input, feeds, config, progress=not args.quiet,
                       cluster=cli_zoo.cluster_of(args))
    save_ranges(ranges, out, meta={"model": str(args.input),
                                   "calibration": config.to_dict()["calibration"]})
    if not args.quiet:
        print(f"wrote {len(ranges)} tensor ranges to {out}")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from onnxq.exporters import export_model
    from onnxq.io import save_model

    out = guard_outputs({"output": args.output}, [args.input])["output"]
    model = export_model(args.input, **_export_options(args))
    save_model(model, out)
    if not getattr(args, "quiet", False):
        print(f"wrote {out}")
    return EXIT_OK


def describe(model, host: str | None = None) -> dict:
    """Op histogram, Q/DQ counts, the nodes that run on int8 inputs, the target the model was
    quantized for and whether ``host`` (default: this CPU) may compute it less accurately."""
    from onnxq.emulate import EMULATED_ISAS, full_range_weights
    from onnxq.kernels.isa import host_target
    from onnxq.scopes import all_nodes

    nodes = all_nodes(model.graph)  # If branches and loop bodies included
    meta = {p.key: p.value for p in model.metadata_props}
    host = host or host_target()
    wide = full_range_weights(model)
    warning = None
    if wide and EMULATED_ISAS.get(host, False):
        warning = (f"this CPU ({host}, no VNNI) adds pairs of u8 x s8 products in int16 and "
                   f"saturates; {len(wide)} weight tensor(s) use 8 bits (target "
                   f"{meta.get('onnxq.target', 'unknown')}), so results here may be less "
                   "accurate: check with `onnxq compare --emulate "
                   f"{host}`, run it with onnxruntime's exact u8 x u8 kernels (session config "
                   "session.x64quantprecision=1: slower, exact), or quantize with --target "
                   "portable")
    produced_by_dq = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = [n for n in nodes if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                 and any(i in produced_by_dq for i in n.input)]
    opsets = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    return {
        "opset": opsets,
        "nodes": len(nodes),
        "op_histogram": dict(sorted(Counter(n.op_type for n in nodes).items())),
        "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in nodes),
        "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in nodes),
        "quantized_nodes": [{"name": n.name, "op": n.op_type} for n in quantized],
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "target": meta.get("onnxq.target"),
        "weight_bits": meta.get("onnxq.weight_bits"),
        "host": host,
        "full_range_weights": len(wide),
        "warning": warning,
    }


def _cmd_inspect(args: argparse.Namespace) -> int:
    from onnxq.io import load_model

    info = describe(load_model(args.model))
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"{args.model}: {info['nodes']} nodes, opset {info['opset']}")
    if info["target"]:
        print(f"quantized by onnxq for target {info['target']} ({info['weight_bits']}-bit "
              f"weights); this CPU: {info['host']}")
    if info["warning"]:
        print(f"onnxq: warning: {info['warning']}", file=sys.stderr)
    print(f"QuantizeLinear: {info['quantize_linear']}  DequantizeLinear: "
          f"{info['dequantize_linear']}  nodes on int8 inputs: {len(info['quantized_nodes'])}")
    print("op histogram:")
    for op, n in info["op_histogram"].items():
        print(f"  {op:<28}{n:>6}")
    if info["quantized_nodes"]:
        print("quantized nodes:")
        for item in info["quantized_nodes"]:
            print(f"  {item['name']} ({item['op']})")
    return EXIT_OK


def _lazy(module: str, name: str):
    """A command implemented in another CLI module, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"onnxq.{module}"), name)(args)

    return run


COMMANDS = {"quantize": _cmd_quantize, "calibrate": _cmd_calibrate, "export": _cmd_export,
            "inspect": _cmd_inspect, "compare": _lazy("cli_score", "cmd_compare"),
            "bench": _lazy("cli_score", "cmd_bench"), "tune": _lazy("cli_tune", "cmd_tune"),
            "profile": _lazy("cli_profile", "cmd_profile"), "zoo": _lazy("cli_zoo", "cmd_zoo")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="onnxq: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except OnnxqError as exc:
        print(f"onnxq: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("onnxq: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the user's files or data, else an onnxq bug
        if (why := user_failure(exc)) is not None:
            print(f"onnxq: error: {why}", file=sys.stderr)
            return EXIT_BAD_INPUT
        traceback.print_exc()
        print("onnxq: internal error (a bug in onnxq); please report it with the traceback "
              "above", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
