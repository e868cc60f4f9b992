"""Store layouts (full mode): write time, size and patch-read time of chunk / shard / codec choices."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from skelprep.skeleton import skeleton_targets

from .common import Config, Part, fmt_bytes, fmt_t, log, summary, tree_bytes


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
        out[name] = {"write": summary(writes), "patch_read": summary(reads), "bytes": tree_bytes(path)[0]}
        shutil.rmtree(path, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------


def run(cfg: Config, work: Path, arrays: dict[str, list[np.ndarray]]) -> Part:
    """The layouts on the first sparse 3D vessel case (tube + thin)."""
    log("store layouts")
    targets = skeleton_targets(arrays["vessels3d"][0])
    layouts = bench_store_layouts(targets.tube, targets.thin, work, cfg.reps, cfg.loading.patch)
    return Part(sections={"store layouts": layouts})


def report_lines(s: dict[str, Any]) -> list[str]:
    if "store layouts" not in s:
        return []
    lines = [
        "## Store layouts (one sparse 3D case, tube + thin)",
        "",
        "| layout | write | random patch read | bytes |",
        "|---|---|---|---|",
    ]
    for name, st in s["store layouts"].items():
        lines.append(
            f"| {name} | {fmt_t(st['write'])} | {fmt_t(st['patch_read'])} | {fmt_bytes(st['bytes'])} |"
        )
    return lines + [""]
