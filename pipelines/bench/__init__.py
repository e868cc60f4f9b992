"""Benchmark skelprep against the reference Skeleton Recall recipe.

Usage::

    python pipelines/bench.py --quick --out results/bench-quick   # CI-sized, < 2 minutes on 2 cores
    python pipelines/bench.py --out results/bench                  # full (minutes)
    python pipelines/bench.py --tiny --out /tmp/b                  # smoke test (tests/test_bench.py)

Writes ``bench.md`` (tables), ``bench.png`` (speed-up/saving per comparison, with
targets) and ``bench.json`` (every raw timing) to ``--out``.

Sections (each comparison runs both sides in this one process run, interleaved
repetition by repetition, so that a noisy machine hits both alike; medians,
min-max spread, ratios = baseline / skelprep):

* **build** - ``skelprep.build.build`` with 1 and 2 workers (fresh store every
  repetition) against a serial loop of the reference recipe (``read_mask`` ->
  ``skeletonize`` -> two ``dilation`` -> ``* labels`` -> ``np.save``), plus the
  I/O floor (``read_mask`` + ``np.save`` of an all-zero array of the mask's shape
  and dtype) and the serial thinning time. Dask cluster start-up is measured on
  its own, with the numba JIT/cache state inside a worker.
* **compute** - ``skelprep.skeleton_targets`` against the recipe on in-memory
  arrays; identical output is asserted.
* **loss** - ``SkeletonRecallLoss`` forward + backward against soft-clDice
  (Shit et al. 2021; 3 and 10 iterations) and against the reference one-hot
  formulation; time in this process, peak memory in a fresh subprocess per
  configuration (peak RSS above the inputs, reset between losses) or
  ``torch.cuda.max_memory_allocated`` with ``--device cuda``.
* **loading** - reading a precomputed tube patch from the store against
  computing the recipe on the label patch, per training sample, at each patch
  edge of ``patch_sizes`` (full mode 96^3, 128^3, 160^3: nnU-Net's 3d_fullres
  patches on CT vessel data are typically 128^3-160^3). Also the same read
  through ``get_basic_selection`` and a 1-voxel read (zarr's fixed cost per read).
* **storage** - store bytes against the raw voxel bytes and the mask files.
* **layouts** (full mode) - write time, size and patch-read time of a few
  chunk / shard / codec choices on a sparse 3D case.

* **cli** - whole ``skelprep build`` runs, each a new process, against a serial
  reference loop in a new process, with the ratios the build is held to.
* **streaming** (only when named in ``--sections``) - training items streamed from a
  store built ``--with-images`` (also ``python pipelines/bench_streaming.py``, which
  writes ``bench_streaming.md`` / ``.json``).
* **engines** (only when named in ``--sections``) - zarr-python, its ``zarrs`` codec
  pipeline, tensorstore and blosc2 (nnU-Net's layout) reading patches of chunk / codec
  layouts, and skelprep's training item against nnU-Net 2.8's own blosc2 loader (also
  ``python pipelines/bench_engines.py``, which writes ``bench_engines.md`` / ``.json``).
* **topology** (only when named in ``--sections``) - ``CbDiceLoss``, ``ClDiceLoss`` and
  ``BoundaryLoss`` on stored targets against the authors' code computing its targets per
  step (2D and 3D batches; time and peak memory), and the compute time of each target of
  ``skelprep.targets`` against the tube's on one case.

Data: quick mode uses ``examples/`` only plus generated vessel volumes
(:mod:`synthetic`); full mode uses ``../shared/data`` when present.

Layout: one module per comparison (:mod:`bench.build`, :mod:`bench.cli_build`,
:mod:`bench.compute`, :mod:`bench.loss`, :mod:`bench.loading`, :mod:`bench.storage`,
:mod:`bench.layouts`, :mod:`bench.streaming`, :mod:`bench.engines`, :mod:`bench.topology`), each with ``run(...) -> Part`` (its raw
data and its summary rows) and ``report_lines(sections)`` (its bench.md tables);
:mod:`bench.common` holds the sizes per mode, the timing and the records,
:mod:`bench.report` the outputs and :mod:`bench.runner` the flags.
"""

import sys
from pathlib import Path

# ``synthetic`` (beside this package) and ``skelprep`` (the checkout) when run as a script
for _path in (str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parents[2])):
    if _path not in sys.path:
        sys.path.insert(0, _path)
