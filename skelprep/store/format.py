"""The store's contract: format versions, array names, chunking and codecs, and the one "is this case current" rule.

The authoritative description is ``docs/store-format.md``. Nothing here does I/O;
zarr's codec classes are imported where an array is laid out (:func:`array_layout`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: targets only; 2 adds image, label and sampling arrays (--with-images)
ATTRS_KEY = "skelprep"
DEFAULT_STORE_NAME = "skeletons.zarr"
# The stored targets, by name: the one list every reader and writer takes them from.
TARGET_NAMES: tuple[str, ...] = ("tube", "thin")
ARRAY_NAMES = TARGET_NAMES
IMAGE_ARRAY_NAMES: tuple[str, ...] = ("image", "label")
# Chunk keys ``c.i.j``: an array's shards lie in its own folder, no folder per index level.
CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}
# Label maps: 128^3 chunks. Tubes are sparse and compress ~100x, so decoding a chunk is cheap and
# zarr's per-chunk overhead dominates a patch read (random 96^3 patch of a 256x512x512 vessel case:
# 2.6 ms with 128^3 chunks, 4.7 ms with 64^3, 14.9 ms with 32^3; pipelines/bench.py, store layouts).
_CHUNK = {2: (256, 256), 3: (128, 128, 128)}
_SHARD_CHUNKS = {2: (8, 8), 3: (2, 2, 2)}
# Images are dense and noisy, so decoding dominates: smaller chunks decode less per patch.
_IMAGE_CHUNK = {2: (256, 256), 3: (64, 64, 64)}
_IMAGE_SHARD_CHUNKS = {2: (8, 8), 3: (4, 4, 4)}
_ZSTD_LEVEL = 3


class StoreError(ValueError):
    """A store that is missing, unreadable, of another format, or lacks a case."""


def default_store_path(dataset: str | os.PathLike) -> str:
    """Where a dataset's store lives unless told otherwise: ``<dataset>/skeletons.zarr``.

    >>> default_store_path("data/Dataset001_Roads")
    'data/Dataset001_Roads/skeletons.zarr'
    """
    return os.path.join(os.fspath(dataset), DEFAULT_STORE_NAME)


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

    ``meta``: the case's attributes (None when it is not in the store). The
    source's ``fingerprint``, the build's ``params`` and the SHA-256 of the image
    files (``image_fingerprints``, when the case should carry its images) are
    compared where given.

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


def checked_root_meta(path: str, meta: Any, *, writing: bool = False) -> dict[str, Any]:
    """``meta``, a store's root ``attributes["skelprep"]``, if a skelprep of this version reads (or writes) it.

    Raises StoreError where ``meta`` is no JSON object, its ``format_version`` no
    plain integer (shown as stored), or a version this skelprep does not know.

    >>> checked_root_meta("s.zarr", {"format_version": 2})
    {'format_version': 2}
    >>> checked_root_meta("s.zarr", {"format_version": "2"})
    Traceback (most recent call last):
    ...
    skelprep.store.format.StoreError: s.zarr: invalid store format_version '2' (a str), not a version number; a skelprep store records an integer (2 for this skelprep)
    """
    if not isinstance(meta, dict):
        raise StoreError(f"{path}: not a skelprep store (attributes 'skelprep' is not an object)")
    if "format_version" not in meta:
        raise StoreError(f"{path}: not a skelprep store (its 'skelprep' attributes have no format_version)")
    version = meta["format_version"]
    if type(version) is not int or version < 1:  # bool is an int, and True == 1, 1.0 == 1
        raise StoreError(
            f"{path}: invalid store format_version {version!r} (a {type(version).__name__}), not a version "
            f"number; a skelprep store records an integer ({FORMAT_VERSION} for this skelprep)"
        )
    if version not in READABLE_VERSIONS:
        if writing:
            raise StoreError(
                f"{path}: store format version {version}, this skelprep writes {FORMAT_VERSION}; build into "
                "a new store (--out) or upgrade skelprep"
            )
        known = " and ".join(map(str, READABLE_VERSIONS))
        raise StoreError(
            f"{path}: store format version {version}, this skelprep reads {known}; upgrade skelprep"
        )
    return meta


def label_counts(array: np.ndarray, labels: Iterable[int] | None = None) -> dict[str, int]:
    """Voxel count of every non-zero label, keyed by the label as a string (JSON keys).

    ``labels``: values the array can hold besides 0 (any superset), when known.

    >>> import numpy as np
    >>> a = np.array([[0, 2, 2], [5, 0, 0]], np.uint8)
    >>> label_counts(a), label_counts(a, labels=[2, 5, 7]), label_counts(a.clip(0, 3))
    ({'2': 2, '5': 1}, {'2': 2, '5': 1}, {'2': 2, '3': 1})
    """
    import numpy as np

    known = None if labels is None else sorted({int(v) for v in labels} - {0})
    if known is not None and len(known) <= 4:  # a few labels: counted directly, no bincount's int64 copy
        return {str(v): n for v in known if (n := int(np.count_nonzero(array == v)))}
    counts = np.bincount(array[array != 0])
    return {str(v): int(counts[v]) for v in np.flatnonzero(counts) if v != 0}


def array_checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's C-order bytes; stored so ``verify`` can check the data."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def chunk_shape(shape: tuple[int, ...], *, image: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(chunks, shards) for an array's spatial axes: chunks sized for patch reads, a few chunks per shard.

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


def array_layout(
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    spatial: tuple[int, ...],
    *,
    slice_chunks: bool = False,
) -> dict[str, Any]:
    """The ``create_array`` arguments of a case array: chunks, shards and codecs by its role.

    An array of the case's ``spatial`` shape is a label map (Zstandard, 128³/256²
    chunks); ``image`` is channel-first (Blosc-Zstandard level 1 after a byte
    shuffle: on a 512x512x300 int16 CT 60 MB instead of 71 MB with plain
    Zstandard 3, written 3x faster; 64³ chunks); anything else is a small array in
    one chunk. With ``slice_chunks`` a 3D label map is chunked one slice along axis
    0 at a time, 16 slices a shard (nnU-Net's 2D configurations read slices). Every
    chunk carries a CRC-32C.
    """
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    compressor = ZstdCodec(level=_ZSTD_LEVEL)
    if name == "image" and tuple(shape[1:]) == tuple(spatial):
        chunks, shards = chunk_shape(spatial, image=True)
        chunks, shards = (1, *chunks), (1, *shards)
        compressor = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=dtype.itemsize)
    elif tuple(shape) == tuple(spatial) and slice_chunks and len(shape) == 3:
        chunks, shards = chunk_shape(shape[1:])
        chunks, shards = (1, *chunks), (min(16, shape[0]), *shards)
    elif tuple(shape) == tuple(spatial):
        chunks, shards = chunk_shape(shape)
    else:
        return {"chunks": tuple(max(n, 1) for n in shape), "compressors": [compressor, Crc32cCodec()]}
    return {"chunks": chunks, "shards": shards, "compressors": [compressor, Crc32cCodec()]}
