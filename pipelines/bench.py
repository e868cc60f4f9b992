"""Benchmark skelprep against the reference Skeleton Recall recipe: the entry point of :mod:`bench`.

Usage::

    python pipelines/bench.py --quick --out results/bench-quick   # CI-sized, < 2 minutes on 2 cores
    python pipelines/bench.py --out results/bench                  # full (minutes)
    python pipelines/bench.py --tiny --out /tmp/b                  # smoke test (tests/test_bench.py)

The sections, their sides and targets are described in ``pipelines/bench/__init__.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the ``bench`` package beside this file

from bench.runner import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
