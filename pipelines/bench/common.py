"""What every comparison shares: paths, the mode's sizes, timing, result records, the recipe, datasets.

Contract: timings are wall-clock seconds from :func:`time.perf_counter`; every
comparison times its sides in one process run, interleaved repetition by
repetition (:func:`interleaved`), and a :class:`Comparison` holds a ratio of
medians, baseline / skelprep (> 1: skelprep better).
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from synthetic import write_vessel_dataset

from skelprep.io import read_mask
from skelprep.layout import discover

HERE = Path(__file__).resolve().parent.parent  # pipelines/
ROOT = HERE.parent

SHARED = ROOT.parent / "shared" / "data"
EXAMPLES = ROOT / "examples"
SCRIPT = HERE / "bench.py"  # the entry point, also run as the loss-memory subprocess


# --------------------------------------------------------------------------------------------
# Configuration: one small record per comparison, gathered per mode
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildSizes:
    """The build datasets and how often a build is repeated."""

    reps: int
    vessel_shape: tuple[int, int, int]
    vessel_cases: int
    use_shared: bool
    datasets: tuple[str, ...]  # which build datasets to run


@dataclass(frozen=True)
class LossSizes:
    """Batches of the loss comparison."""

    batch_2d: tuple[int, int, int, int]  # B, C, H, W
    batch_3d: tuple[int, int, int, int, int]  # B, C, D, H, W
    batch_13: tuple[int, int, int, int, int]
    budget_s: float  # stop repeating a loss once it has used this much time (soft-clDice on CPU is slow)
    reps: int  # the recall losses take milliseconds, where a busy machine's noise is large


@dataclass(frozen=True)
class LoadingSizes:
    """Patches of the loading comparison."""

    patch: int
    samples: int
    # patch edges compared (default: ``patch`` only). nnU-Net's 3d_fullres patches on CT
    # vessel data are typically 128^3 to 160^3 (e.g. 96x160x160, 128^3, 160^3).
    patch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Config:
    """Sizes and repetitions of one benchmark mode."""

    mode: str
    reps: int  # repetitions of each timed comparison
    build: BuildSizes
    loss: LossSizes
    loading: LoadingSizes
    store_sweep: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CONFIGS = {
    "tiny": Config(
        mode="tiny",
        reps=1,
        build=BuildSizes(
            reps=1, vessel_shape=(48, 64, 64), vessel_cases=2, use_shared=False, datasets=("vessels3d",)
        ),
        loss=LossSizes(
            batch_2d=(2, 3, 64, 64),
            batch_3d=(1, 3, 24, 24, 24),
            batch_13=(1, 13, 24, 24, 24),
            budget_s=0.5,
            reps=2,
        ),
        loading=LoadingSizes(patch=32, samples=3),
        store_sweep=False,
    ),
    "quick": Config(
        mode="quick",
        reps=3,
        build=BuildSizes(
            reps=2,
            vessel_shape=(96, 192, 192),
            vessel_cases=2,
            use_shared=False,
            datasets=("real2d", "octa3d", "vessels3d"),
        ),
        loss=LossSizes(
            batch_2d=(2, 4, 96, 96),
            batch_3d=(1, 3, 32, 32, 32),
            batch_13=(2, 13, 64, 64, 64),
            budget_s=2.0,
            reps=10,
        ),
        loading=LoadingSizes(patch=64, samples=12, patch_sizes=(64, 96)),
        store_sweep=False,
    ),
    # soft-clDice with 10 iterations takes ~10 s per step on 2x3x64^3 on 2 CPU cores: the
    # soft-clDice batches stay at that size, the 13-class batch (recall losses only) is larger.
    "full": Config(
        mode="full",
        reps=5,
        build=BuildSizes(
            reps=3,
            vessel_shape=(256, 512, 512),
            vessel_cases=4,
            use_shared=True,
            datasets=("real2d", "octa3d", "vessels3d"),
        ),
        loss=LossSizes(
            batch_2d=(4, 4, 256, 256),
            batch_3d=(2, 3, 64, 64, 64),
            batch_13=(2, 13, 96, 96, 96),
            budget_s=25.0,
            reps=15,
        ),
        loading=LoadingSizes(patch=96, samples=30, patch_sizes=(96, 128, 160)),
        store_sweep=True,
    ),
}


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------
def summary(times: Sequence[float]) -> dict[str, Any]:
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
    return {name: summary(t) for name, t in times.items()}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Comparison:
    """One row of the summary: ratio = baseline / ours (> 1: skelprep better), and whether it meets ``target``."""

    section: str
    what: str
    ours: str
    baseline: str
    ours_value: float
    baseline_value: float
    unit: str = "s"
    target: float | None = None
    target_text: str = ""

    @property
    def ratio(self) -> float:
        # a zero (e.g. no measurable memory on a tiny batch) gives no ratio
        if self.ours_value > 0 and self.baseline_value > 0:
            return self.baseline_value / self.ours_value
        return math.nan

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        return None if self.target is None or math.isnan(ratio) else bool(ratio >= self.target)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


@dataclass
class Part:
    """What one section measured: its raw data (``bench.json`` sections) and its summary rows."""

    sections: dict[str, Any] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)


def medians(timings: dict[str, dict[str, Any]]) -> dict[str, float]:
    """side -> median seconds of an :func:`interleaved` result."""
    return {name: t["median"] for name, t in timings.items()}


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
@dataclass(frozen=True)
class Dataset:
    """A build dataset: its folder, its mask files and a line for the report."""

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


def prepare_datasets(sizes: BuildSizes, work: Path) -> dict[str, Dataset]:
    """The build datasets: real 2D masks, the 3D OCT-A cases and generated sparse 3D vessels."""
    out: dict[str, Dataset] = {}
    if "real2d" in sizes.datasets:
        chase_shared = SHARED / "real" / "chase_db1"
        cracks_shared = SHARED / "nnunet" / "Dataset001_RoadCracks" / "labelsTr"
        if sizes.use_shared and chase_shared.is_dir() and cracks_shared.is_dir():
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
            name="real2d",
            path=folder,
            masks=sorted((folder / "labels").glob("*.png")),
            note=f"CHASE_DB1 vessels ({len(chase)}) + road cracks, 4 classes ({len(cracks)}); {note}",
        )
    if "octa3d" in sizes.datasets:
        folder = work / "octa3d"
        if not folder.exists():
            shutil.copytree(
                EXAMPLES / "octa3d", folder, ignore=shutil.ignore_patterns("skeletons.zarr*", "imagesTr")
            )
        masks = sorted((folder / "labelsTr").glob("*.nii.gz"))
        out["octa3d"] = Dataset(
            name="octa3d",
            path=folder,
            masks=masks,
            note=f"tUbeNet OCT-A, {len(masks)} cases of 64^3 (examples)",
        )
    if "vessels3d" in sizes.datasets:
        shape = sizes.vessel_shape
        folder = work / f"vessels3d_{'x'.join(map(str, shape))}"
        log(f"generating {sizes.vessel_cases} sparse vessel volumes of {shape} (once)")
        write_vessel_dataset(folder, n_cases=sizes.vessel_cases, shape=shape)
        masks = sorted((folder / "labels").glob("*.nii.gz"))
        fraction = statistics.mean(float((read_mask(m).array > 0).mean()) for m in masks)
        out["vessels3d"] = Dataset(
            name="vessels3d",
            path=folder,
            masks=masks,
            note=f"generated vessel trees, {len(masks)} x {'x'.join(map(str, shape))}, 3 classes, "
            f"{100 * fraction:.2f} % foreground",
        )
    for ds in out.values():
        discover(ds.path)  # fail early on a layout problem
    return out


# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Formatting and sizes on disk
# --------------------------------------------------------------------------------------------
def fmt_t(s: dict[str, Any]) -> str:
    def f(x: float) -> str:
        return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"

    return f"{f(s['median'])} ({f(s['min'])}-{f(s['max'])})"


def sides_table(timings: dict[str, dict[str, Any]], column: str = "wall time") -> list[str]:
    """bench.md rows of an :func:`interleaved` result: one line per side, then a blank line."""
    return (
        [f"| side | {column} |", "|---|---|"]
        + [f"| {name} | {fmt_t(t)} |" for name, t in timings.items()]
        + [""]
    )


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def loss_rows(configs: dict[str, Any], memory: Sequence[str]) -> list[str]:
    """Table rows of loss timings: batch, loss, time (n), then each ``memory`` key's peak bytes."""
    rows = []
    for key, conf in configs.items():
        for name, t in conf["timings"].items():
            cells = [f"{key} {tuple(conf['shape'])}", name, f"{fmt_t(t)} ({len(t['times'])})"]
            cells += [fmt_bytes(conf[m][name]) for m in memory]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def tree_bytes(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes as du counts them) of a folder."""
    apparent = allocated = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated
