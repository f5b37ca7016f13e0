"""The scoring commands of the CLI: ``onnxq compare`` and ``onnxq bench``."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from onnxq.io import write_text_atomic

__all__ = ["add_parsers", "cmd_compare", "cmd_bench"]


def add_parsers(sub) -> None:
    c = sub.add_parser("compare", help="FP32 vs INT8: output agreement and per-tensor errors")
    c.add_argument("fp32")
    c.add_argument("int8")
    c.add_argument("--data", required=True, metavar="PATH",
                   help="evaluation feeds: a folder of .npz or one .npz with a sample axis")
    c.add_argument("--batch", type=int, default=1, help="samples per feed when splitting")
    c.add_argument("--max-samples", type=int, default=None, metavar="N")
    c.add_argument("--report", default=None, metavar="FILE.html|.md",
                   help="per-tensor report (HTML with an SQNR chart, or Markdown)")
    c.add_argument("--json", default=None, metavar="FILE.json", help="write all figures")
    c.add_argument("--top", type=int, default=10, help="worst tensors to print")
    c.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bars (the results still print)")
    from onnxq.emulate import EMULATED_ISAS

    c.add_argument("--emulate", default=None, choices=list(EMULATED_ISAS),
                   help="score the INT8 model as that CPU computes it (numpy reference of "
                        "onnxruntime's int8 kernels: slow, exact), not on this CPU")

    b = sub.add_parser("bench", help="latency of models on the same feed, interleaved")
    b.add_argument("models", nargs="+")
    b.add_argument("--data", required=True, metavar="PATH")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--seconds", type=float, default=2.0, help="timed work per model")
    b.add_argument("--json", default=None, metavar="FILE.json")
    b.add_argument("--plot", default=None, metavar="FILE.png", help="latency bar chart")
    b.add_argument("--ep", default="cpu", metavar="cpu,openvino",
                   help="execution providers to time on, one after the other; one table "
                        "(docs/execution-providers.md)")
    b.add_argument("--ep-python", action="append", default=None, metavar="EP=PYTHON",
                   help="the interpreter of a venv whose onnxruntime has EP (default: "
                        "$ONNXQ_OPENVINO_PYTHON or .venv-openvino, from make venv-openvino)")


def _feeds(args: argparse.Namespace) -> list:
    from onnxq.data import load_feeds

    feeds = load_feeds(args.data, batch=args.batch)
    limit = getattr(args, "max_samples", None)
    return [f for i, f in enumerate(feeds) if limit is None or i < limit]


def cmd_compare(args: argparse.Namespace) -> int:
    from onnxq.cli import guard_outputs
    from onnxq.score import (
        compare_outputs,
        float_compute,
        measure_latency,
        render_report,
        tensor_report,
    )

    guard_outputs({"--report": args.report, "--json": args.json},
                  [args.fp32, args.int8, args.data])
    feeds = _feeds(args)
    agreement = compare_outputs(args.fp32, args.int8, feeds, emulate=args.emulate,
                                progress=not args.quiet)
    report = tensor_report(args.fp32, args.int8, feeds, progress=not args.quiet)
    where = (f"as on a CPU with {args.emulate} (emulated)" if args.emulate
             else "on this CPU")
    print(f"{len(feeds)} feeds; INT8 model run {where}; outputs:")
    for s in agreement.outputs:
        top1 = "-" if s.top1_agreement is None else f"{s.top1_agreement:.4f}"
        lsb = "-" if s.max_error_lsb is None else f"{s.max_error_lsb:.2f}"
        print(f"  {s.name}: top-1 agreement {top1}, cosine {s.cosine:.6f}, SQNR "
              f"{s.sqnr_db:.1f} dB, max |err| {s.max_abs_error:.4g} ({lsb} LSB)")
    print(f"worst quantized tensors (of {len(report)}, on this CPU):")
    for t in list(report)[: args.top]:
        print(f"  {t.name}: SQNR {t.sqnr_db:.1f} dB, cosine {t.cosine:.5f}, saturated "
              f"{t.saturated_fraction:.3%}")
    if args.report:
        html = args.report.lower().endswith((".html", ".htm"))
        latency = measure_latency({"FP32": args.fp32, "INT8": args.int8}, feeds[0],
                                  min_seconds=0.5) if html else None
        written = render_report(report, args.report, latency=latency,
                                float_nodes=float_compute(args.int8))
        print(f"wrote {written}")
    if args.json:
        write_text_atomic(args.json, json.dumps({
            "outputs": [vars_of(s) for s in agreement.outputs], "emulate": args.emulate,
            "tensors": [vars_of(t) for t in report], "missing": list(report.missing),
            "feeds": len(feeds)}, indent=2) + "\n")
    return 0


def vars_of(obj) -> dict:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


def cmd_bench(args: argparse.Namespace) -> int:
    from onnxq.cli import guard_outputs
    from onnxq.errors import ConfigError
    from onnxq.score import measure_latency

    guard_outputs({"--json": args.json, "--plot": args.plot}, [*args.models, args.data])
    if not args.threads >= 1 or not args.seconds > 0 or args.seconds == float("inf"):
        raise ConfigError(f"--threads {args.threads} must be >= 1 and --seconds {args.seconds} "
                          "a positive number")
    if args.ep != "cpu" or args.ep_python:
        return _bench_eps(args)
    feed = _feeds(args)[0]
    models = {Path(m).name if Path(m).name not in {Path(x).name for x in args.models if x != m}
              else m: m for m in args.models}
    times = measure_latency(models, feed, threads=args.threads, min_seconds=args.seconds)
    base = next(iter(times.values()))
    print(f"{'model':<40}{'median ms':>12}{'vs first':>10}")
    for name, t in times.items():
        print(f"{name:<40}{t * 1e3:>12.3f}{base / t:>9.2f}x")
    if args.json:
        write_text_atomic(args.json, json.dumps({"median_seconds": times, "threads": args.threads,
                                               "batch": args.batch}, indent=2) + "\n")
    if args.plot:
        _plot(times, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _names(paths: list[str]) -> dict[str, str]:
    """Display name → path: the file name where it is unique."""
    return {Path(m).name if Path(m).name not in {Path(x).name for x in paths if x != m}
            else m: m for m in paths}


def _bench_eps(args: argparse.Namespace) -> int:
    from onnxq.ep import parse_ep_pythons, run_on_eps

    eps = [e.strip() for e in args.ep.split(",") if e.strip()]
    models = _names(args.models)
    feeds = _feeds(args)[:16]
    results = run_on_eps(models, feeds, eps, threads=args.threads, seconds=args.seconds,
                         pythons=parse_ep_pythons(args.ep_python))
    first = next(iter(models))
    print(f"{'EP':<10}{'model':<32}{'median ms':>11}{'vs first':>10}{'cosine':>10}"
          f"{'top-1':>8}  session providers")
    payload = []
    for r in results:
        for name in models:
            cos, top = r.agreement(first, name)
            speed = r.seconds[first] / r.seconds[name]
            ran = "+".join(str(p).split("Execution")[0] for p in r.providers[name])
            print(f"{r.ep:<10}{name[:31]:<32}{r.seconds[name] * 1e3:>11.3f}{speed:>9.2f}x"
                  f"{cos:>10.5f}{'-' if top is None else f'{top:.3f}':>8}  {ran}")
            payload.append({"ep": r.ep, "model": name, "median_seconds": r.seconds[name],
                            "speedup_vs_first": speed, "cosine_vs_first": cos,
                            "top1_vs_first": top, "providers": r.providers[name],
                            "onnxruntime": r.onnxruntime, "python": r.python or "this one"})
    if args.json:
        write_text_atomic(args.json, json.dumps({"rows": payload, "threads": args.threads,
                                                 "batch": args.batch}, indent=2) + "\n")
    return 0


def _plot(times: dict[str, float], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.5 + 0.4 * len(times)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(list(times)[::-1], [t * 1e3 for t in times.values()][::-1], color="tab:blue")
    ax.set_xlabel("median latency (ms)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_text_atomic(path, buf.getvalue())
