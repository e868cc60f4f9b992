"""Whole CLI builds: wall clock including process start, against a serial reference loop.

Every side is a new process, as a user runs it: the reference loop (nibabel/PIL read,
recipe, ``np.save``), ``skelprep build --workers 1`` and ``2`` (fresh store), an
up-to-date rerun and ``skelprep --help`` (process start). Phases come from
``skelprep build --json``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from synthetic import write_crop_dataset, write_vessel_dataset

from .common import (
    EXAMPLES,
    HERE,
    SHARED,
    Comparison,
    Config,
    Dataset,
    Part,
    interleaved,
    log,
    medians,
    sides_table,
)

CLI_SIZES = {
    "tiny": {"sparse3d": [((48, 64, 64), 2)], "crops": 6},
    "quick": {"sparse3d": [((96, 192, 192), 2)], "crops": 48},
    "full": {"sparse3d": [((256, 512, 512), 4), ((160, 320, 320), 4)], "crops": 504},
}
# dataset -> minimum ratio (reference loop / skelprep build --workers 2) the build is held to
CLI_TARGETS = {"sparse3d 256x512x512": 4.0, "sparse3d 160x320x320": 2.5, "real2d": 3.0, "crops": 3.0}
CLI_RERUN_TARGET_S = 0.5  # an up-to-date rerun over the 504 crops
CLI_BOOKKEEPING_TARGET_S = 0.002  # per case, beyond the compute and the bytes written
CLI_PHASES = ("start", "plan", "read", "core", "attrs", "encode", "store", "finalize")

REFERENCE_LOOP = """
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {here!r})
from bench.common import reference_recipe
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
    shared = SHARED / "real" / "chase_db1"
    sources = sorted(shared.glob("*.png")) or sorted((EXAMPLES / "chase_vessels" / "labels").glob("*.png"))
    folder = work / f"crops{n_cases}"
    write_crop_dataset(folder, sources, n_cases=n_cases)
    masks = sorted((folder / "labels").glob("*.png"))
    return Dataset(
        name="crops",
        path=folder,
        masks=masks,
        note=f"{n_cases} crops of 512x512 of {len(sources)} real CHASE_DB1 vessel masks",
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
    # Every run writes into a folder of its own, and all are deleted after the section: ext4
    # skips inodes deleted in the last minutes when it allocates new ones (recently_deleted, a
    # linear scan), so deleting the last run's 2500 files right before a run made each file and
    # folder creation cost 0.5-1 ms of kernel time instead of ~0.05 ms (perf: 60 % of the kernel
    # time in recently_deleted), penalizing whichever side creates more files.
    runs = work / f"cli_runs_{ds.name}"
    shutil.rmtree(runs, ignore_errors=True)
    env_masks = json.dumps([str(m) for m in ds.masks])
    phases: dict[str, list[dict[str, float]]] = {"1w": [], "2w": []}
    current = {"npy": runs / "npy", "store": runs / "store.zarr"}
    counter = iter(range(1_000_000))

    def reference() -> None:
        code = REFERENCE_LOOP.format(here=str(HERE))
        subprocess.run([sys.executable, "-c", code, env_masks, str(current["npy"])], check=True)

    def skelprep_build(workers: int) -> Callable[[], None]:
        def fn() -> None:
            args = ("build", str(ds.path), "--out", str(current["store"]), "--workers", str(workers))
            report = _run_json(_cli(*args, "--json"))
            phases[f"{workers}w"].append(report.get("phases", {}))

        return fn

    def rerun() -> None:  # over the store of the last 2-worker build
        _run_json(_cli("build", str(ds.path), "--out", str(current["store"]), "--workers", "2", "--json"))

    def start() -> None:
        subprocess.run(_cli("--help"), capture_output=True, check=True)

    def setup(name: str) -> None:
        n = next(counter)
        if name.startswith("reference"):
            current["npy"] = runs / f"npy{n}"
            current["npy"].mkdir(parents=True)
        elif name.startswith("skelprep build --workers"):
            current["store"] = runs / f"store{n}.zarr"

    sides = {
        "reference serial loop (nibabel/PIL read, recipe, np.save)": reference,
        "skelprep build --workers 1": skelprep_build(1),
        "skelprep build --workers 2": skelprep_build(2),
        "skelprep build, up-to-date rerun": rerun,  # after the 2-worker build
        "process start (skelprep --help)": start,
    }
    timings = interleaved(sides, reps, setup)
    shutil.rmtree(runs, ignore_errors=True)
    start_s = timings["process start (skelprep --help)"]["median"]
    per_phase = {}
    for key, samples in phases.items():
        names = sorted({n for r in samples for n in r})
        per_phase[key] = {n: statistics.median(r.get(n, 0.0) for r in samples) for n in names}
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


def run(cfg: Config, work: Path, datasets: dict[str, Dataset]) -> Part:
    """The CLI build comparisons on generated sparse volumes, the real 2D masks and crops."""
    sizes = CLI_SIZES[cfg.mode]
    cli_sets: dict[str, Dataset] = {}
    for shape, n_cases in sizes["sparse3d"]:
        label = "x".join(map(str, shape))
        folder = work / f"vessels3d_{label}"  # the build section's folder when the shape is the same
        write_vessel_dataset(folder, n_cases=n_cases, shape=shape)
        masks = sorted((folder / "labels").glob("*.nii.gz"))[:n_cases]
        cli_sets[f"sparse3d {label}"] = Dataset(
            name=f"sparse3d_{label}",
            path=folder,
            masks=masks,
            note=f"{n_cases} generated sparse vessel volumes of {label}",
        )
    if "real2d" in datasets:
        cli_sets["real2d"] = datasets["real2d"]
    cli_sets["crops"] = write_crop_cases(work, sizes["crops"])
    part = Part()
    part.sections["cli machine load"] = {"before": os.getloadavg(), "two_threads": parallel_capacity()}
    for name, ds in cli_sets.items():
        log(f"cli build {name}")
        b = bench_cli_build(ds, work, cfg.build.reps)
        part.sections[f"cli build {name}"] = b
        part.comparisons += comparisons(name, b)
    part.sections["cli machine load"]["after"] = os.getloadavg()
    return part


def comparisons(name: str, b: dict[str, Any]) -> list[Comparison]:
    """The targets for one dataset, from :func:`bench_cli_build`."""
    t = medians(b["timings"])
    ref = t["reference serial loop (nibabel/PIL read, recipe, np.save)"]
    target = CLI_TARGETS.get(name)

    row = partial(Comparison, section="cli build")

    rows = [
        row(
            what=name,
            ours=f"skelprep build --workers {workers}",
            baseline="reference serial loop",
            ours_value=t[f"skelprep build --workers {workers}"],
            baseline_value=ref,
            target=target if workers == 2 else None,
            target_text=f">= {target:g}x" if target and workers == 2 else "",
        )
        for workers in (2, 1)
    ]
    ph = b["phases"]["1w"]
    rows += [
        row(
            what=name + ": 2 workers vs 1",
            ours="--workers 2",
            baseline="--workers 1",
            ours_value=t["skelprep build --workers 2"],
            baseline_value=t["skelprep build --workers 1"],
            target=1.0,
            target_text="never slower (>= 1x)",
        ),
        row(
            what=name + ": writing vs core (1 worker)",
            ours="encode + store",
            baseline="core",
            ours_value=ph.get("encode", 0.0) + ph.get("store", 0.0),
            baseline_value=ph.get("core", 0.0),
            target=1.0,
            target_text="write <= core (>= 1x)",
        ),
    ]
    if name == "crops":
        n = b["cases"]
        # Bookkeeping beyond the compute and the bytes written. The single-worker wall
        # clock less the process start, the reads and the core (the compute), and encode + store
        # (the bytes written: zstd, checksums, files) leaves plan, attrs, finalize, the imports
        # and the per-case Python around them (a case waiting for numba's kernels counts in its
        # core). The stricter figure that also counts encode + store is reported beside it,
        # without a target.
        rest = t["skelprep build --workers 1"] - ph["start"] - ph.get("core", 0.0) - ph.get("read", 0.0)
        book = rest - ph.get("encode", 0.0) - ph.get("store", 0.0)
        rows += [
            row(
                what=f"crops: bookkeeping per case beyond compute and bytes written ({n} cases, 1 worker)",
                ours="skelprep",
                baseline="target",
                ours_value=max(book / n, 1e-9),
                baseline_value=CLI_BOOKKEEPING_TARGET_S,
                target=1.0,
                target_text="<= 2 ms",
            ),
            row(
                what=f"crops: all but read and core, per case, encode + store included ({n} cases, 1 worker)",
                ours="skelprep",
                baseline="2 ms",
                ours_value=max(rest / n, 1e-9),
                baseline_value=CLI_BOOKKEEPING_TARGET_S,
            ),
            row(
                what=f"crops: up-to-date rerun ({n} cases)",
                ours="skelprep build (nothing to do)",
                baseline="target",
                ours_value=t["skelprep build, up-to-date rerun"],
                baseline_value=CLI_RERUN_TARGET_S,
                target=1.0,
                target_text="<= 0.5 s",
            ),
        ]
    return rows


def report_lines(s: dict[str, Any]) -> list[str]:
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
        lines += sides_table(b["timings"])
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
