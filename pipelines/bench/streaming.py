"""Benchmark streaming training items from a store built ``--with-images``.

Usage::

    python pipelines/bench_streaming.py --quick --out results/bench-streaming-quick   # CI-sized, ~2 minutes
    python pipelines/bench_streaming.py --full --out results/bench-streaming          # CT-size (~10 minutes)
    python pipelines/bench.py --quick --sections streaming --out /tmp/b                # as a section of bench.py

Writes ``bench_streaming.md`` (a table) and ``bench_streaming.json`` (every raw
timing) to ``--out``. Every comparison runs its sides in this one process run,
interleaved repetition by repetition, so that a noisy machine hits them alike;
figures are medians, ratios are of medians.

On a generated CT-like nnU-Net dataset (:func:`synthetic.write_ct_dataset`:
int16 image ``.nii.gz``, sparse 2-class vessel mask; full mode two cases of
512x512x300, quick mode one of 256x256x128) and on the bundled OCT-A:

* **item** - one training item (image + label + tube, normalized, as tensors)
  of ``SkeletonDataset.from_store`` in this process, against the reference
  recipe computed on the same label patch, and against the whole-file path
  (``SkeletonDataset`` on a targets-only store: reads the image and mask files
  per item). Targets: item <= 0.5x the recipe, >= 50x faster than the whole-file path.
* **loader** - ``DataLoader(num_workers=2, batch_size=2)`` items per second, and
  the loader-wait fraction of CPU training steps of ``pipelines/train.py`` on
  the CT-like dataset (target <= 10 %).
* **storage** - bytes of the stored ``image`` arrays against the source
  ``.nii.gz`` bytes (target <= 1.2x).
* **build** - the time ``--with-images`` adds to a build (fresh store each
  repetition) against reading the images once with ``skelprep.io.read_image``
  (target <= 1.5x).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from synthetic import write_ct_dataset

from skelprep.build import build
from skelprep.io import read_image
from skelprep.layout import discover
from skelprep.store import array_path, open_store

from .common import EXAMPLES, HERE, Part, log, reference_recipe

MODES = {
    "tiny": {  # the test suite's smoke run (tests/test_bench_streaming.py)
        "shape": (64, 80, 48),
        "cases": 1,
        "patch": 32,
        "items": 3,
        "whole": 1,
        "batches": 2,
        "train_patch": 32,
        "train_steps": 2,
        "builds": 1,
    },
    "quick": {
        "shape": (256, 256, 128),
        "cases": 1,
        "patch": 96,
        "items": 10,
        "whole": 2,
        "batches": 6,
        "train_patch": 64,
        "train_steps": 4,
        "builds": 1,
    },
    "full": {
        "shape": (512, 512, 300),
        "cases": 2,
        "patch": 128,
        "items": 30,
        "whole": 3,
        "batches": 15,
        "train_patch": 128,
        "train_steps": 6,
        "builds": 2,
    },
}


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(path.with_name(path.name + ".lock"), ignore_errors=True)
    return path


def bench_items(dataset: Path, work: Path, patch: int, n_items: int, n_whole: int) -> dict[str, Any]:
    """Streamed item vs the recipe on its label patch vs the whole-file item, interleaved."""
    import torch

    from skelprep.torch import SkeletonDataset

    streamed_store, plain_store = work / "streamed.zarr", work / "plain.zarr"
    for store, images in ((streamed_store, True), (plain_store, False)):
        if not store.exists():
            assert build(dataset, store, workers=1, with_images=images).ok
    opened = open_store(streamed_store)
    size = min([patch] + [min(opened[c].shape) for c in opened.case_ids])  # OCT-A cases are 64^3
    streamed = SkeletonDataset.from_store(streamed_store, patch_size=size, foreground_prob=0.33)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the targets-only warning is the point here
        whole = SkeletonDataset(dataset, plain_store, patch_size=size, foreground_prob=0.33)
    torch.manual_seed(0)
    for i in range(len(streamed)):  # open every case once (per-process state), as a worker would
        streamed[i]
    times: dict[str, list[float]] = {"item": [], "recipe": [], "whole-file item": []}
    for rep in range(n_items):
        index = rep % len(streamed)
        start = time.perf_counter()
        item = streamed[index]
        times["item"].append(time.perf_counter() - start)
        label = item["label"][0].numpy().astype(np.uint8)
        start = time.perf_counter()
        reference_recipe(label)
        times["recipe"].append(time.perf_counter() - start)
        if rep < n_whole:
            start = time.perf_counter()
            whole[index]
            times["whole-file item"].append(time.perf_counter() - start)
    med = {k: _median(v) for k, v in times.items()}
    return {
        "patch": size,
        "seconds": times,
        "median": med,
        "item / recipe": med["item"] / med["recipe"],
        "whole-file / item": med["whole-file item"] / med["item"],
    }


def bench_loader(store: Path, patch: int, n_batches: int) -> dict[str, Any]:
    """Items per second through DataLoader(num_workers=2, batch_size=2)."""
    from torch.utils.data import DataLoader, RandomSampler

    from skelprep.torch import SkeletonDataset

    ds = SkeletonDataset.from_store(store, patch_size=patch)
    loader = DataLoader(
        ds,
        batch_size=2,
        num_workers=2,
        sampler=RandomSampler(ds, replacement=True, num_samples=2 * (n_batches + 2)),
    )
    it = iter(loader)
    next(it), next(it)  # worker start-up and first opens are not throughput
    start = time.perf_counter()
    n = 0
    for batch in it:
        n += batch["image"].shape[0]
    seconds = time.perf_counter() - start
    return {"items": n, "seconds": seconds, "items_per_second": n / seconds}


def bench_train(dataset: Path, store: Path, out: Path, patch: int, steps: int) -> dict[str, Any]:
    """Loader-wait fraction of CPU training steps of pipelines/train.py (no validation)."""
    spec = importlib.util.spec_from_file_location("skelprep_train_pipeline", HERE / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    args = [
        str(dataset),
        "--store",
        str(store),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--steps-per-epoch",
        str(steps),
        "--patch-size",
        str(patch),
        "--batch-size",
        "2",
        "--num-workers",
        "2",
        "--val-fraction",
        "0",
        "--device",
        "cpu",
        "--no-progress",
        "--no-build",
    ]
    summary = train.main(args)
    steps_ = summary["steps"][1:]  # the first step also waits for the workers to start
    wait = sum(s["wait_seconds"] for s in steps_)
    compute = sum(s["compute_seconds"] for s in steps_)
    return {
        "patch": patch,
        "steps": len(steps_),
        "mean_wait_seconds": wait / max(len(steps_), 1),
        "mean_compute_seconds": compute / max(len(steps_), 1),
        "loader_wait_fraction": wait / (wait + compute),
        "first_step_wait_seconds": summary["steps"][0]["wait_seconds"],
    }


def bench_storage(dataset: Path, store: Path) -> dict[str, Any]:
    layout = discover(dataset)
    opened = open_store(store)
    source = sum(p.stat().st_size for c in layout.cases for p in c.images)
    stored = sum(
        p.stat().st_size
        for c in layout.cases
        for p in (store / c.case_id / array_path(opened.case_attrs(c.case_id) or {}, "image")).rglob("*")
        if p.is_file()
    )
    return {"source_bytes": source, "image_bytes": stored, "ratio": stored / source}


def bench_build(dataset: Path, work: Path, reps: int) -> dict[str, Any]:
    """Build without and with images (fresh stores) and reading the images once, interleaved."""
    layout = discover(dataset)
    times: dict[str, list[float]] = {"build": [], "build --with-images": [], "read images": []}
    for _ in range(reps):
        for name, images in (("build", False), ("build --with-images", True)):
            store = _fresh(work / "build.zarr")
            start = time.perf_counter()
            assert build(dataset, store, workers=1, with_images=images).ok
            times[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        for case in layout.cases:
            for path in case.images:
                read_image(path)
        times["read images"].append(time.perf_counter() - start)
    med = {k: _median(v) for k, v in times.items()}
    added = med["build --with-images"] - med["build"]
    return {
        "seconds": times,
        "median": med,
        "added_seconds": added,
        "added / read": added / med["read images"],
    }


def run(mode: str, out: Path, data: Path | None) -> dict[str, Any]:
    cfg = MODES[mode]
    work = Path(tempfile.mkdtemp(prefix="skelprep-bench-streaming-"))
    try:
        ct = write_ct_dataset(data or work / "ct", n_cases=cfg["cases"], shape=cfg["shape"])
        octa = work / "octa3d"
        shutil.copytree(EXAMPLES / "octa3d", octa, ignore=shutil.ignore_patterns("skeletons.zarr*"))
        results: dict[str, Any] = {
            "mode": mode,
            "config": cfg,
            "machine": platform.platform(),
            "cpus": _cpus(),
        }
        for name, dataset in (("ct", ct), ("octa", octa)):
            (work / name).mkdir(exist_ok=True)
            results[name] = {
                "items": bench_items(dataset, work / name, cfg["patch"], cfg["items"], cfg["whole"])
            }
            store = work / name / "streamed.zarr"
            results[name]["storage"] = bench_storage(dataset, store)
            results[name]["loader"] = bench_loader(store, results[name]["items"]["patch"], cfg["batches"])
        results["ct"]["train"] = bench_train(
            ct, work / "ct" / "streamed.zarr", work / "run", cfg["train_patch"], cfg["train_steps"]
        )
        results["ct"]["build"] = bench_build(ct, work / "ct", cfg["builds"])
        results["octa"]["build"] = bench_build(octa, work / "octa", cfg["builds"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_streaming.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench_streaming.md").write_text(markdown(results))
    return results


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def markdown(r: dict[str, Any]) -> str:
    cfg = r["config"]
    ct, octa = r["ct"], r["octa"]
    shape = "×".join(map(str, cfg["shape"]))
    rows = [
        "| comparison | skelprep | baseline | ratio (target) |",
        "|---|---|---|---|",
    ]
    for label, d in ((f"CT-like {shape} int16", ct), ("OCT-A 64³", octa)):
        it = d["items"]
        p = it["patch"]
        rows.append(
            f"| one {p}³ item (image+label+tube, normalized), {label} | {it['median']['item'] * 1e3:.1f} ms | "
            f"reference recipe on the label patch {it['median']['recipe'] * 1e3:.1f} ms | "
            f"**{it['item / recipe']:.2f}×** (≤ 0.5×) |"
        )
        rows.append(
            f"| same item vs the whole-file path of a targets-only store, {label} | {it['median']['item'] * 1e3:.1f} ms | "
            f"{it['median']['whole-file item'] * 1e3:.0f} ms | **{it['whole-file / item']:.0f}× faster** (≥ 50×) |"
        )
    for label, d in ((f"CT-like {shape}", ct), ("OCT-A", octa)):
        rows.append(
            f"| DataLoader(num_workers=2) items/s, {label}, {d['items']['patch']}³ | "
            f"{d['loader']['items_per_second']:.1f} items/s | | |"
        )
    t = ct["train"]
    rows.append(
        f"| loader wait of a CPU train step (train.py, {t['patch']}³, batch 2), CT-like | "
        f"{t['mean_wait_seconds'] * 1e3:.0f} ms wait | {t['mean_compute_seconds'] * 1e3:.0f} ms compute | "
        f"**{t['loader_wait_fraction']:.1%}** (≤ 10 %) |"
    )
    for label, d in ((f"CT-like {shape}", ct), ("OCT-A", octa)):
        s = d["storage"]
        rows.append(
            f"| stored image bytes, {label} | {s['image_bytes'] / 2**20:.1f} MiB | "
            f"source .nii.gz {s['source_bytes'] / 2**20:.1f} MiB | **{s['ratio']:.2f}×** (≤ 1.2×) |"
        )
    for label, d in ((f"CT-like {shape}", ct), ("OCT-A", octa)):
        b = d["build"]
        rows.append(
            f"| time --with-images adds to a build, {label} | {b['added_seconds']:.2f} s "
            f"({b['median']['build']:.2f} → {b['median']['build --with-images']:.2f} s) | "
            f"reading the images once {b['median']['read images']:.2f} s | **{b['added / read']:.2f}×** (≤ 1.5×) |"
        )
    head = (
        f"# Streaming benchmark ({r['mode']} mode)\n\n{r['machine']}, {r['cpus']} CPUs. Medians of interleaved "
        f"repetitions in one run ({cfg['items']} items, {cfg['whole']} whole-file items, {cfg['builds']} builds "
        "per side).\n\n"
    )
    return head + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test suite's smoke run
    size.add_argument("--quick", action="store_true", help="CI-sized: one 256x256x128 case, 96^3 items")
    size.add_argument(
        "--full", action="store_true", help="two 512x512x300 CT-like cases, 128^3 items (default)"
    )
    parser.add_argument("--out", type=Path, default=Path("results/bench-streaming"))
    parser.add_argument("--data", type=Path, help="folder for the generated CT-like dataset (kept; reused)")
    args = parser.parse_args(argv)
    results = run("tiny" if args.tiny else "quick" if args.quick else "full", args.out, args.data)
    print(markdown(results))
    return results


def section(mode: str, out: Path) -> Part:
    """The streaming benchmark as a section of ``bench.py`` (writes its own files to ``out`` too)."""
    log("streaming")
    return Part(sections={"streaming": run(mode, out, None)})


def report_lines(s: dict[str, Any]) -> list[str]:
    if "streaming" not in s:
        return []
    return ["#" + markdown(s["streaming"])]  # its title one level down
