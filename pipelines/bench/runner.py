"""The benchmark's runner: parse the flags, prepare the data, run the chosen sections, write the outputs."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from skelprep.io import read_mask
from skelprep.skeleton import skeleton_targets

from . import build, cli_build, compute, engines, layouts, loading, loss, streaming, topology
from .common import CONFIGS, ROOT, Config, log, prepare_datasets
from .report import Results, write_all

# the default sections; ``streaming`` and ``engines`` (their own outputs too, minutes in full mode) and
# ``topology`` (the references' per-step targets: minutes on 3D batches on a CPU) run when named
ALL_SECTIONS = ("build", "cli", "compute", "loading", "loss", "layouts")
OPTIONAL_SECTIONS = ("streaming", "engines", "topology")


def run(cfg: Config, out: Path, device: str, work: Path, sections: set[str]) -> Results:
    res = Results()
    res.meta = {
        "mode": cfg.mode,
        "reps": cfg.reps,
        "build_reps": cfg.build.reps,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": cfg.as_dict(),
    }
    datasets = prepare_datasets(cfg.build, work)
    res.sections["datasets"] = {k: v.note for k, v in datasets.items()}
    arrays = {k: [read_mask(m).array for m in ds.masks] for k, ds in datasets.items()}
    skeleton_targets(np.pad(np.ones((3, 3, 3), np.uint8), 2))  # JIT/cache load outside the timings

    if "build" in sections:
        res.add(build.run(cfg, work, datasets, arrays))
    if "cli" in sections:
        res.add(cli_build.run(cfg, work, datasets))
    if "compute" in sections:
        res.add(compute.run(cfg, arrays))
    if "loading" in sections and "vessels3d" in datasets:
        store = res.sections.get("build vessels3d", {}).get("store")
        res.add(loading.run(cfg, work, datasets["vessels3d"], arrays["vessels3d"], store))
    if "loss" in sections:
        res.add(loss.run(cfg, device))
    if "layouts" in sections and cfg.store_sweep and "vessels3d" in datasets:
        res.add(layouts.run(cfg, work, arrays))
    if "streaming" in sections:
        res.add(streaming.section(cfg.mode, out))
    if "engines" in sections:
        res.add(engines.section(cfg.mode, out))
    if "topology" in sections:
        res.add(topology.run(cfg, device))

    res.meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_all(res, out)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark skelprep against the reference Skeleton Recall recipe."
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI-sized data (examples/ only), < 2 minutes")
    size.add_argument("--tiny", action="store_true", help="smallest configuration (the test suite's)")
    size.add_argument("--full", action="store_true", help="the full configuration (the default; minutes)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default results/bench[-quick])"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the loss section (cpu, cuda)")
    parser.add_argument("--reps", type=int, default=None, help="override the repetitions")
    known = ALL_SECTIONS + OPTIONAL_SECTIONS
    parser.add_argument("--sections", default=",".join(ALL_SECTIONS), help=f"subset of {','.join(known)}")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for generated data and stores (default: a temporary folder; "
        "give one to reuse the generated volumes between runs)",
    )
    parser.add_argument("--loss-memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--topology-memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loss_memory_child is not None:
        print(json.dumps(loss.loss_memory_child(json.loads(args.loss_memory_child))))
        return 0
    if args.topology_memory_child is not None:
        print(json.dumps(topology.memory_child(json.loads(args.topology_memory_child))))
        return 0
    cfg = CONFIGS["tiny" if args.tiny else "quick" if args.quick else "full"]
    if args.reps is not None:
        cfg = replace(cfg, reps=args.reps, build=replace(cfg.build, reps=args.reps))
    sections = set(args.sections.split(","))
    unknown = sections - set(known)
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
    for c in res.comparisons:
        if c.met is False:
            log(f"target missed: {c.section} {c.what} ({c.ratio:.2f}x, target {c.target_text})")
    return 0
