"""The store's contract: format versions, where a case's arrays lie, chunking and codecs, OME-Zarr metadata,
and the one "is this case current" rule.

The authoritative description is ``docs/store-format.md``. Nothing here does I/O;
zarr's codec classes are imported where an array is laid out (:func:`array_layout`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

__all__ = (
    "FORMAT_VERSION READABLE_VERSIONS ATTRS_KEY DEFAULT_STORE_NAME TARGET_NAMES ARRAY_NAMES EXTRA_TARGETS IMAGE_ARRAY_NAMES "
    "StoreError CaseState case_state checked_root_meta default_store_path label_counts array_checksum chunk_shape "
    "array_path"
).split()

FORMAT_VERSION = 3
# 1: targets only; 2 adds image, label and sampling arrays (--with-images); 3: each case an OME-Zarr image
READABLE_VERSIONS = (1, 2, 3)
OME_VERSION = "0.5"
ATTRS_KEY = "skelprep"
DEFAULT_STORE_NAME = "skeletons.zarr"
# The stored targets, by name: the one list every reader and writer takes them from.
TARGET_NAMES: tuple[str, ...] = ("tube", "thin")
ARRAY_NAMES = TARGET_NAMES
# Targets a build adds on request (``--targets``, :mod:`skelprep.targets`), by name: float distance maps
# (``map``: chunked for patches, by name in the case group) or label maps (OME-Zarr image-labels).
EXTRA_TARGETS: dict[str, str] = {"sdf": "map", "radius": "map", "components": "label"}
IMAGE_ARRAY_NAMES: tuple[str, ...] = ("image", "label")
# Chunk keys ``c.i.j``: an array's shards lie in its own folder, no folder per index level.
CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}
# The patch a training reads, when the build is not told (--patch-size): chunks are laid out for it.
DEFAULT_PATCH = {2: (512, 512), 3: (128, 128, 128)}
# Chunks per shard edge: shards bundle chunks into few files; a patch read decodes only its chunks.
_SHARD_CHUNKS = {2: 8, 3: 4}
_ZSTD_LEVEL = 3
# Colours of classes 1, 2, ... (class k: CLASS_COLOURS[(k - 1) % 8]), for viewers and previews alike.
CLASS_COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
)


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
    changed) or ``params-changed`` (``failed-input``: its source cannot be read); ``reason`` says it in words. ``images_only``
    is True when the targets are current and only the case's images need
    (re)writing: an image changed, or the case was built without its images.
    ``targets_only`` is True when the tube and thin skeleton are current and only
    targets beside them (:data:`EXTRA_TARGETS`) need adding.
    """

    state: Literal["ok", "missing", "incomplete", "stale", "params-changed", "failed-input"]
    reason: str = ""
    images_only: bool = False
    targets_only: bool = False

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def case_state(
    meta: Mapping[str, Any] | None,
    *,
    fingerprint: str | None = None,
    params: Mapping[str, Any] | None = None,
    image_fingerprints: Sequence[str] | None = None,
    layout: int | None = None,
    targets: Sequence[str] | Mapping[str, Mapping[str, Any]] | None = None,
) -> CaseState:
    """The one rule for "is this stored case complete and current?".

    ``meta``: the case's attributes (None when it is not in the store). The
    source's ``fingerprint``, the build's ``params`` and the SHA-256 of the image
    files (``image_fingerprints``, when the case should carry its images) are
    compared where given, and so is the case's ``layout`` (the store format its
    arrays are laid out in: a build rewrites an older one, its targets reused),
    and whether it holds the ``targets`` of :data:`EXTRA_TARGETS` asked for (its
    ``targets`` attribute: a build adds the missing ones, the others reused). Given
    as a mapping, name -> parameters, each target's recorded ``params`` must also
    hold those values (an absent key reads as None); a target computed otherwise
    is recomputed, the others reused.

    >>> case_state(None).state
    'missing'
    >>> meta = {"complete": True, "fingerprint": "ab", "params": {"radius": 2}}
    >>> case_state(meta, fingerprint="ab", params={"radius": 2}).ok
    True
    >>> case_state(meta, fingerprint="cd").state
    'stale'
    >>> case_state(meta, fingerprint="ab", image_fingerprints=["ef"]).images_only
    True
    >>> case_state(meta, targets=["sdf"]).reason
    "lacks the target 'sdf' (a build adds it)"
    >>> meta["targets"] = {"sdf": {"params": {"classes": [1, 2]}}}
    >>> case_state(meta, targets={"sdf": {"classes": [1, 2, 3]}}).reason
    "target 'sdf' was built with other parameters (a build recomputes it)"
    """
    if meta is None:
        return CaseState("missing", "not built")
    if meta.get("complete") is not True:
        return CaseState("incomplete", "its build did not finish")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        return CaseState("stale", "mask changed since it was built")
    if params is not None and meta.get("params") != params:
        return CaseState("params-changed", "built with other parameters")
    if layout is not None and meta.get("layout", 1) != layout:
        return CaseState("stale", f"stored in an older store format (a build rewrites it as {layout})", True)
    if image_fingerprints is not None:
        stored = (meta.get("images") or {}).get("fingerprints")
        if stored is None:
            return CaseState(
                "stale", "built without its images (a build with images adds them)", images_only=True
            )
        if list(stored) != list(image_fingerprints):
            return CaseState("stale", "an image changed since it was built", images_only=True)
    records = meta.get("targets") or {}
    missing = [name for name in targets or () if name not in records]
    if missing:
        listed = ", ".join(f"'{name}'" for name in missing)
        return CaseState(
            "stale",
            f"lacks the target{'s' * (len(missing) > 1)} {listed} (a build adds {'them' if len(missing) > 1 else 'it'})",
            targets_only=True,
        )
    if isinstance(targets, Mapping):
        for name, want in targets.items():
            recorded = (records[name] or {}).get("params") or {}
            if any(recorded.get(key) != value for key, value in want.items()):
                return CaseState(
                    "stale",
                    f"target '{name}' was built with other parameters (a build recomputes it)",
                    targets_only=True,
                )
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
    skelprep.store.format.StoreError: s.zarr: invalid store format_version '2' (a str), not a version number; a skelprep store records an integer (3 for this skelprep)
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
                "a new store or upgrade skelprep"
            )
        known = ", ".join(map(str, READABLE_VERSIONS[:-1])) + f" and {READABLE_VERSIONS[-1]}"
        versions = meta.get("versions")
        writer = versions.get("skelprep") if isinstance(versions, dict) else None
        needs = f" to {writer} or later (it wrote this store)" if isinstance(writer, str) else ""
        raise StoreError(
            f"{path}: store format version {version}, this skelprep reads {known}; upgrade skelprep{needs}"
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


def _edge(patch: int) -> int:
    """A chunk edge for a patch edge: half of it, a power of two in 16..256; 1 for a patch of one slice."""
    return 1 if patch <= 1 else max(16, min(256, 1 << max(0, (patch // 2).bit_length() - 1)))


def chunk_shape(
    shape: tuple[int, ...], patch: tuple[int, ...] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(chunks, shards) of an array's spatial axes, laid out for reading patches of ``patch`` voxels.

    Chunk edges are half the patch's (a power of two in 16..256; 1 along an axis
    the patch is one slice thick), as nnU-Net's ``comp_blosc2_params`` sizes its
    blocks from the patch. Shards hold 4 (3D) or 8 (2D) chunks per edge, 16
    one-slice chunks; both are clipped to the array. ``patch`` defaults to
    :data:`DEFAULT_PATCH`.

    >>> chunk_shape((300, 512, 512))
    ((64, 64, 64), (256, 256, 256))
    >>> chunk_shape((40, 512, 512), patch=(1, 512, 512))
    ((1, 256, 256), (16, 512, 512))
    >>> chunk_shape((999, 960))
    ((256, 256), (1024, 1024))
    """
    if patch is None or len(patch) != len(shape):  # a hint for other arrays (2D for 3D) does not apply
        patch = DEFAULT_PATCH.get(len(shape), (128,) * len(shape))
    chunks = tuple(min(_edge(p), n) for p, n in zip(patch, shape, strict=True))
    per = _SHARD_CHUNKS.get(len(shape), 4)
    shards = tuple(
        c * min(16 if c == 1 else per, math.ceil(n / c)) for c, n in zip(chunks, shape, strict=True)
    )
    return chunks, shards


def array_kind(name: str, shape: tuple[int, ...], dtype: np.dtype, spatial: tuple[int, ...]) -> str:
    """How a case array is stored: ``image`` (``image``, channel-first), ``label`` (an integer map of the
    case's spatial shape: the mask, ``tube``, ``thin``, ``components``), ``map`` / ``maps`` (a float distance
    map of :data:`EXTRA_TARGETS`; ``maps`` channel-first, one channel per class) or ``array`` (anything else)."""
    if name == "image" and tuple(shape[1:]) == tuple(spatial):
        return "image"
    if EXTRA_TARGETS.get(name) == "map" and tuple(shape[len(shape) - len(spatial) :]) == tuple(spatial):
        return "maps" if len(shape) > len(spatial) else "map"
    return "label" if tuple(shape) == tuple(spatial) and dtype.kind in "uib" else "array"


def array_layout(
    kind: str, shape: tuple[int, ...], dtype: np.dtype, patch: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """The ``create_array`` arguments (chunks, shards, codecs) of a case array of this kind.

    Images and distance maps: Blosc-Zstandard level 1 after a byte shuffle (dense
    values; for images the stored bytes are 0.80x the ``.nii.gz``, Blosc-LZ4 decodes
    faster but keeps 1.18x); labels: Blosc-LZ4 with shuffle (sparse maps: every chunk
    decodes at memory speed); all chunked for ``patch`` (:func:`chunk_shape`), a
    leading channel axis one channel a chunk. Other arrays
    (samples): Zstandard in one chunk (read whole, once). Every chunk carries a CRC-32C.
    """
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    if kind == "array":
        chunks = tuple(max(n, 1) for n in shape)
        return {"chunks": chunks, "compressors": [ZstdCodec(level=_ZSTD_LEVEL), Crc32cCodec()]}
    lead = (1,) if kind in ("image", "maps") else ()
    chunks, shards = chunk_shape(tuple(shape[len(lead) :]), patch)
    cname, clevel = ("zstd", 1) if kind in ("image", "map", "maps") else ("lz4", 5)
    blosc = BloscCodec(cname=cname, clevel=clevel, shuffle="shuffle", typesize=dtype.itemsize)
    return {"chunks": lead + chunks, "shards": lead + shards, "compressors": [blosc, Crc32cCodec()]}


def array_paths(kinds: Mapping[str, str]) -> dict[str, str]:
    """Where each array of a case lies in its group (format 3), by name, from :func:`array_kind`.

    The image is the OME-Zarr image ``0``; without one (a store built without
    images) the mask (``label``) is. Label maps are OME-Zarr image-labels
    ``labels/<name>/0``; other arrays lie in the case group by their name.

    >>> array_paths({"tube": "label", "label": "label", "image": "image", "tube_locations": "array"})
    {'tube': 'labels/tube/0', 'label': 'labels/label/0', 'image': '0', 'tube_locations': 'tube_locations'}
    >>> array_paths({"tube": "label", "label": "label"})
    {'tube': 'labels/tube/0', 'label': '0'}
    """
    image = next((n for n, k in kinds.items() if k == "image"), "label" if "label" in kinds else None)
    return {n: "0" if n == image else f"labels/{n}/0" if k == "label" else n for n, k in kinds.items()}


def array_path(meta: Mapping[str, Any], name: str) -> str:
    """Where array ``name`` lies in a case group: as its attributes record it (format 3), else by its name."""
    return (meta.get("arrays") or {}).get(name, name)


def axis_names(axes: Any, ndim: int) -> list[str]:
    """OME-Zarr axis names of a case's spatial axes: its ``axes`` letters (``zyx``, ``ijk``), else z, y, x."""
    ok = isinstance(axes, str) and len(axes) == ndim and len(set(axes)) == ndim and "c" not in axes
    return list(axes) if ok else list("zyx"[-ndim:])


def ome_multiscale(names: list[str], spacing: Sequence[float], channels: bool) -> dict[str, Any]:
    """An OME-Zarr 0.5 ``multiscales`` entry: one level ``0`` scaled by the spacing, axes named."""
    axes = [{"name": n, "type": "space"} for n in names]
    scale = [float(s) for s in spacing]
    if channels:
        axes, scale = [{"name": "c", "type": "channel"}, *axes], [1.0, *scale]
    return {
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }


def ome_label(classes: Mapping[int, str]) -> dict[str, Any]:
    """The ``image-label`` metadata of a label map: a colour and a name per class."""
    colours = [
        {"label-value": v, "rgba": [*CLASS_COLOURS[(v - 1) % len(CLASS_COLOURS)], 255]} for v in classes
    ]
    names = [{"label-value": v, "name": name} for v, name in classes.items()]
    return {"version": OME_VERSION, "colors": colours, "properties": names, "source": {"image": "../../"}}
