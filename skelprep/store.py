"""The Zarr sidecar store (format version 2): write a case, read cases, tell what is built.

The authoritative description is ``docs/store-format.md``. In short::

    <out>/                      zarr v3 group, attrs["skelprep"] = {format_version, params, versions,
                                with_images, intensity_statistics, ...}
      <case_id>/                one group per case
         tube, thin             uint8/uint16 label maps in the mask's voxel order
         image, label           (built --with-images) channel-first image in its source dtype; the mask
         label_locations,       (with images) int32 (N, 1 + ndim): class, voxel index; sampled per class
         tube_locations
         foreground_intensities (with images) float32 (C, n): sampled foreground intensities
         attrs["skelprep"]      {source, fingerprint, params, shape, axes, spacing, affine,
                                 label_counts, fallback_components, checksums, complete,
                                 images: {sources, fingerprints, dtype, channels}}

Version 1 stores (targets only) are read as they are, and upgraded to 2 by the
next build into them. A case is written as: delete the old group, create the
group with ``complete: false``, write every array, then rewrite the group's
attributes with ``complete: true`` (zarr's local store replaces ``zarr.json``
atomically).
A case without ``complete: true`` is never reported as built. Chunks carry a
CRC-32C checksum, and the attributes a SHA-256 of each array's bytes, so that
altered or missing chunks are detected by :func:`verify_case_data`.

Reading needs nothing but zarr: ``zarr.open_group(out)["case_001/tube"][...]``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.core.sync import sync

from skelprep._fs import options_for
from skelprep._shards import encode_shards
from skelprep._util import first_line, utc_now

__all__ = [
    "FORMAT_VERSION",
    "DEFAULT_STORE_NAME",
    "default_store_path",
    "CaseState",
    "case_state",
    "open_for_writing",
    "ARRAY_NAMES",
    "IMAGE_ARRAY_NAMES",
    "READABLE_VERSIONS",
    "StoreError",
    "CaseTargets",
    "SkeletonStore",
    "open_store",
    "open_root",
    "write_case",
    "write_array",
    "encode_array",
    "EncodedArray",
    "write_small_array",
    "delete_case",
    "finalize_store",
    "read_consolidated",
    "WrittenCase",
    "array_checksum",
    "label_counts",
    "chunk_shape",
    "verify_case_data",
    "read_regions",
]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: targets only; 2 adds image, label and sampling arrays (--with-images)
ATTRS_KEY = "skelprep"
DEFAULT_STORE_NAME = "skeletons.zarr"
ARRAY_NAMES: tuple[str, ...] = ("tube", "thin")
IMAGE_ARRAY_NAMES: tuple[str, ...] = ("image", "label")
# 3D chunks of 128^3: tubes are sparse and compress ~100x, so decoding a chunk is cheap and
# the per-chunk overhead of zarr dominates a patch read. Measured on a 256x512x512 vessel
# case (pipelines/bench.py, store layouts): random 96^3 patch read 2.6 ms with 128^3
# chunks, 4.7 ms with 64^3, 14.9 ms with 32^3; write time equal (~0.3 s), size +9 %.
_CHUNK = {2: (256, 256), 3: (128, 128, 128)}
# Shards bundle chunks into few files; reading a patch still decodes only its chunks.
_SHARD_CHUNKS = {2: (8, 8), 3: (2, 2, 2)}
_ZSTD_LEVEL = 3
_PROTOTYPE = default_buffer_prototype()
# Hash in a second thread, beside the encoding, only where it pays for the thread's start.
_HASH_IN_THREAD_BYTES = 1 << 22
# Images are dense and noisy (CT: zstd keeps ~45 % of the bytes), so decoding, not zarr's
# per-chunk overhead, dominates a patch read: a random 128^3 patch of a 512x512x300 int16 CT
# read 80 ms with 128^3 chunks (8 chunks, 32 MB decoded), 41 ms with 64^3 (27 chunks, 14 MB),
# 42 ms with 96^3; reference recipe on that label patch 85 ms (pipelines/bench_streaming.py).
_IMAGE_CHUNK = {2: (256, 256), 3: (64, 64, 64)}
_IMAGE_SHARD_CHUNKS = {2: (8, 8), 3: (4, 4, 4)}


class StoreError(ValueError):
    """A store that is missing, unreadable, of another format, or lacks a case."""


def default_store_path(dataset: str | os.PathLike) -> str:
    """Where a dataset's store lives unless told otherwise: ``<dataset>/skeletons.zarr``.

    >>> default_store_path("data/Dataset001_Roads")
    'data/Dataset001_Roads/skeletons.zarr'
    """
    return os.fspath(os.path.join(os.fspath(dataset), DEFAULT_STORE_NAME))


@dataclass(frozen=True)
class CaseState:
    """Whether a stored case is usable as it is (see :func:`case_state`).

    ``state`` is one of ``ok``, ``missing``, ``incomplete``, ``stale`` (the source
    changed) or ``params-changed``; ``reason`` says it in words. ``images_only``
    is True when the targets are current and only the case's images need
    (re)writing: an image changed, or the case was built without its images.
    """

    state: str
    reason: str = ""
    images_only: bool = False

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def case_state(
    meta: Mapping[str, Any] | None,
    *,
    fingerprint: str | None = None,
    params: Mapping[str, Any] | None = None,
    image_fingerprints: Sequence[str] | None = None,
) -> CaseState:
    """The one rule for "is this stored case complete and current?".

    Parameters
    ----------
    meta : mapping or None
        The case's attributes (:meth:`SkeletonStore.case_attrs`); None when the
        case is not in the store.
    fingerprint : str, optional
        The source's fingerprint now; not compared when None.
    params : mapping, optional
        The parameters the case should have been built with; not compared when None.
    image_fingerprints : sequence of str, optional
        SHA-256 of the case's image files now, in channel order, when the case
        should carry its images; not compared when None.

    Examples
    --------
    >>> case_state(None).state
    'missing'
    >>> meta = {"complete": True, "fingerprint": "ab", "params": {"radius": 2}}
    >>> case_state(meta, fingerprint="ab", params={"radius": 2}).ok
    True
    >>> case_state(meta, fingerprint="cd").state
    'stale'
    >>> case_state(meta, fingerprint="ab", image_fingerprints=["ef"]).images_only
    True
    """
    if meta is None:
        return CaseState("missing", "not built")
    if meta.get("complete") is not True:
        return CaseState("incomplete", "its build did not finish")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        return CaseState("stale", "mask changed since it was built")
    if params is not None and meta.get("params") != params:
        return CaseState("params-changed", "built with other parameters")
    if image_fingerprints is not None:
        stored = (meta.get("images") or {}).get("fingerprints")
        if stored is None:
            return CaseState("stale", "built without its images (build --with-images)", images_only=True)
        if list(stored) != list(image_fingerprints):
            return CaseState("stale", "an image changed since it was built", images_only=True)
    return CaseState("ok")


def label_counts(array: np.ndarray) -> dict[str, int]:
    """Voxel count of every non-zero label, keyed by the label as a string (JSON keys)."""
    counts = np.bincount(array[array != 0])  # only the labelled voxels: bincount casts to int64
    return {str(v): int(counts[v]) for v in np.flatnonzero(counts) if v != 0}


def array_checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's C-order bytes; stored so ``verify`` can check the data."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()  # hashes the buffer, no copy


def chunk_shape(shape: tuple[int, ...], *, image: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(chunks, shards) for an array's spatial axes: chunks sized for patch reads, a few chunks per shard.

    Targets and labels: 256² / 128³ chunks in shards of up to 2048² / 256³. Images
    (``image=True``): 256² / 64³ chunks in shards of up to 2048² / 256³.

    >>> chunk_shape((300, 512, 512))
    ((128, 128, 128), (256, 256, 256))
    >>> chunk_shape((300, 512, 512), image=True)
    ((64, 64, 64), (256, 256, 256))
    """
    ndim = len(shape)
    base, per_shard = (_IMAGE_CHUNK, _IMAGE_SHARD_CHUNKS) if image else (_CHUNK, _SHARD_CHUNKS)
    chunks = tuple(min(c, s) for c, s in zip(base[ndim], shape, strict=True))
    shards = tuple(
        c * min(k, math.ceil(s / c)) for c, k, s in zip(chunks, per_shard[ndim], shape, strict=True)
    )
    return chunks, shards


def _label_dtype(*arrays: np.ndarray) -> np.dtype:
    high = max((int(a.max()) if a.size else 0) for a in arrays)
    return np.dtype(np.uint8 if high <= 255 else np.uint16)


def open_root(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """Open the store's root group without trusting consolidated metadata (it may be stale).

    ``path`` may be a URL (``s3://bucket/x.zarr``); it is opened with the storage
    options of :mod:`skelprep._fs`.
    """
    path = os.fspath(path)
    try:
        return zarr.open_group(path, mode=mode, use_consolidated=False, storage_options=options_for(path))
    except FileNotFoundError as exc:
        if mode == "r":
            raise StoreError(f"{path}: no skelprep store here (run 'skelprep build' first)") from exc
        # writing: the bucket (or a parent folder of the store) does not exist
        raise StoreError(f"{path}: cannot create the store ({first_line(exc, with_type=True)})") from exc
    except Exception as exc:  # zarr raises several types for "not a group"; fsspec for bad URLs
        raise StoreError(f"{path}: cannot open store ({first_line(exc, with_type=True)})") from exc


def open_for_writing(path: str | os.PathLike, attrs: Mapping[str, Any]) -> zarr.Group:
    """Open (or create) a store for a build and record this build's root ``attrs``.

    A new store gets ``format_version``, ``created`` and an empty case list; an
    existing one must be a skelprep store of a version this skelprep reads. A
    version-1 store is upgraded in place: its cases are valid version-2 cases
    (targets only), so only ``format_version`` changes (``upgraded_from``
    records the old one).

    Raises
    ------
    StoreError
        The path holds something else, or a store of a newer format version.
    """
    root = open_root(path, mode="a")
    meta = root.attrs.get(ATTRS_KEY)
    if meta is None:
        if any(True for _ in root.members()):
            raise StoreError(
                f"{os.fspath(path)}: exists and is not a skelprep store; choose another store path"
            )
        meta = {"format_version": FORMAT_VERSION, "created": utc_now(), "cases": []}
    elif meta.get("format_version") not in READABLE_VERSIONS:
        raise StoreError(
            f"{os.fspath(path)}: store format version {meta.get('format_version')}, this skelprep writes "
            f"{FORMAT_VERSION}; build into a new store (--out) or upgrade skelprep"
        )
    elif meta["format_version"] != FORMAT_VERSION:
        meta = {**meta, "format_version": FORMAT_VERSION, "upgraded_from": meta["format_version"]}
    root.attrs.update({ATTRS_KEY: {**meta, **attrs}})
    return root


def delete_case(root: zarr.Group, case_id: str) -> None:
    """Remove a case group (no error if absent).

    The group is first marked incomplete (an atomic rewrite of its metadata): the
    deletion itself is not atomic, and a kill in the middle must not leave a
    group that still says ``complete: true`` over missing chunks.
    """
    sync(_delete_node(root.store, _key(root, case_id)))


def _key(group: zarr.Group, *parts: str) -> str:
    """Store key of ``parts`` below ``group``."""
    return _join(group.store_path.path, *parts)


def _join(*parts: str) -> str:
    """Store key of path parts, empty parts (the store's root) left out."""
    return "/".join(p for p in parts if p)


def _json_bytes(attributes: Mapping[str, Any]) -> Buffer:
    """A group's ``zarr.json`` with these attributes, as zarr writes it."""
    return GroupMetadata(attributes=dict(attributes)).to_buffer_dict(_PROTOTYPE)["zarr.json"]


async def _delete_node(store: Any, path: str) -> bool:
    """Mark a case group incomplete if it says complete, then delete everything below ``path``.

    Returns whether a node was there.
    """
    raw = await store.get(_join(path, "zarr.json"), prototype=_PROTOTYPE)
    try:
        doc = json.loads(raw.to_bytes()) if raw is not None else None
    except ValueError:  # unreadable metadata: nothing can take it for complete
        doc = None
    if isinstance(doc, dict) and doc.get("node_type") == "group":
        meta = (doc.get("attributes") or {}).get(ATTRS_KEY)
        if isinstance(meta, dict) and meta.get("complete") is not False:
            attributes = {**doc["attributes"], ATTRS_KEY: {**meta, "complete": False}}
            await store.set(_join(path, "zarr.json"), _json_bytes(attributes))
    # also clears the leftovers of an interrupted deletion (folders without metadata)
    await store.delete_dir(path)
    return raw is not None


@functools.lru_cache(maxsize=256)
def _array_metadata(shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...], shards: tuple[int, ...]):
    """The ``zarr.json`` of a case array, written by zarr itself (once per shape and dtype)."""
    memory = zarr.storage.MemoryStore()
    zarr.create_array(
        memory,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        compressors=[ZstdCodec(level=_ZSTD_LEVEL), Crc32cCodec()],
        fill_value=0,
    )
    return sync(memory.get("zarr.json", prototype=_PROTOTYPE))


@dataclass(frozen=True)
class WrittenCase:
    """What :func:`write_case` wrote: ``{node path: zarr.json document}``, and seconds per phase."""

    documents: dict[str, Any]
    seconds: dict[str, float]


@dataclass(frozen=True)
class EncodedArray:
    """A case array encoded for the store (:func:`encode_array`): its files and checksum."""

    name: str
    files: dict[str, Buffer]  # key relative to the array -> bytes (``zarr.json`` and the shards)
    checksum: str


def encode_array(
    name: str, data: np.ndarray, *, channels: bool = False, slice_chunks: bool = False
) -> EncodedArray:
    """Encode one array of a case with the store's chunking and codecs (no I/O).

    Chunks follow :func:`chunk_shape` over the spatial axes; with ``channels``
    the first axis is a channel axis (chunks of one channel). With
    ``slice_chunks`` a 3D array is chunked as a stack of 2D slices along axis 0
    (chunks of one slice, 16 slices per shard): a 2D patch of a 448x448 slice of
    a 160x512x512 volume then reads in 1.5 ms instead of 26 ms from 128^3 chunks.
    Zstandard with a CRC-32C per chunk; all-zero chunks are not stored (zarr
    reads them as the fill value 0). The SHA-256 of the data is computed in a
    second thread while the chunks are encoded (both release the GIL): 0.11 s
    for 256x512x512.
    """
    data = np.ascontiguousarray(data)
    lead = (1,) if channels or slice_chunks else ()
    chunks, shards = chunk_shape(data.shape[len(lead) :])
    lead_shard = (min(16, data.shape[0]),) if slice_chunks else lead
    chunks, shards = lead + chunks, lead_shard + shards
    if data.nbytes >= _HASH_IN_THREAD_BYTES:
        with ThreadPoolExecutor(1) as pool:
            digest = pool.submit(array_checksum, data)
            shard_files = encode_shards(data, chunks, shards, level=_ZSTD_LEVEL)
            checksum = digest.result()
    else:
        shard_files = encode_shards(data, chunks, shards, level=_ZSTD_LEVEL)
        checksum = array_checksum(data)
    files = {"zarr.json": _array_metadata(data.shape, data.dtype.str, chunks, shards)}
    files.update((k, _PROTOTYPE.buffer.from_bytes(v)) for k, v in shard_files.items())
    return EncodedArray(name, files, checksum)


async def _put_arrays(store: Any, path: str, arrays: list[EncodedArray]) -> None:
    """Write the files of encoded arrays below group ``path``, concurrently."""
    await asyncio.gather(*(store.set(_join(path, a.name, k), v) for a in arrays for k, v in a.files.items()))


async def _ensure_parents(store: Any, path: str) -> None:
    """Implicit groups above a nested case id (``left/img_07``), as zarr creates them."""
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        await store.set_if_not_exists("/".join(parts[:i]) + "/zarr.json", _json_bytes({}))


def write_case(
    root: zarr.Group,
    case_id: str,
    *,
    tube: np.ndarray,
    thin: np.ndarray,
    attrs: Mapping[str, Any],
    slice_chunks: bool = False,
    image: np.ndarray | None = None,
    label: np.ndarray | None = None,
    small: Mapping[str, np.ndarray] | None = None,
) -> WrittenCase:
    """Write one case so that it is never seen as complete before all its data are.

    Parameters
    ----------
    root : zarr.Group
        The store's root group, opened writable.
    case_id : str
        Group path of the case (may contain ``/``).
    tube, thin : ndarray
        Label maps of the mask's shape; stored as uint8, or uint16 when a label
        exceeds 255.
    attrs : mapping
        Provenance (source, fingerprint, params, spacing, ...); ``shape``,
        ``dtype``, ``label_counts``, ``checksums`` and ``complete`` are added here.
    slice_chunks : bool
        3D arrays read one slice along axis 0 at a time (nnU-Net's 2D
        configurations): see :func:`write_array`.
    image : ndarray, optional
        Channel-first ``(C, *shape)`` image, stored in its own dtype (format 2).
    label : ndarray, optional
        The mask as read, of the targets' shape, stored in its own dtype.
    small : mapping of str to ndarray, optional
        Small per-case arrays (sampling coordinates, intensity samples), each
        stored as one chunk (:func:`write_small_array`).

    Returns
    -------
    WrittenCase
        The metadata documents written (for :func:`finalize_store`) and the
        seconds spent: ``encode`` (chunks, checksums, label counts) and
        ``store`` (deleting the old case, writing the files).

    Notes
    -----
    The arrays are encoded first, in this thread; then one round trip to
    zarr's event loop deletes the old case (marking it incomplete first) and
    writes the group with ``complete: false`` if there was one, the arrays'
    files concurrently, and last the group with ``complete: true``. zarr's group and array API
    cost ~18 ms per 512x512 case for the same files (5 of them); this ~1 ms.
    With ``image``, ``label`` or ``small`` arrays (store format 2) the case is
    written through zarr's API as before (Blosc images, single-chunk small
    arrays) and its documents are left for :func:`finalize_store` to read.
    """
    if tube.shape != thin.shape:
        raise ValueError(f"tube shape {tube.shape} differs from thin shape {thin.shape}")
    if image is not None and image.shape[1:] != tube.shape:
        raise ValueError(f"image shape {image.shape[1:]} differs from the targets' shape {tube.shape}")
    if label is not None and label.shape != tube.shape:
        raise ValueError(f"label shape {label.shape} differs from the targets' shape {tube.shape}")
    start = time.perf_counter()
    dtype = _label_dtype(tube, thin)
    encoded = [
        encode_array(n, np.asarray(a, dtype=dtype), slice_chunks=slice_chunks)
        for n, a in (("tube", tube), ("thin", thin))
    ]
    meta = dict(attrs)
    meta.update(
        shape=list(tube.shape),
        dtype=dtype.name,
        label_counts={name: label_counts(arr) for name, arr in (("tube", tube), ("thin", thin))},
        checksums={},
        complete=False,
    )
    if image is not None or label is not None or small:
        # format 2: zarr's API for every array (Blosc images); finalize_store reads the documents
        delete_case(root, case_id)
        group = root.create_group(case_id, attributes={ATTRS_KEY: meta})
        encoded_at = time.perf_counter()
        sync(_put_arrays(group.store, _key(group), encoded))
        for a in encoded:
            meta["checksums"][a.name] = a.checksum
        if image is not None:
            meta["checksums"]["image"] = write_array(
                group, "image", np.ascontiguousarray(image), channels=True
            )
        if label is not None:
            meta["checksums"]["label"] = write_array(group, "label", np.ascontiguousarray(label))
        for name, data in (small or {}).items():
            meta["checksums"][name] = write_small_array(group, name, data)
        meta["complete"] = True
        group.attrs.update({ATTRS_KEY: meta})  # last write: the case now counts as built
        return WrittenCase({}, {"encode": encoded_at - start, "store": time.perf_counter() - encoded_at})
    path = _key(root, case_id)
    first = {ATTRS_KEY: meta}
    done = {ATTRS_KEY: {**meta, "checksums": {a.name: a.checksum for a in encoded}, "complete": True}}

    async def replace(store: Any) -> None:
        if await _delete_node(store, path):  # a replaced case reads as incomplete until done
            await store.set(_join(path, "zarr.json"), _json_bytes(first))
        # A new case has no group until done: a kill leaves a folder without metadata, which
        # is no case (missing) and is cleared when it is built; one file write less per case.
        await _ensure_parents(store, path)
        await _put_arrays(store, path, encoded)
        await store.set(
            _join(path, "zarr.json"), _json_bytes(done)
        )  # last write: the case now counts as built

    encoded_at = time.perf_counter()
    sync(replace(root.store))
    documents = {case_id: json.loads(_json_bytes(done).to_bytes())}
    documents.update((f"{case_id}/{a.name}", json.loads(a.files["zarr.json"].to_bytes())) for a in encoded)
    seconds = {"encode": encoded_at - start, "store": time.perf_counter() - encoded_at}
    return WrittenCase(documents, seconds)


def write_small_array(group: zarr.Group, name: str, data: np.ndarray) -> str:
    """Write a small array (a few 100 kB at most) as a single Zstandard chunk with CRC-32C; return its checksum.

    One chunk: a reader loads it in one request (sampling coordinates are read
    whole, once per case and process).
    """
    data = np.ascontiguousarray(data)
    array = group.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=tuple(max(n, 1) for n in data.shape),
        compressors=[ZstdCodec(level=3), Crc32cCodec()],
        fill_value=0,
    )
    if data.size:
        array[...] = data
    return array_checksum(data)


def write_array(
    group: zarr.Group, name: str, data: np.ndarray, *, channels: bool = False, slice_chunks: bool = False
) -> str:
    """Write one array of a case with the store's chunking and codecs; return its checksum.

    Chunks follow :func:`chunk_shape` over the spatial axes; with ``channels``
    the first axis is a channel axis (chunks of one channel, image chunk sizes,
    byte-shuffled Blosc-Zstandard, written by zarr). With ``slice_chunks`` a 3D
    array is chunked as a stack of 2D slices along axis 0 (chunks of one slice,
    16 slices per shard): a 2D patch of a 448x448 slice of a 160x512x512 volume
    then reads in 1.5 ms instead of 26 ms from 128^3 chunks. Other arrays:
    Zstandard with a CRC-32C per chunk, encoded by :func:`encode_array`. The
    array replaces any node of that name.
    """
    if channels:
        return _write_image_array(group, name, data)
    encoded = encode_array(name, data, slice_chunks=slice_chunks)
    path = _key(group)

    async def put(store: Any) -> None:
        await store.delete_dir(_join(path, name))
        await _put_arrays(store, path, [encoded])

    sync(put(group.store))
    return encoded.checksum


def _write_image_array(group: zarr.Group, name: str, data: np.ndarray) -> str:
    """A channel-first image through zarr's API (Blosc is not in :mod:`skelprep._shards`)."""
    data = np.ascontiguousarray(data)
    chunks, shards = chunk_shape(data.shape[1:], image=True)
    # Images: Zstandard (level 1) inside Blosc, after a byte shuffle (the high bytes of CT
    # intensities barely vary). On a 512x512x300 int16 CT: 60 MB instead of 71 MB with plain
    # zstd 3 (the .nii.gz: 75 MB), written in 0.55 s instead of 1.6 s, patch reads as fast.
    compressor = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=data.dtype.itemsize)
    array = group.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=(1, *chunks),
        shards=(1, *shards),
        compressors=[compressor, Crc32cCodec()],
        fill_value=0,
        overwrite=True,
    )
    array[...] = data
    return array_checksum(data)


def read_consolidated(root: zarr.Group) -> dict[str, Any] | None:
    """The consolidated metadata entries of the store (``{node path: zarr.json document}``), or None.

    A build reads them before it starts (which drops them: they would be stale
    while it writes) and hands them to :func:`finalize_store` to update.
    """
    raw = sync(root.store.get(_key(root, "zarr.json"), prototype=_PROTOTYPE))
    try:
        consolidated = json.loads(raw.to_bytes()).get("consolidated_metadata") if raw is not None else None
    except (ValueError, AttributeError):
        return None
    entries = consolidated.get("metadata") if isinstance(consolidated, dict) else None
    return dict(entries) if isinstance(entries, dict) else None


def _is_complete_case(doc: Any) -> bool:
    meta = doc.get("attributes", {}).get(ATTRS_KEY) if isinstance(doc, dict) else None
    return (
        doc.get("node_type") == "group"
        and isinstance(meta, dict)
        and "source" in meta
        and (meta.get("complete") is True)
    )


async def _node_entries(store: Any, root_path: str, path: str) -> dict[str, Any]:
    """The zarr.json documents of ``path`` and every node below it (read from the store)."""
    out: dict[str, Any] = {}
    raw = await store.get(_join(root_path, path, "zarr.json"), prototype=_PROTOTYPE)
    if raw is None:
        return out
    try:
        out[path] = json.loads(raw.to_bytes())
    except ValueError:
        return out
    if out[path].get("node_type") == "group":
        children = [c async for c in store.list_dir(_join(root_path, path))]
        for child in children:
            if child != "zarr.json":
                out.update(await _node_entries(store, root_path, f"{path}/{child}"))
    return out


def finalize_store(
    root: zarr.Group,
    path: str | os.PathLike,
    *,
    since: Mapping[str, Any] | None = None,
    written: Mapping[str, Any] | None = None,
    touched: Iterable[str] = (),
) -> None:
    """Record the list of complete cases in the root attributes and consolidate metadata.

    Without ``since``, every node is read (zarr's ``consolidate_metadata``: ~1 s
    for 504 cases on 2 busy cores). With ``since`` — the entries when this build
    began (:func:`read_consolidated`), exact because every build holds the lock
    and drops them while it writes — only what this build changed is applied:
    ``written``, the documents of the cases it wrote (:class:`WrittenCase`),
    and ``touched``, cases it deleted or may have left half-written (pruned,
    failed), which are read again.
    """
    if since is None:
        store = SkeletonStore(root, path)
        meta = dict(root.attrs.get(ATTRS_KEY, {}))
        meta["cases"] = store.case_ids
        meta["updated"] = utc_now()
        root.attrs.update({ATTRS_KEY: meta})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec"
            zarr.consolidate_metadata(root.store)
        return
    written = dict(written or {})
    touched = set(touched)
    replaced = touched | {k for k in written if "/" not in k or k.rsplit("/", 1)[0] not in written}
    entries = {k: v for k, v in since.items() if not any(k == c or k.startswith(c + "/") for c in replaced)}
    root_path = root.store_path.path

    async def reread() -> list[dict[str, Any]]:
        return await asyncio.gather(*(_node_entries(root.store, root_path, c) for c in sorted(touched)))

    for found in sync(reread()):
        entries.update(found)
    entries.update(written)
    for key in list(entries):  # implicit groups above nested case ids
        parts = key.split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), json.loads(_json_bytes({}).to_bytes()))
    for doc in entries.values():
        if doc.get("node_type") == "group":
            doc.setdefault(
                "consolidated_metadata", {"kind": "inline", "must_understand": False, "metadata": {}}
            )
    meta = dict(root.attrs.get(ATTRS_KEY, {}))
    meta["cases"] = sorted(k for k, v in entries.items() if _is_complete_case(v))
    meta["updated"] = utc_now()
    doc = {
        "attributes": {**root.attrs.asdict(), ATTRS_KEY: meta},
        "zarr_format": 3,
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": entries},
        "node_type": "group",
    }
    indent = zarr.config.get("json_indent")
    sync(
        root.store.set(
            _key(root, "zarr.json"),
            _PROTOTYPE.buffer.from_bytes(json.dumps(doc, indent=indent, allow_nan=True).encode()),
        )
    )


@dataclass(frozen=True)
class CaseTargets:
    """The stored targets of one case.

    Attributes
    ----------
    case_id : str
    tube, thin : zarr.Array
        Lazily read label maps; ``case.tube[...]`` gives a numpy array,
        ``case.tube[10:74, 0:64, 0:64]`` reads only the chunks it needs.
    attrs : dict
        The case's provenance attributes.
    image, label : zarr.Array or None
        The channel-first image and the mask (cases built ``--with-images``).
    group : zarr.Group or None
        The case's group (its small arrays: :meth:`read`).
    """

    case_id: str
    tube: zarr.Array
    thin: zarr.Array
    attrs: dict[str, Any]
    image: zarr.Array | None = None
    label: zarr.Array | None = None
    group: zarr.Group | None = None

    @property
    def has_images(self) -> bool:
        """Whether the case carries its image and label arrays (built ``--with-images``)."""
        return self.image is not None and self.label is not None

    def read(self, name: str) -> np.ndarray:
        """A whole array of the case by name (e.g. ``"tube_locations"``)."""
        if self.group is None:
            raise KeyError(name)
        return self.group[name][...]

    def array_names(self) -> list[str]:
        """Names of the case's arrays that carry a checksum (every array a build wrote)."""
        return list(self.attrs.get("checksums") or ARRAY_NAMES)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(self.attrs.get("spacing") or (1.0,) * len(self.attrs["shape"]))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.attrs["shape"])


class SkeletonStore(Mapping[str, CaseTargets]):
    """A built store: a read-only mapping from case id to :class:`CaseTargets`.

    Only complete cases are listed. Use :func:`open_store` to open one.
    """

    def __init__(self, root: zarr.Group, path: str | os.PathLike) -> None:
        self.root = root
        self.path = os.fspath(path)
        meta = root.attrs.get(ATTRS_KEY)
        if not isinstance(meta, dict):
            raise StoreError(f"{self.path}: not a skelprep store (no 'skelprep' attributes)")
        version = meta.get("format_version")
        if version not in READABLE_VERSIONS:
            raise StoreError(
                f"{self.path}: store format version {version}, this skelprep reads "
                f"{' and '.join(map(str, READABLE_VERSIONS))}; upgrade skelprep"
            )
        self.attrs: dict[str, Any] = meta
        self._case_ids: list[str] | None = None
        self._prefetched: dict[str, dict[str, Any] | None] = {}

    def __repr__(self) -> str:
        return f"SkeletonStore({self.path!r}, cases={len(self)})"

    def prefetch_attrs(self, case_ids: Iterable[str]) -> None:
        """Read the attributes of many cases at once, for the next :meth:`case_attrs` of each.

        One round trip to zarr's event loop with the reads concurrent, instead of
        a group open per case (0.3-1 ms each; a build plans 504 cases in 20 ms).
        """
        ids = list(case_ids)
        root_path = self.root.store_path.path

        async def read_all() -> list[Any]:
            return await asyncio.gather(
                *(self.root.store.get(_join(root_path, c, "zarr.json"), prototype=_PROTOTYPE) for c in ids)
            )

        for case_id, raw in zip(ids, sync(read_all()), strict=True):
            try:
                doc = json.loads(raw.to_bytes()) if raw is not None else None
            except ValueError:
                doc = None
            meta = doc.get("attributes", {}).get(ATTRS_KEY) if isinstance(doc, dict) else None
            ok = isinstance(doc, dict) and doc.get("node_type") == "group" and isinstance(meta, dict)
            self._prefetched[case_id] = dict(meta) if ok else None

    def case_attrs(self, case_id: str) -> dict[str, Any] | None:
        """The case's attributes, complete or not; None if the group is absent or unreadable."""
        if case_id in self._prefetched:
            return self._prefetched.pop(case_id)
        try:
            group = self.root[case_id]
            meta = group.attrs.get(ATTRS_KEY) if isinstance(group, zarr.Group) else None
        except Exception:  # a missing or half-written group is simply "not built"
            return None
        return dict(meta) if isinstance(meta, dict) else None

    def _scan(self) -> tuple[list[str], list[str]]:
        """(complete, incomplete) case ids, found by walking the group tree."""
        complete, incomplete = [], []
        for attempt in range(3):
            try:
                with warnings.catch_warnings():
                    # a folder without metadata is a write in progress, or one a kill interrupted
                    warnings.filterwarnings("ignore", "Object at .* is not recognized", UserWarning)
                    members = list(self.root.members(max_depth=None))
                break
            except Exception as exc:
                if attempt == 2:
                    raise StoreError(
                        f"{self.path}: cannot list the store ({type(exc).__name__}: {exc})"
                    ) from exc
                time.sleep(0.1)  # a build deleted a node while we listed it: list again
        for name, node in members:
            if not isinstance(node, zarr.Group):
                continue
            meta = node.attrs.get(ATTRS_KEY)
            if isinstance(meta, dict) and "source" in meta:
                (complete if meta.get("complete") is True else incomplete).append(name)
        return sorted(complete), sorted(incomplete)

    @property
    def case_ids(self) -> list[str]:
        """Ids of the complete cases, sorted."""
        if self._case_ids is None:
            self._case_ids = self._scan()[0]
        return list(self._case_ids)

    @property
    def incomplete_case_ids(self) -> list[str]:
        """Ids of case groups whose writing did not finish."""
        return self._scan()[1]

    def __getitem__(self, case_id: str) -> CaseTargets:
        meta = self.case_attrs(case_id)
        if meta is None:
            raise KeyError(case_id)
        if meta.get("complete") is not True:
            raise StoreError(f"{self.path}: case '{case_id}' is incomplete (its build did not finish)")
        group = self.root[case_id]
        images = {name: group[name] for name in IMAGE_ARRAY_NAMES if name in meta.get("checksums", {})}
        return CaseTargets(
            case_id, group["tube"], group["thin"], meta, images.get("image"), images.get("label"), group
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.case_ids)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __contains__(self, case_id: object) -> bool:
        meta = self.case_attrs(case_id) if isinstance(case_id, str) else None
        return bool(meta and meta.get("complete") is True)


def open_store(path: str | os.PathLike) -> SkeletonStore:
    """Open a built store for reading.

    Parameters
    ----------
    path : path or URL
        The store (``<dataset>/skeletons.zarr`` by default), or any URL zarr opens.

    Returns
    -------
    SkeletonStore
        Mapping of case id to :class:`CaseTargets` (complete cases only).

    Examples
    --------
    >>> store = open_store("examples/road_cracks/skeletons.zarr")
    >>> store.case_ids
    ['crack_000', 'crack_001', 'crack_002']
    >>> case = store["crack_000"]
    >>> patch = case.tube[0:256, 0:256]
    >>> patch.shape, patch.dtype
    ((256, 256), dtype('uint8'))
    """
    return SkeletonStore(open_root(path, mode="r"), path)


def read_regions(arrays: Sequence[zarr.Array], selection: Any) -> list[np.ndarray]:
    """The same region of several arrays of a case, read concurrently.

    One round trip to zarr's event loop for all of them, so the fixed cost of a
    read (shard index, chunk fetch, ~1 ms) overlaps: three 96^3 patch reads took
    24 ms concurrently against 33 ms one after another (2 busy cores; see the
    loading section of pipelines/bench.py).

    Examples
    --------
    >>> import zarr
    >>> g = zarr.group()
    >>> a = g.create_array("a", shape=(4, 4), dtype="u1"); a[...] = 1
    >>> b = g.create_array("b", shape=(4, 4), dtype="u1"); b[...] = 2
    >>> [r.tolist() for r in read_regions([a, b], (slice(0, 1), slice(0, 2)))]
    [[[1, 1]], [[2, 2]]]
    """
    if len(arrays) == 1:
        return [np.asarray(arrays[0][selection])]

    async def read_all() -> list[Any]:
        return await asyncio.gather(*(a.async_array.getitem(selection) for a in arrays))

    return [np.asarray(r) for r in sync(read_all())]


def verify_case_data(case: CaseTargets) -> list[str]:
    """Problems with a case's stored data: checksum or CRC failures, wrong shape. Empty if sound.

    Every array with a recorded checksum is read: the targets, and the image,
    label and sampling arrays of a case built with images.
    """
    problems = []
    for name in case.array_names():
        expected = case.attrs.get("checksums", {}).get(name)
        try:
            data = case.group[name][...] if case.group is not None else getattr(case, name)[...]
        except KeyError:
            problems.append(f"{name}: missing")
            continue
        except Exception as exc:  # the CRC-32C codec raises on altered chunk bytes
            problems.append(f"{name}: unreadable data ({type(exc).__name__}: {exc})")
            continue
        spatial = data.shape[1:] if name == "image" else data.shape
        if name in ARRAY_NAMES + IMAGE_ARRAY_NAMES and list(spatial) != list(case.attrs.get("shape", [])):
            problems.append(f"{name}: shape {data.shape} differs from recorded {case.attrs.get('shape')}")
        elif expected != array_checksum(data):
            problems.append(f"{name}: data checksum mismatch (chunks altered or missing)")
    return problems
