"""Build: ``skelprep.build.build`` (1 and 2 workers) against a serial loop of the reference recipe.

Also the I/O floor (``read_mask`` + ``np.save`` of zeros), the serial thinning (the public
``skeletonize_mask``, as the build runs it: scikit-image's thinning plus the check that
every component keeps a skeleton, about 2.2x the bare thinning on the quick vessels) and the
Dask cluster's start-up, measured on its own with a probe of the numba state inside a
worker. Each dataset's store then gives the storage rows (:mod:`bench.storage`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from skelprep.build import build
from skelprep.io import read_mask
from skelprep.skeleton import skeletonize_mask

from . import storage
from .common import (
    Comparison,
    Config,
    Dataset,
    Part,
    fmt_t,
    interleaved,
    log,
    medians,
    reference_recipe,
    sides_table,
    summary,
)

CLUSTER_ONLY = "Dask cluster start + close (2 workers, no work)"
IO_FLOOR = "I/O floor (read_mask + np.save zeros)"
# dataset -> minimum ratio (reference loop / skelprep build 2w)
TARGETS = {"vessels3d": 4.0, "real2d": 2.0}


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
    hits = misses = 0
    for value in vars(_thinning).values():
        s = getattr(value, "stats", None)
        if s is not None and hasattr(s, "cache_hits"):
            hits += sum(s.cache_hits.values())
            misses += sum(s.cache_misses.values())
    return {
        "import_s": imported,
        "first_call_s": first,
        "second_call_s": second,
        "cache_path": _thinning._thin_flat.stats.cache_path,
        "cache_hits": hits,
        "cache_misses": misses,
        "pid": os.getpid(),
    }


def start_cluster() -> tuple[Any, Any]:
    """(cluster, client): the 2-process LocalCluster that ``build(workers=2)`` starts."""
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        memory_limit=0,
        silence_logs=logging.ERROR,
    )
    return cluster, Client(cluster)


def bench_cluster(reps: int) -> dict[str, Any]:
    """Start-up and shut-down of the 2-process LocalCluster that ``build`` creates, and a worker probe."""
    starts, closes, probes = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        cluster, client = start_cluster()
        starts.append(time.perf_counter() - t0)
        probes.append(list(client.run(_cluster_probe).values()))
        t1 = time.perf_counter()
        client.close()
        cluster.close()
        closes.append(time.perf_counter() - t1)
    return {"start": summary(starts), "close": summary(closes), "worker_probe": probes}


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
            skeletonize_mask(labels > 0)

    def run_build(workers: int) -> None:
        report = build(ds.path, stores[workers], workers=workers, force=True)
        if not report.ok:
            raise RuntimeError(f"build failed: {report.as_dict()['failed']}")

    def cluster_only() -> None:
        # what build(workers=2) starts and stops, without work: its fixed cost
        cluster, client = start_cluster()
        client.close()
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
        IO_FLOOR: io_floor,
        "read only": read_only,
        "thinning only (serial)": thinning,
        "skelprep build 1w": lambda: run_build(1),
        "skelprep build 2w": lambda: run_build(2),
        CLUSTER_ONLY: cluster_only,
    }
    timings = interleaved(sides, cfg.build.reps, setup)
    shutil.rmtree(npy_out, ignore_errors=True)
    return {"timings": timings, "store": str(stores[2]), "cases": len(ds.masks)}


# --------------------------------------------------------------------------------------------


def comparisons(name: str, b: dict[str, Any]) -> list[Comparison]:
    """The summary rows of one dataset's :func:`bench_build`."""
    t = medians(b["timings"])
    target = TARGETS.get(name)
    floor = t[IO_FLOOR] + t["thinning only (serial)"]
    on_vessels = name == "vessels3d"
    return [
        Comparison(
            section="build",
            what=name,
            ours="2 workers",
            baseline="reference serial loop",
            ours_value=t["skelprep build 2w"],
            baseline_value=t["reference serial loop"],
            target=target,
            target_text=f">= {target:g}x" if target else "",
        ),
        Comparison(
            section="build",
            what=name + " (no cluster start)",
            ours="2 workers - cluster start/close",
            baseline="reference serial loop",
            ours_value=max(t["skelprep build 2w"] - t[CLUSTER_ONLY], 1e-9),
            baseline_value=t["reference serial loop"],
        ),
        Comparison(
            section="build",
            what=name,
            ours="1 worker",
            baseline="reference serial loop",
            ours_value=t["skelprep build 1w"],
            baseline_value=t["reference serial loop"],
        ),
        Comparison(
            section="build",
            what=name + " vs floor",
            ours="2 workers",
            baseline="I/O floor + thinning",
            ours_value=t["skelprep build 2w"],
            baseline_value=floor,
            target=0.5 if on_vessels else None,
            target_text=">= 0.5x (within 2x)" if on_vessels else "",
        ),
    ]


def run(cfg: Config, work: Path, datasets: dict[str, Dataset], arrays: dict[str, list[np.ndarray]]) -> Part:
    """Cluster start-up, then per dataset the build sides and the storage of its 2-worker store."""
    part = Part()
    log("cluster start-up")
    part.sections["cluster"] = bench_cluster(1)
    for name, ds in datasets.items():
        log(f"build {name}")
        b = bench_build(ds, cfg, work, arrays[name])
        part.sections[f"build {name}"] = b
        part.comparisons += comparisons(name, b)
        st = storage.measure(ds, b["store"], arrays[name])
        part.sections.setdefault("storage", {})[name] = st
        part.comparisons.append(storage.comparison(name, st))
    return part


def report_lines(s: dict[str, Any]) -> list[str]:
    """bench.md: the cluster probe and one table per build dataset."""
    lines: list[str] = []
    if "cluster" in s:
        c = s["cluster"]
        lines += [
            "## Dask cluster (2 worker processes)",
            "",
            f"One start (LocalCluster + Client): {fmt_t(c['start'])}; close: {fmt_t(c['close'])}. "
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
        lines += [f"## {key.capitalize()} ({b['cases']} cases)", ""] + sides_table(b["timings"])
    return lines
