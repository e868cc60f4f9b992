"""Storage engines for patch reads, and skelprep's item against nnU-Net's own blosc2 loader.

Usage::

    python pipelines/bench_engines.py --quick --out results/bench-engines-quick   # CI-sized, ~2 minutes
    python pipelines/bench_engines.py --full --out results/bench-engines          # CT-size (minutes)
    python pipelines/bench.py --quick --sections engines --out /tmp/b              # as a section of bench.py

Writes ``bench_engines.md`` (tables) and ``bench_engines.json`` (every raw timing)
to ``--out``. Every table's sides run in this one process run, interleaved
repetition by repetition (the same random patch for every side of a repetition),
so that a busy machine hits them alike; figures are medians, ratios are ratios
of medians. Only ratios within one run mean anything: the machine is shared.

**A. Engines.** On a generated CT-like case (:func:`synthetic.write_ct_dataset`:
int16 image, sparse 2-class vessel mask; its tube from
:func:`skelprep.skeleton_targets`) and on 2D 512² fundus images (CHASE_DB1 from
``../shared/data/real/chase_db1_full`` when present, else images drawn from the
bundled CHASE masks), each array is written once per layout through the
engine's public API, then a random patch is read:

* zarr-python 3.1 (``zarr.open_array``), the same with the ``zarrs`` codec
  pipeline (``zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})``,
  when ``zarrs`` is installed) and tensorstore (``driver: zarr3``) reading the
  same zarr v3 arrays: today's layout (images Blosc-zstd 1 + shuffle, 64³ chunks
  in 256³ shards; labels and targets zstd 3, 128³ chunks in 256³ shards) and
  Blosc-LZ4 + shuffle layouts of 32³ / 48³ / 64³ / 128³ chunks with and without
  shards; every zarr layout keeps a CRC-32C per chunk;
* blosc2 NDArrays in nnU-Net 2.8's layout (``comp_blosc2_params`` for the patch
  size, LZ4HC level 5, byte shuffle, one decoding thread as nnU-Net sets it);
* a copy of the patch from memory (the floor).

Arrays are stored channel-first (labels and targets with a leading axis of 1, as
nnU-Net stores its seg); the write time (one write per layout) and the stored
bytes of each layout, against the image's ``.nii.gz``, are reported. Then one
batched read of image + label + tube per engine: tensorstore's three reads
issued as futures, zarr's as ``asyncio.gather`` over
``zarr.api.asynchronous.open_array`` arrays' ``getitem``; against the same three
reads one after another.

**B. Items.** For the CT-like case, the bundled OCT-A (64³ cases, 64³ items) and
the 2D images (512² items): nnU-Net 2.8's preprocessed case written by its own
``nnUNetDatasetBlosc2.save_case`` (float32 image normalized by nnU-Net's
normalization class, int16 seg, ``comp_blosc2_params`` of the patch), read as
its data loader reads it (``load_case``, ``crop_and_pad_nd`` of image and seg,
tensors); that read plus the reference recipe on the seg patch
(:func:`bench.common.reference_recipe`); one item of
``SkeletonDataset.from_store`` on a store built ``--with-images``; and, for the
engines of part A, an item prototype: the batched read of image + label + tube in
a candidate layout, z-score normalization, the tensors of skelprep's item (and,
"lean", in one float32 pass with the targets kept uint8), beside the same from
memory (what normalizing and casting cost without a read). Ratios:
item / nnU-Net stock read (target <= 1.0) and item / (nnU-Net read + recipe)
(target <= 0.25).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from synthetic import write_ct_dataset

from .common import EXAMPLES, SHARED, Part, log, reference_recipe, summary, tree_bytes

MODES: dict[str, dict[str, Any]] = {
    "tiny": {  # the test suite's smoke run (tests/test_bench_engines.py)
        "ct_shape": (64, 80, 48),
        "patch": 32,
        "reps": 2,
        "images_2d": 1,
        "size_2d": 96,
        "engines": (
            "zarr",
            "tensorstore",
        ),  # the smoke run skips the zarrs pipeline and the 32^3/48^3 layouts
        "all_layouts": False,
    },
    "quick": {
        "ct_shape": (256, 256, 160),
        "patch": 128,
        "reps": 7,
        "images_2d": 2,
        "size_2d": 512,
        "engines": ("zarr", "zarrs", "tensorstore"),
        "all_layouts": False,
    },
    "full": {
        "ct_shape": (512, 512, 300),
        "patch": 128,
        "reps": 15,
        "images_2d": 4,
        "size_2d": 512,
        "engines": ("zarr", "zarrs", "tensorstore"),
        "all_layouts": True,
    },
}

ZARRS_PIPELINE = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}
TODAY = "today"
CANDIDATE = "lz4 sharded"  # the image layout of the item prototypes (3D: 64³ chunks, 2D: 256²)


def _zarrs_available() -> bool:
    try:
        import zarrs  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Layouts: chunk and shard shapes of the spatial axes, and the compressor
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """One zarr v3 layout: spatial chunk edge, chunks per shard edge (None: unsharded), codec."""

    chunk: int
    per_shard: int | None
    codec: str  # "zstd1-blosc" (Blosc-zstd 1, shuffle), "lz4" (Blosc-LZ4 5, shuffle), "zstd3" (plain zstd 3)

    def text(self, ndim: int) -> str:
        edge = f"{self.chunk}{'²' if ndim == 2 else '³'}"
        shards = (
            "unsharded"
            if self.per_shard is None
            else f"in shards of {self.per_shard}{'²' if ndim == 2 else '³'} chunks"
        )
        codec = {"zstd1-blosc": "Blosc-zstd 1 shuffle", "lz4": "Blosc-LZ4 shuffle", "zstd3": "zstd 3"}[
            self.codec
        ]
        return f"{codec}, {edge} chunks {shards}"


def _layouts(kind: str, ndim: int, all_layouts: bool) -> dict[str, Layout]:
    """The layouts compared for ``kind`` ("image" or "target") of ``ndim`` spatial axes."""
    if ndim == 2:
        if kind == "image":
            return {
                TODAY: Layout(256, 8, "zstd1-blosc"),
                CANDIDATE: Layout(256, 8, "lz4"),
                "lz4 256 unsharded": Layout(256, None, "lz4"),
                "lz4 512 unsharded": Layout(512, None, "lz4"),
            }
        return {TODAY: Layout(256, 8, "zstd3"), "lz4 256 sharded": Layout(256, 8, "lz4")}
    if kind == "image":
        out = {
            TODAY: Layout(64, 4, "zstd1-blosc"),
            CANDIDATE: Layout(64, 4, "lz4"),
            "lz4 64 unsharded": Layout(64, None, "lz4"),
        }
        if all_layouts:
            out |= {
                "lz4 32 sharded": Layout(32, 8, "lz4"),
                "lz4 32 unsharded": Layout(32, None, "lz4"),
                "lz4 48 sharded": Layout(48, 5, "lz4"),
                "lz4 48 unsharded": Layout(48, None, "lz4"),
            }
        return out
    out = {TODAY: Layout(128, 2, "zstd3"), "lz4 64 sharded": Layout(64, 4, "lz4")}
    if all_layouts:
        out |= {"zstd3 64 sharded": Layout(64, 4, "zstd3"), "lz4 128 sharded": Layout(128, 2, "lz4")}
    return out


def _chunks_shards(layout: Layout, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(chunks, shards) of a channel-first array: one channel per chunk, edges clipped to the array."""
    spatial = shape[1:]
    chunks = tuple(min(layout.chunk, n) for n in spatial)
    if layout.per_shard is None:
        return (1, *chunks), None
    shards = tuple(c * min(layout.per_shard, math.ceil(n / c)) for c, n in zip(chunks, spatial, strict=True))
    return (1, *chunks), (1, *shards)


def _compressors(layout: Layout, itemsize: int) -> list[Any]:
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    if layout.codec == "zstd3":
        codec = ZstdCodec(level=3)
    else:
        cname, clevel = ("zstd", 1) if layout.codec == "zstd1-blosc" else ("lz4", 5)
        codec = BloscCodec(cname=cname, clevel=clevel, shuffle="shuffle", typesize=itemsize)
    return [codec, Crc32cCodec()]


def write_zarr(path: Path, data: np.ndarray, layout: Layout, pipeline: dict[str, str] | None = None) -> float:
    """Write ``data`` as one zarr v3 array with zarr-python's public API; the seconds it took."""
    import zarr

    shutil.rmtree(path, ignore_errors=True)
    chunks, shards = _chunks_shards(layout, data.shape)
    start = time.perf_counter()
    with zarr.config.set(pipeline or {}):
        array = zarr.create_array(
            store=str(path),
            shape=data.shape,
            dtype=data.dtype,
            chunks=chunks,
            shards=shards,
            compressors=_compressors(layout, data.dtype.itemsize),
            fill_value=0,
        )
        array[...] = data
    return time.perf_counter() - start


def write_tensorstore(path: Path, data: np.ndarray, metadata: dict[str, Any]) -> float:
    """Write ``data`` with tensorstore in the layout of a zarr v3 ``zarr.json`` document; the seconds it took."""
    import tensorstore as ts

    keys = ("shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value", "codecs")
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    array = ts.open(
        {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": str(path)},
            "metadata": {k: metadata[k] for k in keys if k in metadata},
        },
        create=True,
        delete_existing=True,
    ).result()
    array.write(data).result()
    return time.perf_counter() - start


def write_blosc2(path: Path, data: np.ndarray, patch: tuple[int, ...]) -> tuple[float, tuple, tuple]:
    """Write ``data`` (channel-first) as a blosc2 NDArray in nnU-Net 2.8's layout: (seconds, chunks, blocks).

    Chunks and blocks from nnU-Net's ``comp_blosc2_params`` for the patch, LZ4HC
    level 5, byte shuffle: what ``nnUNetDatasetBlosc2.save_case`` writes for an
    image whose shuffle trial compresses better (CT intensities do; on uint8 the
    shuffle is a no-op, so its trial's choice does not matter).
    """
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

    data = _as_nnunet_4d(data)
    blocks, chunks = comp_blosc2_params(data.shape, patch, data.dtype.itemsize)
    path.unlink(missing_ok=True)
    start = time.perf_counter()
    cparams = {"codec": blosc2.Codec.LZ4HC, "clevel": 5, "filters": [blosc2.Filter.SHUFFLE], "nthreads": 4}
    blosc2.asarray(
        np.ascontiguousarray(data), urlpath=str(path), chunks=chunks, blocks=blocks, cparams=cparams
    )
    return time.perf_counter() - start, chunks, blocks


def _as_nnunet_4d(data: np.ndarray) -> np.ndarray:
    """nnU-Net's (c, x, y, z) view: a 2D image (c, y, x) gets a singleton first spatial axis."""
    return data[:, np.newaxis] if data.ndim == 3 else data


# --------------------------------------------------------------------------------------------
# Readers: one opened array per engine and layout, read with a selection of the channel-first array
# --------------------------------------------------------------------------------------------
def open_zarr(
    path: Path, pipeline: dict[str, str] | None = None
) -> Callable[[tuple[slice, ...]], np.ndarray]:
    import zarr

    with zarr.config.set(pipeline or {}):  # the codec pipeline is chosen when the array is opened
        array = zarr.open_array(str(path), mode="r")
    return lambda sel: array[sel]


def open_tensorstore(path: Path) -> Any:
    import tensorstore as ts

    return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}, read=True).result()


def open_blosc2(path: Path) -> Any:
    import blosc2

    return blosc2.open(urlpath=str(path), mode="r", dparams={"nthreads": 1}, mmap_mode="r")


def read_blosc2(array: Any, sel: tuple[slice, ...]) -> np.ndarray:
    """The channel-first patch at ``sel`` of an NDArray in nnU-Net's (c, x, y, z) view."""
    if len(sel) == 3:  # 2D: nnU-Net's singleton first spatial axis
        return array[(sel[0], slice(None), *sel[1:])][:, 0]
    return array[sel]


class AsyncZarr:
    """zarr AsyncArrays of one store layout on one event loop: reads several arrays in one ``gather``."""

    def __init__(self, paths: Sequence[Path], pipeline: dict[str, str] | None = None) -> None:
        import zarr
        import zarr.api.asynchronous as za

        self.loop = asyncio.new_event_loop()
        with zarr.config.set(pipeline or {}):
            self.arrays = [self.loop.run_until_complete(za.open_array(store=str(p), mode="r")) for p in paths]

    def gather(self, sel: tuple[slice, ...]) -> list[np.ndarray]:
        async def read() -> list[Any]:
            return await asyncio.gather(*(a.getitem(sel) for a in self.arrays))

        return self.loop.run_until_complete(read())

    def close(self) -> None:
        self.loop.close()


# --------------------------------------------------------------------------------------------
# Timing: every side per repetition, the same patch for all sides of a repetition
# --------------------------------------------------------------------------------------------
def interleaved_patches(
    sides: dict[str, Callable[[tuple[slice, ...]], Any]],
    shape: tuple[int, ...],
    patch: int,
    reps: int,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Time each side on the same random patch (all channels) per repetition; sides alternate."""
    rng = np.random.default_rng(seed)
    for fn in sides.values():  # first reads (opening shards, warming caches) are not what is compared
        fn(_patch_at(rng, shape, patch))
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        sel = _patch_at(rng, shape, patch)
        for name, fn in sides.items():
            gc.collect()
            start = time.perf_counter()
            fn(sel)
            times[name].append(time.perf_counter() - start)
    return {name: summary(t) for name, t in times.items()}


def _patch_at(rng: np.random.Generator, shape: tuple[int, ...], patch: int) -> tuple[slice, ...]:
    spatial = shape[1:]
    corner = [int(rng.integers(0, max(n - patch, 0) + 1)) for n in spatial]
    return (slice(None), *(slice(c, c + min(patch, n)) for c, n in zip(corner, spatial, strict=True)))


# --------------------------------------------------------------------------------------------
# A. Engines
# --------------------------------------------------------------------------------------------
def bench_engines(
    arrays: dict[str, np.ndarray],
    work: Path,
    patch: int,
    reps: int,
    engines: Sequence[str],
    all_layouts: bool,
    source_image_bytes: int,
) -> dict[str, Any]:
    """Writes, sizes and patch reads of every layout and engine for ``arrays`` (image, label, tube)."""
    ndim = arrays["image"].ndim - 1
    nn_patch = (patch,) * ndim
    out: dict[str, Any] = {"patch": patch, "shape": list(arrays["image"].shape[1:]), "arrays": {}}
    paths: dict[tuple[str, str], Path] = {}
    for name, data in arrays.items():
        kind = "image" if name == "image" else "target"
        layouts = _layouts(kind, ndim, all_layouts)
        written: dict[str, Any] = {}
        for lname, layout in layouts.items():
            path = work / f"{name}-{lname.replace(' ', '_')}.zarr"
            seconds = write_zarr(path, data, layout)
            paths[name, lname] = path
            written[lname] = {
                "layout": layout.text(ndim),
                "write_s": {"zarr": seconds},
                "bytes": tree_bytes(path)[0],
            }
        b2 = work / f"{name}.b2nd"
        seconds, chunks, blocks = write_blosc2(b2, data, nn_patch)
        written["blosc2 nnU-Net"] = {
            "layout": f"blosc2 NDArray, LZ4HC 5 shuffle, chunks {chunks}, blocks {blocks} (comp_blosc2_params)",
            "write_s": {"blosc2": seconds},
            "bytes": b2.stat().st_size,
        }
        # the candidate layout written by the other engines (write time only; same bytes)
        metadata = json.loads(
            (paths[name, CANDIDATE if kind == "image" else TODAY] / "zarr.json").read_text()
        )
        other = {"tensorstore": lambda p, d, m=metadata: write_tensorstore(p, d, m)}
        if "zarrs" in engines:
            layout = layouts[CANDIDATE if kind == "image" else TODAY]
            other["zarrs"] = lambda p, d, layout=layout: write_zarr(p, d, layout, ZARRS_PIPELINE)
        chosen = CANDIDATE if kind == "image" else TODAY
        for engine, write in other.items():
            written[chosen]["write_s"][engine] = write(work / f"{name}-{engine}-write.zarr", data)
        if name == "image":
            for w in written.values():
                w["bytes / source"] = w["bytes"] / source_image_bytes
        sides: dict[str, Callable[[tuple[slice, ...]], Any]] = {}
        for lname in layouts:
            path = paths[name, lname]
            if "zarr" in engines:
                sides[f"zarr, {lname}"] = open_zarr(path)
            if "zarrs" in engines:
                sides[f"zarrs, {lname}"] = open_zarr(path, ZARRS_PIPELINE)
            if "tensorstore" in engines:
                ts_array = open_tensorstore(path)
                sides[f"tensorstore, {lname}"] = lambda sel, a=ts_array: a[sel].read().result()
        b2_array = open_blosc2(b2)
        sides["blosc2, nnU-Net layout"] = lambda sel, a=b2_array: read_blosc2(a, sel)
        sides["memory copy"] = lambda sel, a=data: np.array(a[sel])
        log(f"engines: {name} {data.dtype} {data.shape}, {len(sides)} sides")
        out["arrays"][name] = {
            "dtype": str(data.dtype),
            "layouts": written,
            "reads": interleaved_patches(sides, data.shape, patch, reps),
        }
    out["batched"] = bench_batched(arrays, paths, work, patch, reps, engines)
    return out


def _batched_readers(
    arrays: dict[str, np.ndarray], paths: dict[tuple[str, str], Path], work: Path, engines: Sequence[str]
) -> tuple[dict[str, Callable[[tuple[slice, ...]], Any]], list[Callable[[], None]]]:
    """Side name -> read of image + label + tube at a selection; and what to close afterwards."""
    names = list(arrays)
    sides: dict[str, Callable[[tuple[slice, ...]], Any]] = {}
    closers: list[Callable[[], None]] = []
    for image_layout in (TODAY, CANDIDATE):
        layout_paths = [paths[n, image_layout if n == "image" else TODAY] for n in names]
        tag = "today's layouts" if image_layout == TODAY else f"image {CANDIDATE}, targets today's"
        for engine in ("zarr", "zarrs"):
            if engine not in engines:
                continue
            pipeline = ZARRS_PIPELINE if engine == "zarrs" else None
            readers = [open_zarr(p, pipeline) for p in layout_paths]
            sides[f"{engine}, {tag}, in turn"] = lambda sel, rs=readers: [r(sel) for r in rs]
            batch = AsyncZarr(layout_paths, pipeline)
            closers.append(batch.close)
            sides[f"{engine}, {tag}, asyncio.gather"] = batch.gather
        if "tensorstore" in engines:
            handles = [open_tensorstore(p) for p in layout_paths]
            sides[f"tensorstore, {tag}, in turn"] = lambda sel, hs=handles: [
                h[sel].read().result() for h in hs
            ]
            sides[f"tensorstore, {tag}, futures"] = lambda sel, hs=handles: [
                f.result() for f in [h[sel].read() for h in hs]
            ]
    b2 = [open_blosc2(work / f"{n}.b2nd") for n in names]
    sides["blosc2 nnU-Net layout, in turn"] = lambda sel: [read_blosc2(a, sel) for a in b2]
    sides["memory copy"] = lambda sel: [np.array(arrays[n][sel]) for n in names]
    return sides, closers


def bench_batched(
    arrays: dict[str, np.ndarray],
    paths: dict[tuple[str, str], Path],
    work: Path,
    patch: int,
    reps: int,
    engines: Sequence[str],
) -> dict[str, Any]:
    """One read of image + label + tube per side: in turn against batched (futures, asyncio.gather)."""
    sides, closers = _batched_readers(arrays, paths, work, engines)
    log(f"engines: batched image+label+tube, {len(sides)} sides")
    try:
        return interleaved_patches(sides, arrays["image"].shape, patch, reps, seed=1)
    finally:
        for close in closers:
            close()


# --------------------------------------------------------------------------------------------
# B. Items: skelprep's against nnU-Net's blosc2 loader
# --------------------------------------------------------------------------------------------
def nnunet_preprocessed(image: np.ndarray, label: np.ndarray, scheme: str) -> np.ndarray:
    """nnU-Net's normalized float32 image: its own normalization class, intensities from the foreground."""
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as norms

    if scheme == "rgb":
        return (
            norms.RGBTo01Normalization(intensityproperties={})
            .run(image.astype(np.float32))
            .astype(np.float32)
        )
    if scheme == "zscore":
        return (
            norms.ZScoreNormalization(use_mask_for_norm=False, intensityproperties={})
            .run(image.astype(np.float32))
            .astype(np.float32)
        )
    fg = image[:, label > 0].astype(np.float64)
    props = {
        "mean": float(fg.mean()),
        "std": float(fg.std()),
        "percentile_00_5": float(np.percentile(fg, 0.5)),
        "percentile_99_5": float(np.percentile(fg, 99.5)),
    }
    return (
        norms.CTNormalization(use_mask_for_norm=False, intensityproperties=props)
        .run(image.astype(np.float32))
        .astype(np.float32)
    )


def save_nnunet_case(
    folder: Path, case_id: str, image: np.ndarray, label: np.ndarray, patch, scheme: str
) -> None:
    """nnU-Net 2.8's preprocessed blosc2 case, written by its own ``save_case`` as its preprocessor calls it."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    data = _as_nnunet_4d(nnunet_preprocessed(image, label, scheme))
    seg = _as_nnunet_4d(label[np.newaxis].astype(np.int16))
    blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
    folder.mkdir(parents=True, exist_ok=True)
    nnUNetDatasetBlosc2.save_case(
        data,
        seg,
        {"case": case_id},
        str(folder / case_id),
        chunks=chunks,
        blocks=blocks,
        chunks_seg=chunks_seg,
        blocks_seg=blocks_seg,
    )


class NnunetRead:
    """nnU-Net's data loader's read of one patch: ``load_case``, ``crop_and_pad_nd`` of image and seg, tensors."""

    def __init__(self, folder: Path, patch: int, seed: int = 0) -> None:
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

        self.dataset = nnUNetDatasetBlosc2(str(folder))
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def __call__(self, index: int) -> tuple[Any, Any]:
        import torch
        from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

        ids = self.dataset.identifiers
        data, seg, _, _ = self.dataset.load_case(ids[index % len(ids)])
        spatial = data.shape[1:]
        patch = [1] + [self.patch] * (len(spatial) - 1) if spatial[0] == 1 else [self.patch] * len(spatial)
        lbs = [int(self.rng.integers(0, max(n - p, 0) + 1)) for n, p in zip(spatial, patch, strict=True)]
        bbox = [[lb, lb + p] for lb, p in zip(lbs, patch, strict=True)]
        image = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()
        seg_patch = torch.from_numpy(crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16)
        return image, seg_patch


class ItemPrototype:
    """An item read from part A's arrays by one engine: batched read, z-score, tensors.

    The tensors of skelprep's item (float32 image, int64 label and tube), or with
    ``lean`` those of nnU-Net's loader's dtypes' size: the z-score in one float32
    pass, label and tube as stored (uint8), so the figure shows what the casts cost.
    """

    def __init__(
        self,
        read: Callable[[tuple[slice, ...]], list[np.ndarray]],
        image: np.ndarray,
        patch: int,
        lean: bool = False,
    ) -> None:
        self.read, self.shape, self.patch, self.lean = read, image.shape, patch, lean
        self.mean, self.std = float(image.mean()), float(image.std())
        self.rng = np.random.default_rng(2)

    def __call__(self, index: int) -> dict[str, Any]:
        import torch

        image, label, tube = self.read(_patch_at(self.rng, self.shape, self.patch))
        if self.lean:
            normalized = np.subtract(image, self.mean, dtype=np.float32)
            normalized *= np.float32(1 / self.std)
            return {
                "image": torch.from_numpy(normalized),
                "label": torch.from_numpy(label),
                "tube": torch.from_numpy(tube),
            }
        normalized = (image.astype(np.float32) - self.mean) / self.std
        return {
            "image": torch.from_numpy(normalized),
            "label": torch.from_numpy(label.astype(np.int64)),
            "tube": torch.from_numpy(tube.astype(np.int64)),
        }


def bench_items(
    dataset: Path,
    work: Path,
    patch: int,
    reps: int,
    scheme: str,
    prototypes: dict[str, Callable[[int], Any]] | None = None,
) -> dict[str, Any]:
    """skelprep's item against nnU-Net's stock read and its read + the recipe, interleaved."""
    import torch

    from skelprep.build import build
    from skelprep.io import read_image, read_mask
    from skelprep.layout import discover
    from skelprep.torch import SkeletonDataset

    store = work / "streamed.zarr"
    start = time.perf_counter()
    assert build(dataset, store, workers=1, with_images=True).ok
    build_s = time.perf_counter() - start
    cases = discover(dataset).cases
    shapes = []
    nn_folder = work / "nnUNet_preprocessed"
    start = time.perf_counter()
    for case in cases:
        image = read_image(case.images[0]).array
        label = read_mask(case.mask).array
        shapes.append(label.shape)
        size = tuple(min(patch, n) for n in label.shape)
        save_nnunet_case(nn_folder, case.case_id, image, label, size, scheme)
    nnunet_s = time.perf_counter() - start
    size = min([patch] + [min(s) for s in shapes])
    item = SkeletonDataset.from_store(store, patch_size=size, foreground_prob=0.33)
    nnunet = NnunetRead(nn_folder, size)

    def nnunet_recipe(index: int) -> None:
        _, seg = nnunet(index)
        reference_recipe(seg[0].numpy())

    sides: dict[str, Callable[[int], Any]] = {
        "skelprep item (from_store)": item.__getitem__,
        "nnU-Net stock read": nnunet,
        "nnU-Net read + recipe": nnunet_recipe,
        **(prototypes or {}),
    }
    torch.manual_seed(0)
    for i in range(len(item)):  # open every case once (per-process state), as a worker would
        for fn in sides.values():
            fn(i)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(reps):
        for name, fn in sides.items():
            gc.collect()
            start = time.perf_counter()
            fn(rep % len(item))
            times[name].append(time.perf_counter() - start)
    timings = {name: summary(t) for name, t in times.items()}
    med = {name: t["median"] for name, t in timings.items()}
    ours = med["skelprep item (from_store)"]
    return {
        "patch": size,
        "cases": len(cases),
        "build --with-images s": build_s,
        "nnU-Net save_case s": nnunet_s,
        "timings": timings,
        "item / nnU-Net stock read": ours / med["nnU-Net stock read"],
        "item / (nnU-Net read + recipe)": ours / med["nnU-Net read + recipe"],
        "prototype / nnU-Net stock read": {
            name: med[name] / med["nnU-Net stock read"] for name in (prototypes or {})
        },
    }


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def write_fundus_dataset(folder: Path, n_images: int, size: int, chase: Path | None) -> Path:
    """An nnU-Net raw 2D dataset of ``size``² RGB fundus crops (``.png``) with their vessel masks.

    From the full CHASE_DB1 release when ``chase`` holds it (centre crops of the
    960 x 999 photographs), else images drawn from the bundled CHASE masks
    (vessels darker than a smooth red background, noise), so that the quick and
    tiny runs need no shared data.
    """
    from PIL import Image

    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    if chase is not None and (chase / "images").is_dir():
        pairs = [
            (np.asarray(Image.open(p).convert("RGB")), np.asarray(Image.open(chase / "labels" / p.name)))
            for p in sorted((chase / "images").glob("*.png"))[:n_images]
        ]
        note = f"CHASE_DB1 fundus photographs, centre {size}² crops ({chase})"
    else:
        rng = np.random.default_rng(0)
        pairs = []
        masks = sorted((EXAMPLES / "chase_vessels" / "labels").glob("*.png"))
        for i in range(n_images):
            mask = (np.asarray(Image.open(masks[i % len(masks)])) > 0).astype(np.uint8)
            yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
            base = 150 + 60 * np.cos(
                np.hypot(yy - mask.shape[0] / 2, xx - mask.shape[1] / 2) / mask.shape[0] * 3
            )
            red = base - 50 * mask + rng.normal(0, 6, mask.shape)
            rgb = np.stack([red, 0.45 * red, 0.2 * red], -1)
            pairs.append((np.clip(rgb, 0, 255).astype(np.uint8), mask))
        note = f"drawn fundus images from the bundled CHASE masks, centre {size}² crops"
    for i, (rgb, mask) in enumerate(pairs):
        y0, x0 = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
        crop = (slice(y0, y0 + size), slice(x0, x0 + size))
        Image.fromarray(np.ascontiguousarray(rgb[crop])).save(
            folder / "imagesTr" / f"fundus_{i:03d}_0000.png"
        )
        Image.fromarray((mask[crop] > 0).astype(np.uint8)).save(folder / "labelsTr" / f"fundus_{i:03d}.png")
    meta = {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "vessel": 1},
        "numTraining": len(pairs),
        "file_ending": ".png",
        "note": note,
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


def _case_arrays(dataset: Path) -> tuple[dict[str, np.ndarray], int]:
    """(image, label, tube) channel-first of the dataset's first case, and its image file's bytes."""
    from skelprep.io import read_image, read_mask
    from skelprep.layout import discover
    from skelprep.skeleton import skeleton_targets

    case = discover(dataset).cases[0]
    image = np.ascontiguousarray(read_image(case.images[0]).array)
    label = read_mask(case.mask).array
    tube = skeleton_targets(label).tube
    return (
        {
            "image": image,
            "label": label[np.newaxis].astype(np.uint8),
            "tube": tube[np.newaxis].astype(np.uint8),
        },
        case.images[0].stat().st_size,
    )


def _prototypes(case: dict[str, Any], arrays: dict[str, np.ndarray], work: Path, engines: Sequence[str]):
    """Item prototypes over part A's stored arrays (image in the candidate layout, targets today's)."""
    paths = [work / f"{n}-{(CANDIDATE if n == 'image' else TODAY).replace(' ', '_')}.zarr" for n in arrays]
    out: dict[str, Callable[[int], Any]] = {}
    closers: list[Callable[[], None]] = []
    patch = case["patch"]
    readers: dict[str, Callable[[tuple[slice, ...]], list[np.ndarray]]] = {}
    if "tensorstore" in engines:
        handles = [open_tensorstore(p) for p in paths]
        readers["tensorstore futures"] = lambda sel: [f.result() for f in [h[sel].read() for h in handles]]
    for engine in ("zarrs", "zarr"):
        if engine in engines:
            batch = AsyncZarr(paths, ZARRS_PIPELINE if engine == "zarrs" else None)
            closers.append(batch.close)
            readers[f"{engine} asyncio.gather"] = batch.gather
    b2 = [open_blosc2(work / f"{n}.b2nd") for n in arrays]
    readers["blosc2 nnU-Net layout, in turn"] = lambda sel: [read_blosc2(a, sel) for a in b2]
    # the same item from memory: what normalizing and casting cost without any read
    readers["memory copy"] = lambda sel: [np.array(a[sel]) for a in arrays.values()]
    for lean in (False, True):
        for name, read in readers.items():
            if lean and name.startswith("zarr "):
                continue  # zarr-python's pipeline is far behind the others already
            layout = f", image {CANDIDATE}" if "futures" in name or "gather" in name else ""
            tensors = ", uint8 targets, one-pass z-score" if lean else ""
            out[f"prototype: {name}{layout}{tensors}"] = ItemPrototype(read, arrays["image"], patch, lean)
    return out, closers


# --------------------------------------------------------------------------------------------
# Run, outputs
# --------------------------------------------------------------------------------------------
def run(mode: str, out: Path, chase: Path | None = None, data: Path | None = None) -> dict[str, Any]:
    cfg = MODES[mode]
    engines = tuple(e for e in cfg["engines"] if e != "zarrs" or _zarrs_available())
    work = Path(tempfile.mkdtemp(prefix="skelprep-bench-engines-"))
    results: dict[str, Any] = {
        "mode": mode,
        "config": {**cfg, "engines": list(engines)},
        "machine": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "versions": _versions(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        log(f"engines: generating the CT-like case {cfg['ct_shape']} (once)")
        ct = write_ct_dataset(data or work / "ct", n_cases=1, shape=cfg["ct_shape"])
        fundus = write_fundus_dataset(work / "fundus", cfg["images_2d"], cfg["size_2d"], chase)
        octa = work / "octa3d"
        shutil.copytree(EXAMPLES / "octa3d", octa, ignore=shutil.ignore_patterns("skeletons.zarr*"))
        results["fundus note"] = json.loads((fundus / "dataset.json").read_text())["note"]
        for name, dataset, patch, scheme in (
            ("ct", ct, cfg["patch"], "ct"),
            ("2d", fundus, cfg["size_2d"], "rgb"),
        ):
            folder = work / name / "engines"
            folder.mkdir(parents=True)
            arrays, source_bytes = _case_arrays(dataset)
            case = bench_engines(
                arrays, folder, patch, cfg["reps"], engines, cfg["all_layouts"], source_bytes
            )
            case["source image bytes"] = source_bytes
            results[name] = {"engines": case}
            prototypes, closers = _prototypes(case, arrays, folder, engines)
            log(f"items: {name}")
            try:
                results[name]["items"] = bench_items(
                    dataset, work / name, patch, cfg["reps"], scheme, prototypes
                )
            finally:
                for close in closers:
                    close()
        log("items: octa")
        (work / "octa").mkdir()
        results["octa"] = {"items": bench_items(octa, work / "octa", 64, cfg["reps"], "zscore")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_engines.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "bench_engines.md").write_text(markdown(results))
    return results


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("zarr", "zarrs", "tensorstore", "blosc2", "nnunetv2", "numpy", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _ms(t: dict[str, Any]) -> str:
    return f"{t['median'] * 1e3:.1f} ms ({t['min'] * 1e3:.1f}-{t['max'] * 1e3:.1f})"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _engine_lines(title: str, e: dict[str, Any]) -> list[str]:
    p, shape = e["patch"], "×".join(map(str, e["shape"]))
    edge = f"{p}{'²' if len(e['shape']) == 2 else '³'}"
    lines = [f"### {title}: {shape}, random {edge} patch", ""]
    for name, a in e["arrays"].items():
        reads = a["reads"]
        floor = reads["memory copy"]["median"]
        nn = reads["blosc2, nnU-Net layout"]["median"]
        lines += [
            f"**{name}** ({a['dtype']}): read time, and ratio to blosc2 in nnU-Net's layout",
            "",
            "| side | read | / blosc2 nnU-Net | / memory copy |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {side} | {_ms(t)} | {t['median'] / nn:.2f}× | {t['median'] / floor:.1f}× |"
            for side, t in reads.items()
        ]
        lines += ["", "| layout | | write (one) | bytes |", "|---|---|---|---|"]
        for lname, w in a["layouts"].items():
            size = _mib(w["bytes"]) + (
                f" ({w['bytes / source']:.2f}× the source file)" if "bytes / source" in w else ""
            )
            writes = "; ".join(f"{k} {v:.2f} s" for k, v in w["write_s"].items())
            lines.append(f"| {lname} | {w['layout']} | {writes} | {size} |")
        lines.append("")
    batched = e["batched"]
    nn = batched["blosc2 nnU-Net layout, in turn"]["median"]
    lines += [
        f"**image + label + tube**, one {edge} patch of each: in turn against batched",
        "",
        "| side | read | / blosc2 nnU-Net |",
        "|---|---|---|",
    ]
    lines += [f"| {side} | {_ms(t)} | {t['median'] / nn:.2f}× |" for side, t in batched.items()]
    return lines + [""]


def _item_lines(title: str, it: dict[str, Any]) -> list[str]:
    t = it["timings"]
    stock = t["nnU-Net stock read"]["median"]
    p = it["patch"]
    lines = [
        f"### {title}: {p}-voxel-edge items ({it['cases']} cases)",
        "",
        "| side | time | / nnU-Net stock read |",
        "|---|---|---|",
    ]
    lines += [f"| {side} | {_ms(s)} | {s['median'] / stock:.2f}× |" for side, s in t.items()]
    lines += [
        "",
        f"skelprep item / nnU-Net stock read: **{it['item / nnU-Net stock read']:.2f}×** (target ≤ 1.0×); "
        f"item / (nnU-Net read + recipe): **{it['item / (nnU-Net read + recipe)']:.2f}×** (target ≤ 0.25×). "
        f"Build --with-images {it['build --with-images s']:.2f} s, nnU-Net save_case "
        f"{it['nnU-Net save_case s']:.2f} s.",
        "",
    ]
    return lines


def markdown(r: dict[str, Any]) -> str:
    cfg = r["config"]
    versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
    lines = [
        f"# Engines and items benchmark ({r['mode']} mode)",
        "",
        f"{r['machine']}, {r['cpus']} CPUs; {versions}. Medians (min-max) of {cfg['reps']} interleaved "
        "repetitions in one run, the same random patch for every side of a repetition; ratios of medians. "
        "Only ratios within this run count (the machine may be shared). blosc2 decodes with one thread, as "
        "nnU-Net sets it; zarr, zarrs and tensorstore use their default thread pools.",
        "",
        f"2D images: {r['fundus note']}.",
        "",
        "## A. Engines for patch reads",
        "",
    ]
    lines += _engine_lines("CT-like case", r["ct"]["engines"])
    lines += _engine_lines("2D fundus image", r["2d"]["engines"])
    lines += ["## B. skelprep's item against nnU-Net's blosc2 loader", ""]
    lines += _item_lines("CT-like case", r["ct"]["items"])
    lines += _item_lines("OCT-A (bundled)", r["octa"]["items"])
    lines += _item_lines("2D fundus images", r["2d"]["items"])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test suite's smoke run
    size.add_argument("--quick", action="store_true", help="CI-sized: one 256x256x160 CT-like case")
    size.add_argument("--full", action="store_true", help="one 512x512x300 CT-like case (default)")
    parser.add_argument("--out", type=Path, default=Path("results/bench-engines"))
    parser.add_argument(
        "--chase",
        type=Path,
        default=SHARED / "real" / "chase_db1_full",
        help="the full CHASE_DB1 release (images/, labels/); absent: images drawn from the bundled masks",
    )
    parser.add_argument("--data", type=Path, help="folder for the generated CT-like dataset (kept; reused)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    results = run(mode, args.out, args.chase, args.data)
    print(markdown(results))
    return results


def section(mode: str, out: Path) -> Part:
    """The engines benchmark as a section of ``bench.py`` (writes its own files to ``out`` too)."""
    log("engines")
    return Part(sections={"engines": run(mode, out, SHARED / "real" / "chase_db1_full")})


def report_lines(s: dict[str, Any]) -> list[str]:
    if "engines" not in s:
        return []
    return ["#" + markdown(s["engines"])]  # its title one level down
