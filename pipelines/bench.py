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
* **store layouts** (full mode) - write time, size and patch-read time of a few
  chunk / shard / codec choices on a sparse 3D case.

Data: quick mode uses ``examples/`` only plus generated vessel volumes
(:mod:`synthetic`); full mode uses ``../shared/data`` when present.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # for ``synthetic`` when run as a script
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from synthetic import write_vessel_dataset  # noqa: E402

from skelprep.build import build  # noqa: E402
from skelprep.io import read_mask  # noqa: E402
from skelprep.layout import discover  # noqa: E402
from skelprep.skeleton import _skeletonize_raw, skeleton_targets  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
EXAMPLES = ROOT / "examples"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Sizes and repetitions of one benchmark mode."""

    mode: str
    reps: int  # repetitions of each timed comparison
    build_reps: int
    vessel_shape: tuple[int, int, int]
    vessel_cases: int
    use_shared: bool
    datasets: tuple[str, ...]  # which build datasets to run
    loss_2d: tuple[int, int, int, int]  # B, C, H, W
    loss_3d: tuple[int, int, int, int, int]  # B, C, D, H, W
    loss_13: tuple[int, int, int, int, int]
    loss_budget_s: float  # stop repeating a loss once it has used this much time (soft-clDice on CPU is slow)
    loss_reps: int  # the recall losses take milliseconds, where a busy machine's noise is large
    patch: int
    patch_samples: int
    store_sweep: bool
    # loading: patch edges compared (default: ``patch`` only). nnU-Net's 3d_fullres patches on CT
    # vessel data are typically 128^3 to 160^3 (e.g. 96x160x160, 128^3, 160^3).
    patch_sizes: tuple[int, ...] = ()


CONFIGS = {
    "tiny": Config(
        "tiny",
        1,
        1,
        (48, 64, 64),
        2,
        False,
        ("vessels3d",),
        (2, 3, 64, 64),
        (1, 3, 24, 24, 24),
        (1, 13, 24, 24, 24),
        0.5,
        2,
        32,
        3,
        False,
    ),
    "quick": Config(
        "quick",
        3,
        2,
        (96, 192, 192),
        2,
        False,
        ("real2d", "octa3d", "vessels3d"),
        (2, 4, 96, 96),
        (1, 3, 32, 32, 32),
        (2, 13, 64, 64, 64),
        2.0,
        10,
        64,
        12,
        False,
        (64, 96),
    ),
    # soft-clDice with 10 iterations takes ~10 s per step on 2x3x64^3 on 2 CPU cores: the
    # soft-clDice batches stay at that size, the 13-class batch (recall losses only) is larger.
    "full": Config(
        "full",
        5,
        3,
        (256, 512, 512),
        4,
        True,
        ("real2d", "octa3d", "vessels3d"),
        (4, 4, 256, 256),
        (2, 3, 64, 64, 64),
        (2, 13, 96, 96, 96),
        25.0,
        15,
        96,
        30,
        True,
        (96, 128, 160),
    ),
}


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------
def _summary(times: Sequence[float]) -> dict[str, Any]:
    return {
        "times": [round(t, 6) for t in times],
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
    }


def interleaved(
    sides: dict[str, Callable[[], Any]],
    reps: int,
    setup: Callable[[str], None] | None = None,
    budget_s: float = math.inf,
) -> dict[str, dict[str, Any]]:
    """Time each side ``reps`` times, alternating sides within every repetition.

    ``setup(name)`` runs untimed before each call (e.g. to delete a store). A side
    that has already used ``budget_s`` seconds is not repeated further (it keeps
    at least one timing; the number of timings is in the result).
    """
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        for name, fn in sides.items():
            if times[name] and sum(times[name]) >= budget_s:
                continue
            if setup is not None:
                setup(name)
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: _summary(t) for name, t in times.items()}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Results:
    """Everything measured, as written to bench.json."""

    meta: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    comparisons: list[dict[str, Any]] = field(default_factory=list)

    def compare(
        self,
        section: str,
        what: str,
        ours: str,
        baseline: str,
        ours_value: float,
        baseline_value: float,
        *,
        unit: str = "s",
        target: float | None = None,
        target_text: str = "",
    ) -> None:
        """Record ratio = baseline / ours (> 1: skelprep better) and whether it meets ``target``."""
        # a zero (e.g. no measurable memory on a tiny batch) gives no ratio
        ratio = baseline_value / ours_value if ours_value > 0 and baseline_value > 0 else math.nan
        self.comparisons.append(
            {
                "section": section,
                "what": what,
                "ours": ours,
                "baseline": baseline,
                "ours_value": ours_value,
                "baseline_value": baseline_value,
                "unit": unit,
                "ratio": ratio,
                "target": target,
                "target_text": target_text,
                "met": None if target is None or math.isnan(ratio) else bool(ratio >= target),
            }
        )


# --------------------------------------------------------------------------------------------
# The reference recipe (nnU-Net Skeleton Recall fork, SkeletonTransform with do_tube=True)
# --------------------------------------------------------------------------------------------
def reference_recipe(labels: np.ndarray) -> np.ndarray:
    """``dilation(dilation(skeletonize(labels > 0))) * labels`` exactly as the reference writes it."""
    from skimage.morphology import dilation, skeletonize

    binary = labels > 0
    skel = skeletonize(binary)
    skel = dilation(dilation(skel.astype(np.int16)))  # default footprint: connectivity-1 cross
    skel *= labels
    return skel


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    name: str
    path: Path
    masks: list[Path]
    note: str


def _copy_masks(sources: list[Path], folder: Path, prefix: str) -> None:
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for src in sources:
        dst = folder / "labels" / f"{prefix}{src.name}"
        if not dst.exists():
            shutil.copyfile(src, dst)


def prepare_datasets(cfg: Config, work: Path) -> dict[str, Dataset]:
    """The build datasets: real 2D masks, the 3D OCT-A cases and generated sparse 3D vessels."""
    out: dict[str, Dataset] = {}
    if "real2d" in cfg.datasets:
        chase_shared = SHARED / "real" / "chase_db1"
        cracks_shared = SHARED / "nnunet" / "Dataset001_RoadCracks" / "labelsTr"
        if cfg.use_shared and chase_shared.is_dir() and cracks_shared.is_dir():
            chase, cracks, note = (
                sorted(chase_shared.glob("*.png")),
                sorted(cracks_shared.glob("*.png")),
                "shared",
            )
        else:
            chase = sorted((EXAMPLES / "chase_vessels" / "labels").glob("*.png"))
            cracks = sorted((EXAMPLES / "road_cracks" / "labelsTr").glob("*.png"))
            note = "examples"
        folder = work / "real2d"
        _copy_masks(chase, folder, "chase_")
        _copy_masks(cracks, folder, "cracks_")
        out["real2d"] = Dataset(
            "real2d",
            folder,
            sorted((folder / "labels").glob("*.png")),
            f"CHASE_DB1 vessels ({len(chase)}) + road cracks, 4 classes ({len(cracks)}); {note}",
        )
    if "octa3d" in cfg.datasets:
        folder = work / "octa3d"
        if not folder.exists():
            shutil.copytree(
                EXAMPLES / "octa3d", folder, ignore=shutil.ignore_patterns("skeletons.zarr*", "imagesTr")
            )
        masks = sorted((folder / "labelsTr").glob("*.nii.gz"))
        out["octa3d"] = Dataset(
            "octa3d", folder, masks, f"tUbeNet OCT-A, {len(masks)} cases of 64^3 (examples)"
        )
    if "vessels3d" in cfg.datasets:
        shape = cfg.vessel_shape
        folder = work / f"vessels3d_{'x'.join(map(str, shape))}"
        log(f"generating {cfg.vessel_cases} sparse vessel volumes of {shape} (once)")
        write_vessel_dataset(folder, n_cases=cfg.vessel_cases, shape=shape)
        masks = sorted((folder / "labels").glob("*.nii.gz"))
        fraction = statistics.mean(float((read_mask(m).array > 0).mean()) for m in masks)
        out["vessels3d"] = Dataset(
            "vessels3d",
            folder,
            masks,
            f"generated vessel trees, {len(masks)} x {'x'.join(map(str, shape))}, 3 classes, "
            f"{100 * fraction:.2f} % foreground",
        )
    for ds in out.values():
        discover(ds.path)  # fail early on a layout problem
    return out


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------
def _cluster_probe() -> dict[str, Any]:
    """Run inside a Dask worker: import cost, numba cache state and first-call cost of the thinning."""
    t0 = time.perf_counter()
    from skelprep import _thinning

    imported = time.perf_counter() - t0
    cube = np.zeros((12, 12, 12), bool)
    cube[3:9, 4:8, 2:10] = True
    t1 = time.perf_counter()
    _thinning.thin_3d(cube)
    first = time.perf_counter() - t1
    t2 = time.perf_counter()
    _thinning.thin_3d(cube)
    second = time.perf_counter() - t2
    stats = {}
    if _thinning.HAVE_NUMBA:
        hits = misses = 0
        for value in vars(_thinning).values():
            s = getattr(value, "stats", None)
            if s is not None and hasattr(s, "cache_hits"):
                hits += sum(s.cache_hits.values())
                misses += sum(s.cache_misses.values())
        stats = {
            "cache_path": _thinning._thin_flat.stats.cache_path,
            "cache_hits": hits,
            "cache_misses": misses,
        }
    return {
        "import_s": imported,
        "first_call_s": first,
        "second_call_s": second,
        "numba": _thinning.HAVE_NUMBA,
        **stats,
        "pid": os.getpid(),
    }


def bench_cluster(reps: int) -> dict[str, Any]:
    """Start-up and shut-down of the 2-process LocalCluster that ``build`` creates, and a worker probe."""
    from dask.distributed import Client, LocalCluster

    starts, closes, probes = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit=0,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
        starts.append(time.perf_counter() - t0)
        probes.append(list(client.run(_cluster_probe).values()))
        t1 = time.perf_counter()
        client.close()
        cluster.close()
        closes.append(time.perf_counter() - t1)
    return {"start": _summary(starts), "close": _summary(closes), "worker_probe": probes}


def bench_build(ds: Dataset, cfg: Config, work: Path, arrays: list[np.ndarray]) -> dict[str, Any]:
    """Serial reference loop, I/O floor and skelprep build (1 and 2 workers) on one dataset."""
    npy_out = work / f"npy_{ds.name}"
    stores = {1: work / f"store_{ds.name}_1w.zarr", 2: work / f"store_{ds.name}_2w.zarr"}

    def reference_loop() -> None:
        for i, path in enumerate(ds.masks):
            labels = read_mask(path).array
            np.save(npy_out / f"{i}.npy", reference_recipe(labels))

    def io_floor() -> None:
        for i, path in enumerate(ds.masks):
            labels = read_mask(path).array
            np.save(npy_out / f"{i}.npy", np.zeros(labels.shape, labels.dtype))

    def read_only() -> None:
        for path in ds.masks:
            read_mask(path)

    def thinning() -> None:
        for labels in arrays:
            _skeletonize_raw(labels > 0)

    def run_build(workers: int) -> None:
        report = build(ds.path, stores[workers], workers=workers, force=True)
        if not report.ok:
            raise RuntimeError(f"build failed: {report.as_dict()['failed']}")

    def cluster_only() -> None:
        from dask.distributed import Client, LocalCluster

        # what build(workers=2) starts and stops, without work: its fixed cost
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit=0,
            silence_logs=logging.ERROR,
        )
        Client(cluster).close()
        cluster.close()

    def setup(name: str) -> None:
        shutil.rmtree(npy_out, ignore_errors=True)
        npy_out.mkdir(parents=True)
        for workers, store in stores.items():
            if name.endswith(f"{workers}w"):
                shutil.rmtree(store, ignore_errors=True)
                Path(str(store) + ".lock").unlink(missing_ok=True)

    sides = {
        "reference serial loop": reference_loop,
        "I/O floor (read_mask + np.save zeros)": io_floor,
        "read only": read_only,
        "thinning only (serial)": thinning,
        "skelprep build 1w": lambda: run_build(1),
        "skelprep build 2w": lambda: run_build(2),
        "Dask cluster start + close (2 workers, no work)": cluster_only,
    }
    timings = interleaved(sides, cfg.build_reps, setup)
    shutil.rmtree(npy_out, ignore_errors=True)
    return {"timings": timings, "store": str(stores[2]), "cases": len(ds.masks)}


# --------------------------------------------------------------------------------------------
# Whole CLI builds (issue 12): wall clock including process start, against a serial reference loop
# --------------------------------------------------------------------------------------------
# Sizes per mode: (3D shapes x cases, 2D crops); the full mode is what issue 12's targets name.
CLI_SIZES = {
    "tiny": {"sparse3d": [((48, 64, 64), 2)], "crops": 6},
    "quick": {"sparse3d": [((96, 192, 192), 2)], "crops": 48},
    "full": {"sparse3d": [((256, 512, 512), 4), ((160, 320, 320), 4)], "crops": 504},
}
# dataset -> minimum ratio (reference loop / skelprep build --workers 2), from issue 12
CLI_TARGETS = {"sparse3d 256x512x512": 4.0, "sparse3d 160x320x320": 2.5, "real2d": 3.0, "crops": 3.0}
CLI_RERUN_TARGET_S = 0.5  # an up-to-date rerun over the 504 crops
CLI_BOOKKEEPING_TARGET_S = 0.002  # per case, beyond the compute and the bytes written
CLI_PHASES = ("start", "plan", "read", "core", "attrs", "encode", "store", "finalize")

REFERENCE_LOOP = """
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {here!r})
from bench import reference_recipe
masks, out = [Path(p) for p in json.loads(sys.argv[1])], Path(sys.argv[2])
for i, path in enumerate(masks):
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib
        labels = np.asanyarray(nib.load(path).dataobj)
    else:
        from PIL import Image
        labels = np.asarray(Image.open(path))
    np.save(out / f"{{i}}.npy", reference_recipe(labels))
"""


def write_crop_cases(work: Path, n_cases: int) -> Dataset:
    """``n_cases`` 512x512 crops of the real CHASE_DB1 vessel masks (shared data, else examples/)."""
    from synthetic import write_crop_dataset

    shared = SHARED / "real" / "chase_db1"
    sources = sorted(shared.glob("*.png")) or sorted((EXAMPLES / "chase_vessels" / "labels").glob("*.png"))
    folder = work / f"crops{n_cases}"
    write_crop_dataset(folder, sources, n_cases=n_cases)
    masks = sorted((folder / "labels").glob("*.png"))
    return Dataset(
        "crops", folder, masks, f"{n_cases} crops of 512x512 of {len(sources)} real CHASE_DB1 vessel masks"
    )


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from skelprep.cli import main; main()", *args]


def _run_json(cmd: list[str]) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}


def bench_cli_build(ds: Dataset, work: Path, reps: int) -> dict[str, Any]:
    """CLI wall clock: reference loop vs ``skelprep build`` (1, 2 workers, fresh store), up-to-date rerun.

    Every side is a new process, as a user runs it; sides interleaved per repetition.
    Phases (seconds summed over the cases, and the client's plan/finalize) come from
    ``skelprep build --json``; ``start`` is ``skelprep --help`` (interpreter + CLI imports).
    """
    npy_out = work / f"cli_npy_{ds.name}"
    store = work / f"cli_store_{ds.name}.zarr"
    env_masks = json.dumps([str(m) for m in ds.masks])
    phases: dict[str, list[dict[str, float]]] = {"1w": [], "2w": []}

    def reference() -> None:
        code = REFERENCE_LOOP.format(here=str(HERE))
        subprocess.run([sys.executable, "-c", code, env_masks, str(npy_out)], check=True)

    def skelprep_build(workers: int) -> Callable[[], None]:
        def fn() -> None:
            args = ("build", str(ds.path), "--out", str(store), "--workers", str(workers))
            report = _run_json(_cli(*args, "--json"))
            phases[f"{workers}w"].append(report.get("phases", {}))

        return fn

    def rerun() -> None:
        _run_json(_cli("build", str(ds.path), "--out", str(store), "--workers", "2", "--json"))

    def start() -> None:
        subprocess.run(_cli("--help"), capture_output=True, check=True)

    def setup(name: str) -> None:
        shutil.rmtree(npy_out, ignore_errors=True)
        npy_out.mkdir(parents=True)
        if name.startswith("skelprep build --workers"):
            shutil.rmtree(store, ignore_errors=True)
            Path(str(store) + ".lock").unlink(missing_ok=True)

    sides = {
        "reference serial loop (nibabel/PIL read, recipe, np.save)": reference,
        "skelprep build --workers 1": skelprep_build(1),
        "skelprep build --workers 2": skelprep_build(2),
        "skelprep build, up-to-date rerun": rerun,  # after the 2-worker build
        "process start (skelprep --help)": start,
    }
    timings = interleaved(sides, reps, setup)
    shutil.rmtree(npy_out, ignore_errors=True)
    start_s = timings["process start (skelprep --help)"]["median"]
    per_phase = {}
    for key, runs in phases.items():
        names = sorted({n for r in runs for n in r})
        per_phase[key] = {n: statistics.median(r.get(n, 0.0) for r in runs) for n in names}
        per_phase[key]["start"] = start_s
    return {"timings": timings, "phases": per_phase, "cases": len(ds.masks), "note": ds.note}


def parallel_capacity() -> float:
    """Speed-up of 2 threads over 1 on GIL-free work (SHA-256 of 64 MiB) now: what 2 workers can gain.

    On a shared machine another process may hold the second core; 2 workers cannot beat 1 then,
    however they run (measured 1.07x on the project machine under a load of 5 on 2 cores).
    """
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    data = np.ones(1 << 26, np.uint8)
    t0 = time.perf_counter()
    for _ in range(4):
        hashlib.sha256(data.data).digest()
    serial = time.perf_counter() - t0
    with ThreadPoolExecutor(2) as pool:
        t1 = time.perf_counter()
        list(pool.map(lambda _: hashlib.sha256(data.data).digest(), range(4)))
        threaded = time.perf_counter() - t1
    return serial / threaded


def run_cli_section(res: Results, cfg: Config, work: Path, datasets: dict[str, Dataset]) -> None:
    """The CLI build comparisons of issue 12 on generated sparse volumes, the real 2D masks and crops."""
    sizes = CLI_SIZES[cfg.mode]
    cli_sets: dict[str, Dataset] = {}
    for shape, n_cases in sizes["sparse3d"]:
        label = "x".join(map(str, shape))
        folder = work / f"vessels3d_{label}"  # the build section's folder when the shape is the same
        write_vessel_dataset(folder, n_cases=n_cases, shape=shape)
        masks = sorted((folder / "labels").glob("*.nii.gz"))[:n_cases]
        cli_sets[f"sparse3d {label}"] = Dataset(
            f"sparse3d_{label}", folder, masks, f"{n_cases} generated sparse vessel volumes of {label}"
        )
    if "real2d" in datasets:
        cli_sets["real2d"] = datasets["real2d"]
    cli_sets["crops"] = write_crop_cases(work, sizes["crops"])
    res.sections["cli machine load"] = {"before": os.getloadavg(), "two_threads": parallel_capacity()}
    for name, ds in cli_sets.items():
        log(f"cli build {name}")
        b = bench_cli_build(ds, work, cfg.build_reps)
        res.sections[f"cli build {name}"] = b
        cli_comparisons(res, name, b)
    res.sections["cli machine load"]["after"] = os.getloadavg()


def cli_comparisons(res: Results, name: str, b: dict[str, Any]) -> None:
    """Issue 12's targets for one dataset, from :func:`bench_cli_build`."""
    t = {k: v["median"] for k, v in b["timings"].items()}
    ref = t["reference serial loop (nibabel/PIL read, recipe, np.save)"]
    target = CLI_TARGETS.get(name)
    for workers in (2, 1):
        res.compare(
            "cli build",
            name,
            f"skelprep build --workers {workers}",
            "reference serial loop",
            t[f"skelprep build --workers {workers}"],
            ref,
            target=target if workers == 2 else None,
            target_text=f">= {target:g}x" if target and workers == 2 else "",
        )
    res.compare(
        "cli build",
        name + ": 2 workers vs 1",
        "--workers 2",
        "--workers 1",
        t["skelprep build --workers 2"],
        t["skelprep build --workers 1"],
        target=1.0,
        target_text="never slower (>= 1x)",
    )
    ph = b["phases"]["1w"]
    writing = ph.get("encode", 0.0) + ph.get("store", 0.0)
    res.compare(
        "cli build",
        name + ": writing vs core (1 worker)",
        "encode + store",
        "core",
        writing,
        ph.get("core", 0.0),
        target=1.0,
        target_text="write <= core (>= 1x)",
    )
    if name == "crops":
        n = b["cases"]
        # beyond the compute and the bytes written: plan, attrs, finalize and the store's
        # per-file work, measured as the single-worker wall clock less start, read and core
        book = (t["skelprep build --workers 1"] - ph["start"] - ph.get("core", 0.0) - ph.get("read", 0.0)) / n
        res.compare(
            "cli build",
            f"crops: bookkeeping per case ({n} cases, 1 worker)",
            "skelprep",
            "target",
            max(book, 1e-9),
            CLI_BOOKKEEPING_TARGET_S,
            target=1.0,
            target_text="<= 2 ms",
        )
        res.compare(
            "cli build",
            f"crops: up-to-date rerun ({n} cases)",
            "skelprep build (nothing to do)",
            "target",
            t["skelprep build, up-to-date rerun"],
            CLI_RERUN_TARGET_S,
            target=1.0,
            target_text="<= 0.5 s",
        )


def cli_report_lines(s: dict[str, Any]) -> list[str]:
    """bench.md tables of the CLI builds: sides, and where each second goes."""
    lines: list[str] = []
    if "cli machine load" in s:
        m = s["cli machine load"]
        lines += [
            f"CLI builds: load average {m['before'][0]:.1f} before, {m.get('after', [float('nan')])[0]:.1f} after; "
            f"2 threads of GIL-free work ran {m['two_threads']:.2f}x as fast as 1 (the most 2 workers can gain).",
            "",
        ]
    for key in [k for k in s if k.startswith("cli build ")]:
        b = s[key]
        lines += [f"## {key[4:].capitalize()}: {b['note']} (CLI wall clock, new process per run)", ""]
        lines += ["| side | wall time |", "|---|---|"]
        lines += [f"| {name} | {_fmt_t(t)} |" for name, t in b["timings"].items()] + [""]
        lines += ["Where the seconds go (median; case phases summed over the cases):", ""]
        lines += [
            "| workers | " + " | ".join(CLI_PHASES) + " | run (wall) |",
            "|---" * (len(CLI_PHASES) + 2) + "|",
        ]
        for workers, ph in b["phases"].items():
            cells = " | ".join(f"{ph.get(n, 0.0):.3f}" for n in CLI_PHASES)
            lines.append(f"| {workers} | {cells} | {ph.get('run', 0.0):.3f} |")
        lines += [
            "",
            "start: `skelprep --help`; plan: discovery, lock, store attributes and mask hashes (client); "
            "read: hash + decode of the masks; core: `skeleton_targets`; attrs: provenance and label "
            "counts; encode: chunks, SHA-256 checksums and label counts of tube and thin; store: the "
            "files written; finalize: case list and consolidated metadata.",
            "",
        ]
    return lines


# --------------------------------------------------------------------------------------------
# Per-case compute
# --------------------------------------------------------------------------------------------
def bench_compute(name: str, arrays: list[np.ndarray], reps: int) -> dict[str, Any]:
    """skeleton_targets against the recipe on in-memory arrays, identical output asserted."""
    fallbacks = 0
    for labels in arrays:
        ours = skeleton_targets(labels)
        ref = reference_recipe(labels)
        fallbacks += ours.fallback_components
        if ours.fallback_components == 0:
            if not np.array_equal(ours.tube, ref):
                raise AssertionError(f"{name}: skelprep tube differs from the reference recipe")
        elif not (ours.tube >= ref).all():  # fallback skeletons only add to the reference
            raise AssertionError(f"{name}: skelprep tube misses reference voxels")
    sides = {
        "reference recipe": lambda: [reference_recipe(a) for a in arrays],
        "skelprep.skeleton_targets": lambda: [skeleton_targets(a) for a in arrays],
    }
    timings = interleaved(sides, reps)
    return {
        "timings": timings,
        "cases": len(arrays),
        "fallback_components": fallbacks,
        "identical": fallbacks == 0,
    }


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------
UNFUSED = "SkeletonRecallLoss on softmax (unfused)"


def _loss_functions(n_dims: int):
    """name -> f(logits, label, tube) for the losses compared; imported lazily (torch)."""
    import torch
    import torch.nn.functional as F

    try:
        from skelprep.torch.loss import SkeletonRecallLoss

        recall = SkeletonRecallLoss()  # on logits: the fused path (no softmax kept)
        unfused_recall = SkeletonRecallLoss(apply_softmax=False)
        source = "skelprep.torch.loss.SkeletonRecallLoss"
    except ImportError:  # the package's loss is not there: a labelled local restatement
        source = "LOCAL RESTATEMENT (skelprep.torch.loss missing)"
        unfused_recall = None  # the restatement is the unfused path already

        def recall(logits, tube):
            probs = torch.softmax(logits.float(), 1)
            t = tube.long()
            picked = probs.gather(1, t).flatten(1)
            zeros = torch.zeros(probs.shape[0], probs.shape[1], device=probs.device)
            inter = zeros.scatter_add(1, t.flatten(1), picked)[:, 1:]
            count = zeros.scatter_add(1, t.flatten(1), torch.ones_like(picked))[:, 1:]
            return -((inter + 1e-5) / torch.clamp(count + 1e-5, min=1e-8)).mean()

    if n_dims == 2:
        pool = F.max_pool2d

        def soft_erode(img):
            p1 = -pool(-img, (3, 1), (1, 1), (1, 0))
            p2 = -pool(-img, (1, 3), (1, 1), (0, 1))
            return torch.min(p1, p2)
    else:
        pool = F.max_pool3d

        def soft_erode(img):
            p1 = -pool(-img, (3, 1, 1), (1, 1, 1), (1, 0, 0))
            p2 = -pool(-img, (1, 3, 1), (1, 1, 1), (0, 1, 0))
            p3 = -pool(-img, (1, 1, 3), (1, 1, 1), (0, 0, 1))
            return torch.min(torch.min(p1, p2), p3)

    def soft_dilate(img):
        return pool(img, 3, 1, 1)

    def soft_open(img):
        return soft_dilate(soft_erode(img))

    def soft_skel(img, iterations):
        skel = F.relu(img - soft_open(img))
        for _ in range(iterations):
            img = soft_erode(img)
            delta = F.relu(img - soft_open(img))
            skel = skel + F.relu(delta - skel * delta)
        return skel

    def soft_cldice(iterations: int):
        # Shit et al. (CVPR 2021), reference soft_cldice: y_true one-hot, y_pred softmax, background excluded
        def loss(logits, label, tube):
            probs = torch.softmax(logits.float(), 1)
            onehot = torch.zeros_like(probs).scatter_(1, label.long(), 1)
            skel_pred = soft_skel(probs, iterations)
            skel_true = soft_skel(onehot, iterations)
            smooth = 1.0
            tprec = ((skel_pred * onehot)[:, 1:].sum() + smooth) / (skel_pred[:, 1:].sum() + smooth)
            tsens = ((skel_true * probs)[:, 1:].sum() + smooth) / (skel_true[:, 1:].sum() + smooth)
            return 1.0 - 2.0 * (tprec * tsens) / (tprec + tsens)

        return loss

    def onehot_recall(logits, label, tube):
        # nnU-Net Skeleton Recall fork, SoftSkeletonRecallLoss: one-hot of the whole batch
        probs = torch.softmax(logits.float(), 1)
        onehot = torch.zeros(probs.shape, device=probs.device, dtype=probs.dtype).scatter_(1, tube.long(), 1)
        axes = tuple(range(2, probs.ndim))
        inter = (probs[:, 1:] * onehot[:, 1:]).sum(axes)
        count = onehot[:, 1:].sum(axes)
        return -((inter + 1e-5) / torch.clamp(count + 1e-5, min=1e-8)).mean()

    def unfused(logits, label, tube):
        # softmax, then the loss on probabilities (gather path; what CompoundLoss does)
        return unfused_recall(torch.softmax(logits.float(), 1), tube)

    sides = {
        "SkeletonRecallLoss": lambda logits, label, tube: recall(logits, tube),
        "one-hot recall (reference)": onehot_recall,
        "soft-clDice 3 it": soft_cldice(3),
        "soft-clDice 10 it": soft_cldice(10),
    }
    if unfused_recall is not None:
        sides[UNFUSED] = unfused
    return source, sides


def _loss_inputs(shape: Sequence[int], device: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    b, c, *spatial = shape
    logits = torch.randn(b, c, *spatial, generator=g).to(device).requires_grad_(True)
    label = torch.randint(0, c, (b, 1, *spatial), generator=g)
    tube = label * (torch.rand(b, 1, *spatial, generator=g) < 0.1)  # a sparse tube inside the label
    return logits, label.to(device), tube.to(device)


def _rss_bytes(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def loss_memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: peak memory of forward + backward of each loss, above the inputs.

    Linux: the RSS high-water mark is reset (``/proc/self/clear_refs`` = 5) before
    each loss; glibc is made to mmap large blocks (``MALLOC_MMAP_THRESHOLD_``, set
    by the parent) so freed tensors leave RSS at once and losses do not share pages.
    """
    import torch

    torch.set_num_threads(spec["threads"])
    _, losses = _loss_functions(len(spec["shape"]) - 2)
    logits, label, tube = _loss_inputs(spec["shape"], "cpu")
    for name in spec["methods"]:  # warm-up: one-off allocations (kernels, thread pools) are no loss's
        if name.startswith("soft-clDice"):
            continue  # its peak is hundreds of MiB; one-offs do not matter, and it is slow
        logits.grad = None
        losses[name](logits, label, tube).backward()
    out: dict[str, dict[str, int]] = {"train": {}, "forward": {}}
    for name in spec["methods"]:
        for phase in ("train", "forward"):
            logits.grad = None
            gc.collect()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _rss_bytes("VmRSS")
            if phase == "train":
                losses[name](logits, label, tube).backward()
            else:
                with torch.no_grad():  # validation-style: no graph kept
                    losses[name](logits, label, tube)
            out[phase][name] = _rss_bytes("VmHWM") - base
    return out


def _bench_loss_config(
    shape: Sequence[int], methods: list[str], cfg: Config, device: str, threads: int
) -> tuple[str, dict[str, Any]]:
    """Time (this process) and peak memory (subprocess, or CUDA counters) of the losses on one batch."""
    import torch

    source, losses = _loss_functions(len(shape) - 2)
    logits, label, tube = _loss_inputs(shape, device)

    def run(name: str) -> Callable[[], None]:
        def fn() -> None:
            logits.grad = None
            losses[name](logits, label, tube).backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        return fn

    for name in methods:  # warm-up (allocator, kernels); soft-clDice is slow enough not to need it
        if not name.startswith("soft-clDice"):
            run(name)()
    timings = interleaved({name: run(name) for name in methods}, cfg.loss_reps, budget_s=cfg.loss_budget_s)
    if device.startswith("cuda"):
        memory: dict[str, dict[str, int]] = {"train": {}, "forward": {}}
        for name in methods:
            for phase in ("train", "forward"):
                logits.grad = None
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                if phase == "train":
                    run(name)()
                else:
                    with torch.no_grad():
                        losses[name](logits, label, tube)
                torch.cuda.synchronize()
                memory[phase][name] = torch.cuda.max_memory_allocated() - base
        how = "torch.cuda.max_memory_allocated above the inputs"
    else:
        memory = _memory_in_subprocess(shape, methods, threads)
        how = "peak RSS above the inputs, fresh subprocess, high-water mark reset per loss"
    return source, {
        "shape": list(shape),
        "timings": timings,
        "peak_bytes": memory["train"],
        "peak_bytes_forward": memory["forward"],
        "memory_method": how,
    }


def loss_extra_memory_row(res: Results, key: str, conf: dict[str, Any], ours: str) -> None:
    """Headline memory row: peak memory beyond the logits gradient, which every loss must allocate.

    Issue 12 retired "peak memory >= 3x less than the one-hot reference at 13 classes": both
    sides hold the float32 gradient of the logits (B*C*spatial*4 bytes), which bounds the
    ratio of whole peaks; what a loss adds on top is what it costs.
    """
    grad = math.prod(conf["shape"]) * 4
    mem = conf["peak_bytes"]
    thirteen = key == "3D, 13 classes"
    res.compare(
        "loss",
        f"{key} extra memory beyond the logits gradient ({_fmt_bytes(grad)})",
        ours,
        "one-hot recall",
        max(mem[ours] - grad, 1),
        max(mem["one-hot recall (reference)"] - grad, 1),
        unit="B",
        target=3.0 if thirteen else None,
        target_text=">= 3x less" if thirteen else "",
    )


def bench_loss(cfg: Config, device: str) -> dict[str, Any]:
    import torch

    # distributed's LocalCluster sets OMP_NUM_THREADS=1 in this process's environment (for its
    # workers), which torch would inherit: train-like settings use every core.
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    results: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "threads": threads,
        "configs": {},
    }
    configs = {
        "2D": (
            cfg.loss_2d,
            ["SkeletonRecallLoss", "one-hot recall (reference)", "soft-clDice 3 it", "soft-clDice 10 it"],
        ),
        "3D": (
            cfg.loss_3d,
            ["SkeletonRecallLoss", "one-hot recall (reference)", "soft-clDice 3 it", "soft-clDice 10 it"],
        ),
        "3D, 13 classes": (cfg.loss_13, ["SkeletonRecallLoss", "one-hot recall (reference)"]),
    }
    if UNFUSED in _loss_functions(3)[1]:  # the fused path against softmax + gather, same class ids
        for _, methods in configs.values():
            methods.insert(1, UNFUSED)
    for key, (shape, methods) in configs.items():
        log(f"loss {key} {shape}")
        results["source"], results["configs"][key] = _bench_loss_config(shape, methods, cfg, device, threads)
    return results


def _memory_in_subprocess(
    shape: Sequence[int], methods: list[str], threads: int
) -> dict[str, dict[str, int]]:
    spec = {"shape": list(shape), "methods": methods, "threads": threads}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    proc = subprocess.run(
        [sys.executable, __file__, "--loss-memory-child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"loss memory subprocess failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
LOAD_READ = "store read"
LOAD_REF = "reference recipe on the patch"
# What nnU-Net's planner typically picks for 3d_fullres on CT vessel data (the reference
# computes the tube per sample in the dataloader, on that patch).
NNUNET_TYPICAL = {128: "typical nnU-Net 3d_fullres", 160: "typical nnU-Net 3d_fullres"}


def bench_loading(store_path: str, ds: Dataset, arrays: list[np.ndarray], cfg: Config) -> dict[str, Any]:
    """Per training sample and patch edge: a tube patch read from the store vs computed from the label patch.

    Samples as nnU-Net draws them (a third foreground-centred, the rest uniform). Sides,
    interleaved sample by sample: the store read exactly as ``SkeletonDataset`` does it
    (``case.tube[box]``), the same through ``get_basic_selection``, a 1-voxel read at the
    patch corner (zarr's fixed cost per read: shard index + one chunk), the reference recipe
    and ``skeleton_targets`` on the label patch.
    """
    from skelprep import open_store

    store = open_store(store_path)
    cases = {cid: store[cid] for cid in store.case_ids}  # a Dataset keeps these open
    ids = sorted(cases)
    rng = np.random.default_rng(0)
    sizes = cfg.patch_sizes or (cfg.patch,)
    out: dict[str, Any] = {"sizes": {}, "chunks": None, "shards": None}
    first = cases[ids[0]].tube
    out["chunks"], out["shards"] = list(first.chunks), list(first.shards or first.chunks)
    for p in sizes:
        samples = []
        for k in range(cfg.patch_samples):
            i = int(rng.integers(len(ids)))
            labels = arrays[i]
            shape = np.asarray(labels.shape)
            if np.any(shape < p):
                raise ValueError(f"patch {p} larger than case {ids[i]} {tuple(shape)}")
            if k % 3 == 0:  # nnU-Net forces foreground into a third of its patches
                fg = np.flatnonzero(labels)
                centre = np.asarray(np.unravel_index(fg[rng.integers(fg.size)], labels.shape))
                corner = np.clip(centre - p // 2, 0, shape - p)
            else:
                corner = rng.integers(0, shape - p + 1)
            samples.append((ids[i], i, tuple(slice(int(c), int(c) + p) for c in corner)))

        sides: dict[str, Callable[[str, int, tuple[slice, ...]], Any]] = {
            LOAD_READ: lambda cid, i, box: cases[cid].tube[box],
            "store read, get_basic_selection": lambda cid, i, box: cases[cid].tube.get_basic_selection(box),
            "1-voxel store read (fixed cost per read)": lambda cid, i, box: cases[cid].tube[
                tuple(slice(b.start, b.start + 1) for b in box)
            ],
            LOAD_REF: lambda cid, i, box: reference_recipe(arrays[i][box]),
            "skelprep.skeleton_targets on the patch": lambda cid, i, box: skeleton_targets(arrays[i][box]),
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        for case_id, i, box in samples:
            for name, fn in sides.items():
                t0 = time.perf_counter()
                fn(case_id, i, box)
                times[name].append(time.perf_counter() - t0)
        out["sizes"][str(p)] = {
            "patch": p,
            "samples": len(samples),
            "timings": {k: _summary(v) for k, v in times.items()},
        }
    return out


def bench_concurrent_reads(store_path: str, patch: int, samples: int) -> dict[str, Any]:
    """Three arrays of a case read at one patch (as the Dataset reads tube + label + image), per sample.

    Sides, interleaved sample by sample: one read after another; ``skelprep.store.read_regions``
    (one round trip to zarr's event loop, reads concurrent); a pool of three threads.
    The three arrays are tube, thin and tube again (what a store of this version holds).
    """
    from concurrent.futures import ThreadPoolExecutor

    from skelprep import open_store
    from skelprep.store import read_regions

    store = open_store(store_path)
    cases = [store[c] for c in store.case_ids]
    rng = np.random.default_rng(2)
    pool = ThreadPoolExecutor(3)
    sides = {
        "3 reads one after another": lambda arrays, box: [a[box] for a in arrays],
        "3 reads concurrent (read_regions, zarr async)": read_regions,
        "3 reads in 3 threads": lambda arrays, box: list(pool.map(lambda a: a[box], arrays)),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(samples):
        case = cases[int(rng.integers(len(cases)))]
        corner = rng.integers(0, np.maximum(np.asarray(case.shape) - patch, 0) + 1)
        box = tuple(slice(int(c), int(c) + patch) for c in corner)
        arrays = [case.tube, case.thin, case.tube]
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn(arrays, box)
            times[name].append(time.perf_counter() - t0)
    pool.shutdown()
    return {"patch": patch, "samples": samples, "timings": {k: _summary(v) for k, v in times.items()}}


# --------------------------------------------------------------------------------------------
# Storage and store layouts
# --------------------------------------------------------------------------------------------
def _tree_bytes(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes as du counts them) of a folder."""
    apparent = allocated = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def bench_storage(ds: Dataset, store: str, arrays: list[np.ndarray]) -> dict[str, Any]:
    apparent, allocated = _tree_bytes(Path(store))
    return {
        "store_apparent": apparent,
        "store_du": allocated,
        "raw_voxel_bytes": int(sum(a.nbytes for a in arrays)),
        "mask_file_bytes": int(sum(m.stat().st_size for m in ds.masks)),
    }


def bench_store_layouts(
    tube: np.ndarray, thin: np.ndarray, work: Path, reps: int, patch: int
) -> dict[str, Any]:
    """Write time, size and random patch-read time of candidate chunk / shard / codec choices."""
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    candidates = {
        "64^3 chunks, 256^3 shards, zstd 3": ((64,) * 3, (256,) * 3, ZstdCodec(level=3)),
        "64^3 chunks, 256^3 shards, zstd 1": ((64,) * 3, (256,) * 3, ZstdCodec(level=1)),
        "64^3 chunks, 256^3 shards, zstd 9": ((64,) * 3, (256,) * 3, ZstdCodec(level=9)),
        "64^3 chunks, 256^3 shards, blosc lz4 bitshuffle": (
            (64,) * 3,
            (256,) * 3,
            BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),
        ),
        "32^3 chunks, 256^3 shards, zstd 3": ((32,) * 3, (256,) * 3, ZstdCodec(level=3)),
        "128^3 chunks, 256^3 shards, zstd 3": ((128,) * 3, (256,) * 3, ZstdCodec(level=3)),
        "64^3 chunks, no shards, zstd 3": ((64,) * 3, None, ZstdCodec(level=3)),
    }
    rng = np.random.default_rng(1)
    shape = np.asarray(tube.shape)
    corners = [rng.integers(0, shape - patch + 1) for _ in range(20)]
    out = {}
    for name, (chunks, shards, codec) in candidates.items():
        chunks = tuple(min(c, s) for c, s in zip(chunks, tube.shape, strict=True))
        shards = (
            None
            if shards is None
            else tuple(
                c * min(s // c, math.ceil(n / c)) for c, s, n in zip(chunks, shards, tube.shape, strict=True)
            )
        )
        path = work / "layout.zarr"
        writes, reads = [], []
        for _ in range(reps):
            shutil.rmtree(path, ignore_errors=True)
            t0 = time.perf_counter()
            root = zarr.open_group(str(path), mode="w")
            for arr_name, data in (("tube", tube), ("thin", thin)):
                arr = root.create_array(
                    arr_name,
                    shape=data.shape,
                    dtype=data.dtype,
                    chunks=chunks,
                    shards=shards,
                    compressors=[codec, Crc32cCodec()],
                    fill_value=0,
                )
                arr[...] = data
            writes.append(time.perf_counter() - t0)
            arr = zarr.open_group(str(path), mode="r")["tube"]
            t1 = time.perf_counter()
            for c in corners:
                arr[tuple(slice(int(x), int(x) + patch) for x in c)]
            reads.append((time.perf_counter() - t1) / len(corners))
        out[name] = {"write": _summary(writes), "patch_read": _summary(reads), "bytes": _tree_bytes(path)[0]}
        shutil.rmtree(path, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _fmt_t(s: dict[str, Any]) -> str:
    def f(x: float) -> str:
        return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"

    return f"{f(s['median'])} ({f(s['min'])}-{f(s['max'])})"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def write_report(res: Results, out: Path) -> None:
    lines = ["# skelprep benchmark", ""]
    m = res.meta
    lines += [
        f"Mode `{m['mode']}`, {m['machine']}; {m['reps']} repetitions per comparison "
        f"({m['build_reps']} for builds), sides interleaved in one run. Times: median (min-max). "
        "Ratio = baseline / skelprep (> 1: skelprep better).",
        "",
    ]
    lines += [
        "## Summary",
        "",
        "| section | comparison | skelprep | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in res.comparisons:
        fmt = _fmt_bytes if c["unit"] == "B" else (lambda x: f"{x:.3f} s")
        met = "" if c["met"] is None else ("yes" if c["met"] else "**no**")
        lines.append(
            f"| {c['section']} | {c['what']}: {c['ours']} vs {c['baseline']} | {fmt(c['ours_value'])} | "
            f"{fmt(c['baseline_value'])} | {c['ratio']:.2f}x | {c['target_text']} | {met} |"
        )
    lines.append("")
    s = res.sections
    if "datasets" in s:
        lines += ["## Datasets", ""] + [f"- `{k}`: {v}" for k, v in s["datasets"].items()] + [""]
    if "cluster" in s:
        c = s["cluster"]
        lines += [
            "## Dask cluster (2 worker processes)",
            "",
            f"One start (LocalCluster + Client): {_fmt_t(c['start'])}; close: {_fmt_t(c['close'])}. "
            "Both are inside every `build`; each build table has it interleaved as its own side. "
            "Worker probe (a fresh worker's first use of the numba thinning):",
            "",
        ]
        probe = c["worker_probe"][0]
        lines += [
            "| worker | import skelprep._thinning | first thin_3d call | second call | numba cache hits / misses |",
            "|---|---|---|---|---|",
        ]
        for p in probe:
            lines.append(
                f"| {p['pid']} | {p['import_s'] * 1000:.0f} ms | {p['first_call_s'] * 1000:.1f} ms | "
                f"{p['second_call_s'] * 1000:.2f} ms | {p.get('cache_hits', '-')} / {p.get('cache_misses', '-')} |"
            )
        lines.append("")
    for key in [k for k in s if k.startswith("build ")]:
        b = s[key]
        lines += [f"## {key.capitalize()} ({b['cases']} cases)", "", "| side | wall time |", "|---|---|"]
        lines += [f"| {name} | {_fmt_t(t)} |" for name, t in b["timings"].items()] + [""]
    lines += cli_report_lines(s)
    for key in [k for k in s if k.startswith("compute ")]:
        b = s[key]
        lines += [
            f"## Per-case compute, {key[8:]} ({b['cases']} arrays, total per repetition; "
            f"identical output: {b['identical']}, fallback components: {b['fallback_components']})",
            "",
            "| side | time |",
            "|---|---|",
        ]
        lines += [f"| {name} | {_fmt_t(t)} |" for name, t in b["timings"].items()] + [""]
    if "loss" in s:
        lo = s["loss"]
        lines += [
            f"## Loss forward + backward ({lo['device']}, torch {lo['torch']}, {lo['threads']} threads; "
            f"SkeletonRecallLoss from {lo['source']})",
            "",
            "| batch (B, C, spatial) | loss | time (n) | peak memory, forward + backward | "
            "peak memory, forward only (no_grad) |",
            "|---|---|---|---|---|",
        ]
        for key, conf in lo["configs"].items():
            for name, t in conf["timings"].items():
                lines.append(
                    f"| {key} {tuple(conf['shape'])} | {name} | {_fmt_t(t)} ({len(t['times'])}) | "
                    f"{_fmt_bytes(conf['peak_bytes'][name])} | "
                    f"{_fmt_bytes(conf['peak_bytes_forward'][name])} |"
                )
        lines += ["", f"Peak memory: {next(iter(lo['configs'].values()))['memory_method']}.", ""]
    if "loading" in s:
        lo = s["loading"]
        lines += [
            f"## Loading a tube patch, per training sample (store chunks {lo['chunks']}, shards {lo['shards']}; "
            "1/3 of the samples foreground-centred)",
            "",
            "| patch | side | per sample, median (min-max) | reference / side |",
            "|---|---|---|---|",
        ]
        for key, size in lo["sizes"].items():
            ref = size["timings"][LOAD_REF]["median"]
            note = NNUNET_TYPICAL.get(int(key), "")
            label = f"{key}^3 ({size['samples']} samples{', ' + note if note else ''})"
            for name, t in size["timings"].items():
                lines.append(f"| {label} | {name} | {_fmt_t(t)} | {ref / t['median']:.1f}x |")
        lines += [
            "",
            "nnU-Net computes the reference tube in its dataloader on the patch it samples; its "
            "3d_fullres patches on CT vessel data are typically 128^3-160^3 (e.g. 96x160x160, 128^3, "
            "160^3), so the 128^3 and 160^3 rows are the representative ones. The recipe's cost grows "
            "with the patch volume, a store read's much less (a fixed ~1 ms per read plus the chunks "
            "the patch touches).",
            "",
        ]
    if "concurrent reads" in s:
        cr = s["concurrent reads"]
        lines += [f"## Reading 3 arrays of a case at one {cr['patch']}^3 patch ({cr['samples']} samples)", ""]
        lines += ["| side | per sample, median (min-max) |", "|---|---|"]
        lines += [f"| {name} | {_fmt_t(t)} |" for name, t in cr["timings"].items()] + [""]
    if "storage" in s:
        lines += [
            "## Storage",
            "",
            "| dataset | store (du) | store (apparent) | raw voxels | mask files | "
            "store / raw | store / mask files |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, st in s["storage"].items():
            lines.append(
                f"| {name} | {_fmt_bytes(st['store_du'])} | {_fmt_bytes(st['store_apparent'])} | "
                f"{_fmt_bytes(st['raw_voxel_bytes'])} | {_fmt_bytes(st['mask_file_bytes'])} | "
                f"{100 * st['store_du'] / st['raw_voxel_bytes']:.2f} % | "
                f"{100 * st['store_du'] / st['mask_file_bytes']:.0f} % |"
            )
        lines.append("")
    if "store layouts" in s:
        lines += [
            "## Store layouts (one sparse 3D case, tube + thin)",
            "",
            "| layout | write | random patch read | bytes |",
            "|---|---|---|---|",
        ]
        for name, st in s["store layouts"].items():
            lines.append(
                f"| {name} | {_fmt_t(st['write'])} | {_fmt_t(st['patch_read'])} | {_fmt_bytes(st['bytes'])} |"
            )
        lines.append("")
    (out / "bench.md").write_text("\n".join(lines))


def write_chart(res: Results, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = res.comparisons
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(comps) + 1.5))
    labels = [f"{c['section']}: {c['what']} [{c['ours']}]" for c in comps]
    ratios = [c["ratio"] if math.isfinite(c["ratio"]) else 1.0 for c in comps]
    colors = ["tab:grey" if c["met"] is None else ("tab:green" if c["met"] else "tab:red") for c in comps]
    y = np.arange(len(comps))[::-1]
    ax.barh(y, ratios, color=colors)
    for yi, c in zip(y, comps, strict=True):
        if c["target"] is not None:
            ax.plot([c["target"]] * 2, [yi - 0.4, yi + 0.4], color="black", lw=2)
        text = f" {c['ratio']:.1f}x" if math.isfinite(c["ratio"]) else " n/a"
        ax.text(ratios[len(comps) - 1 - int(yi)], yi, text, va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1, color="grey", lw=0.8)
    ax.set_xlabel("baseline / skelprep (log); black tick = target; green met, red missed, grey no target")
    ax.set_title(f"skelprep benchmark ({res.meta['mode']})")
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def run(cfg: Config, out: Path, device: str, work: Path, sections: set[str]) -> Results:
    res = Results()
    res.meta = {
        "mode": cfg.mode,
        "reps": cfg.reps,
        "build_reps": cfg.build_reps,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": {k: v for k, v in vars(cfg).items()},
    }
    datasets = prepare_datasets(cfg, work)
    res.sections["datasets"] = {k: v.note for k, v in datasets.items()}
    arrays = {k: [read_mask(m).array for m in ds.masks] for k, ds in datasets.items()}
    skeleton_targets(np.pad(np.ones((3, 3, 3), np.uint8), 2))  # JIT/cache load outside the timings

    if "build" in sections:
        log("cluster start-up")
        res.sections["cluster"] = bench_cluster(1)
        for name, ds in datasets.items():
            log(f"build {name}")
            b = bench_build(ds, cfg, work, arrays[name])
            res.sections[f"build {name}"] = b
            t = {k: v["median"] for k, v in b["timings"].items()}
            cluster_s = t["Dask cluster start + close (2 workers, no work)"]
            target = {"vessels3d": 4.0, "real2d": 2.0}.get(name)
            res.compare(
                "build",
                name,
                "2 workers",
                "reference serial loop",
                t["skelprep build 2w"],
                t["reference serial loop"],
                target=target,
                target_text=f">= {target:g}x" if target else "",
            )
            res.compare(
                "build",
                name + " (no cluster start)",
                "2 workers - cluster start/close",
                "reference serial loop",
                max(t["skelprep build 2w"] - cluster_s, 1e-9),
                t["reference serial loop"],
            )
            res.compare(
                "build",
                name,
                "1 worker",
                "reference serial loop",
                t["skelprep build 1w"],
                t["reference serial loop"],
            )
            bound = t["I/O floor (read_mask + np.save zeros)"] + t["thinning only (serial)"]
            res.compare(
                "build",
                name + " vs floor",
                "2 workers",
                "I/O floor + thinning",
                t["skelprep build 2w"],
                bound,
                target=0.5 if name == "vessels3d" else None,
                target_text=">= 0.5x (within 2x)" if name == "vessels3d" else "",
            )
            res.sections.setdefault("storage", {})[name] = bench_storage(ds, b["store"], arrays[name])
            st = res.sections["storage"][name]
            res.compare(
                "storage",
                name,
                "store (du)",
                "raw voxel bytes",
                st["store_du"],
                st["raw_voxel_bytes"],
                unit="B",
                target=50.0,
                target_text="store <= 2 % (>= 50x)",
            )

    if "cli" in sections:
        run_cli_section(res, cfg, work, datasets)

    if "compute" in sections:
        for name in ("real2d", "vessels3d"):
            if name in datasets:
                log(f"per-case compute {name}")
                c = bench_compute(name, arrays[name], cfg.reps)
                res.sections[f"compute {name}"] = c
                t = {k: v["median"] for k, v in c["timings"].items()}
                target = 3.0 if name == "vessels3d" else None
                res.compare(
                    "compute",
                    name,
                    "skeleton_targets",
                    "reference recipe",
                    t["skelprep.skeleton_targets"],
                    t["reference recipe"],
                    target=target,
                    target_text=">= 3x" if target else "",
                )

    if "loading" in sections and "vessels3d" in datasets:
        log("loading")
        store = res.sections.get("build vessels3d", {}).get("store")
        if store is None or not Path(store).exists():
            store = str(work / "store_loading.zarr")
            build(datasets["vessels3d"].path, store, workers=1, force=True)
        lo = bench_loading(store, datasets["vessels3d"], arrays["vessels3d"], cfg)
        res.sections["loading"] = lo
        cr = bench_concurrent_reads(store, cfg.patch, cfg.patch_samples)
        res.sections["concurrent reads"] = cr
        ct = {k: v["median"] for k, v in cr["timings"].items()}
        res.compare(
            "loading",
            f"{cr['patch']}^3 patch of 3 arrays",
            "concurrent (read_regions)",
            "one after another",
            ct["3 reads concurrent (read_regions, zarr async)"],
            ct["3 reads one after another"],
        )
        for key, size in lo["sizes"].items():
            t = {k: v["median"] for k, v in size["timings"].items()}
            note = NNUNET_TYPICAL.get(int(key))
            res.compare(
                "loading",
                f"{key}^3 patch" + (f" ({note})" if note else ""),
                LOAD_READ,
                LOAD_REF,
                t[LOAD_READ],
                t[LOAD_REF],
                target=10.0,
                target_text=">= 10x",
            )

    if "loss" in sections:
        log("loss")
        lo = bench_loss(cfg, device)
        res.sections["loss"] = lo
        for key, conf in lo["configs"].items():
            t = {k: v["median"] for k, v in conf["timings"].items()}
            mem = conf["peak_bytes"]
            ours = "SkeletonRecallLoss"
            loss_extra_memory_row(res, key, conf, ours)
            if "soft-clDice 10 it" in t:
                is3d = key == "3D"
                res.compare(
                    "loss",
                    f"{key} time",
                    ours,
                    "soft-clDice 10 it",
                    t[ours],
                    t["soft-clDice 10 it"],
                    target=50.0 if is3d else None,
                    target_text="<= 2 % (>= 50x)" if is3d else "",
                )
                res.compare(
                    "loss",
                    f"{key} peak memory",
                    ours,
                    "soft-clDice 10 it",
                    mem[ours],
                    mem["soft-clDice 10 it"],
                    unit="B",
                    target=10.0 if is3d else None,
                    target_text="<= 10 % (>= 10x)" if is3d else "",
                )
            thirteen = key == "3D, 13 classes"
            res.compare(
                "loss",
                f"{key} time",
                ours,
                "one-hot recall",
                t[ours],
                t["one-hot recall (reference)"],
                target=1.0 if thirteen else None,
                target_text="faster (> 1x)" if thirteen else "",
            )
            res.compare(
                "loss",
                f"{key} peak memory",
                ours,
                "one-hot recall",
                mem[ours],
                mem["one-hot recall (reference)"],
                unit="B",
            )
            if UNFUSED in t:
                res.compare("loss", f"{key} time", ours, UNFUSED, t[ours], t[UNFUSED])
                res.compare("loss", f"{key} peak memory", ours, UNFUSED, mem[ours], mem[UNFUSED], unit="B")
            fwd = conf["peak_bytes_forward"]
            res.compare(
                "loss",
                f"{key} peak memory, forward only",
                ours,
                "one-hot recall",
                fwd[ours],
                fwd["one-hot recall (reference)"],
                unit="B",
            )

    if "layouts" in sections and cfg.store_sweep and "vessels3d" in datasets:
        log("store layouts")
        targets = skeleton_targets(arrays["vessels3d"][0])
        res.sections["store layouts"] = bench_store_layouts(
            targets.tube, targets.thin, work, cfg.reps, cfg.patch
        )

    res.meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(
        json.dumps(
            {"meta": res.meta, "comparisons": res.comparisons, "sections": res.sections},
            indent=1,
            default=str,
        )
    )
    write_report(res, out)
    write_chart(res, out)
    return res


ALL_SECTIONS = ("build", "cli", "compute", "loading", "loss", "layouts")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI-sized data (examples/ only), < 2 minutes")
    size.add_argument("--tiny", action="store_true", help="smallest configuration (the test suite's)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default results/bench[-quick])"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the loss section (cpu, cuda)")
    parser.add_argument("--reps", type=int, default=None, help="override the repetitions")
    parser.add_argument(
        "--sections", default=",".join(ALL_SECTIONS), help=f"subset of {','.join(ALL_SECTIONS)}"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for generated data and stores (default: a temporary folder; "
        "give one to reuse the generated volumes between runs)",
    )
    parser.add_argument("--loss-memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loss_memory_child is not None:
        print(json.dumps(loss_memory_child(json.loads(args.loss_memory_child))))
        return 0
    cfg = CONFIGS["tiny" if args.tiny else "quick" if args.quick else "full"]
    if args.reps is not None:
        cfg = Config(**{**vars(cfg), "reps": args.reps, "build_reps": args.reps})
    sections = set(args.sections.split(","))
    unknown = sections - set(ALL_SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    out = args.out or ROOT / "results" / ("bench" if cfg.mode == "full" else f"bench-{cfg.mode}")
    start = time.perf_counter()
    warnings.filterwarnings("ignore", category=UserWarning)
    with tempfile.TemporaryDirectory(prefix="skelprep-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        res = run(cfg, out, args.device, work, sections)
    log(f"done in {time.perf_counter() - start:.0f} s: {out / 'bench.md'}")
    missed = [c for c in res.comparisons if c["met"] is False]
    for c in missed:
        log(f"target missed: {c['section']} {c['what']} ({c['ratio']:.2f}x, target {c['target_text']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
