"""Profile one model, or an FP32 model and its INT8 model side by side, per region and op
type (a thin wrapper around ``onnxq.profile``; the same as ``onnxq profile``).

    python tools/profile_model.py fp32.onnx [int8.onnx] --data eval.npz --runs 50 --threads 2 \
        [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import sys

from onnxq.cli import main as onnxq_main


def main(argv: list[str] | None = None) -> int:
    return onnxq_main(["profile", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
