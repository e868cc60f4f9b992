"""Benchmark storage engines for patch reads and skelprep's item against nnU-Net's blosc2 loader: the
entry point of :mod:`bench.engines` (also ``python pipelines/bench.py --sections engines``).

Usage::

    python pipelines/bench_engines.py --quick --out results/bench-engines-quick   # CI-sized, ~2 minutes
    python pipelines/bench_engines.py --full --out results/bench-engines          # CT-size (minutes)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the ``bench`` package beside this file

from bench.engines import main  # noqa: E402

if __name__ == "__main__":
    main()
