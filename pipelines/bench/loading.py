"""Loading: a precomputed tube patch read from the store against the recipe on the label patch.

Per training sample, at each patch edge of the mode (full mode 96^3, 128^3, 160^3:
nnU-Net's 3d_fullres patches on CT vessel data are typically 128^3-160^3); also the
same read through ``get_basic_selection``, a 1-voxel read (zarr's fixed cost per read)
and three arrays of a case read one after another, concurrently and in threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from skelprep.build import build
from skelprep.skeleton import skeleton_targets

from .common import (
    Comparison,
    Config,
    Dataset,
    Part,
    fmt_t,
    log,
    medians,
    reference_recipe,
    sides_table,
    summary,
)

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
    sizes = cfg.loading.patch_sizes or (cfg.loading.patch,)
    out: dict[str, Any] = {"sizes": {}, "chunks": None, "shards": None}
    first = cases[ids[0]].tube
    out["chunks"], out["shards"] = list(first.chunks), list(first.shards or first.chunks)
    for p in sizes:
        samples = []
        for k in range(cfg.loading.samples):
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
            "timings": {k: summary(v) for k, v in times.items()},
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
    return {"patch": patch, "samples": samples, "timings": {k: summary(v) for k, v in times.items()}}


# --------------------------------------------------------------------------------------------


def run(cfg: Config, work: Path, ds: Dataset, arrays: list[np.ndarray], store: str | None) -> Part:
    """Both loading comparisons on the vessel dataset's store (built here when the build section did not)."""
    log("loading")
    if store is None or not Path(store).exists():
        store = str(work / "store_loading.zarr")
        build(ds.path, store, workers=1, force=True)
    part = Part()
    lo = part.sections["loading"] = bench_loading(store, ds, arrays, cfg)
    cr = part.sections["concurrent reads"] = bench_concurrent_reads(
        store, cfg.loading.patch, cfg.loading.samples
    )
    ct = medians(cr["timings"])
    part.comparisons.append(
        Comparison(
            section="loading",
            what=f"{cr['patch']}^3 patch of 3 arrays",
            ours="concurrent (read_regions)",
            baseline="one after another",
            ours_value=ct["3 reads concurrent (read_regions, zarr async)"],
            baseline_value=ct["3 reads one after another"],
        )
    )
    for key, size in lo["sizes"].items():
        t = medians(size["timings"])
        note = NNUNET_TYPICAL.get(int(key))
        part.comparisons.append(
            Comparison(
                section="loading",
                what=f"{key}^3 patch" + (f" ({note})" if note else ""),
                ours=LOAD_READ,
                baseline=LOAD_REF,
                ours_value=t[LOAD_READ],
                baseline_value=t[LOAD_REF],
                target=10.0,
                target_text=">= 10x",
            )
        )
    return part


def report_lines(s: dict[str, Any]) -> list[str]:
    lines: list[str] = []
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
                lines.append(f"| {label} | {name} | {fmt_t(t)} | {ref / t['median']:.1f}x |")
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
        lines += sides_table(cr["timings"], "per sample, median (min-max)")
    return lines
