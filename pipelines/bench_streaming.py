"""Benchmark streaming training items from a store built ``--with-images``: the entry point of
:mod:`bench.streaming` (also ``python pipelines/bench.py --sections streaming``).

Usage::

    python pipelines/bench_streaming.py --quick --out results/bench-streaming-quick   # CI-sized, ~2 minutes
    python pipelines/bench_streaming.py --full --out results/bench-streaming          # CT-size (~10 minutes)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the ``bench`` package beside this file

from bench.streaming import main  # noqa: E402

if __name__ == "__main__":
    main()
