"""The Zarr sidecar store (format version 2): the contract, reading cases, telling what is built.

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
next build into them. Writing lives in :mod:`skelprep.writer`; a case is written as: delete the old group, create the
group with ``complete: false``, write every array, then rewrite the group's
attributes with ``complete: true`` (zarr's local store replaces ``zarr.json``
atomically).
A case without ``complete: true`` is never reported as built. Chunks carry a
CRC-32C checksum, and the attributes a SHA-256 of each array's bytes, so that
altered or missing chunks are detected by :func:`verify_case_data`.

Reading a case while a build may rewrite it (the reader's protocol of
``docs/store-format.md``): its attributes are read first (they must say
complete), then its arrays, then its attributes again; every write of a case
records a new ``generation`` token, so the data read are the case as first read
exactly when the second read finds the same token, still complete
(:meth:`SkeletonStore.confirm`). Otherwise the read raises :class:`StoreError`
("being rebuilt"); an array or chunk file gone during the read is the same
rewrite. :class:`CaseTargets` checks every read of its arrays so.

Cases are listed from the group documents alone (:func:`_walk`): an array's
damaged metadata makes its own case fail to open (:class:`StoreError` naming
it, mended by ``skelprep build --repair``), never the listing of the others.

Reading needs nothing but zarr: ``zarr.open_group(out)["case_001/tube"][...]``.

Here, a local store's root and case ``zarr.json`` documents are read straight
from its folder (:mod:`skelprep._files`), and zarr is imported and the root group
opened only when something needs them (arrays, listing the cases): planning an
up-to-date rerun imports no zarr (its import costs 0.2-0.3 s, more than the plan
of 504 cases). Stores at a URL go through zarr throughout.

The root that :mod:`skelprep.writer` writes through is a local store's folder
path, or the root group of a store at a URL (``zarr.Group | str``;
:func:`files_at` gives the files below either, :func:`root_group` opens the
group where zarr's API is needed): a build of masks into a local store then
imports no zarr either (0.2-0.25 s of import on 2 cores, 15 % of a build of 14
small 2D masks).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from skelprep import _files
from skelprep._fs import is_url, options_for
from skelprep._util import first_line

if TYPE_CHECKING:
    import numpy as np
    import zarr

__all__ = [
    "FORMAT_VERSION",
    "DEFAULT_STORE_NAME",
    "default_store_path",
    "CaseState",
    "case_state",
    "ARRAY_NAMES",
    "IMAGE_ARRAY_NAMES",
    "READABLE_VERSIONS",
    "StoreError",
    "CaseTargets",
    "CheckedArray",
    "SkeletonStore",
    "open_store",
    "open_root",
    "damaged_root",
    "local_root_document",
    "consolidated_entries",
    "store_key",
    "files_at",
    "root_group",
    "new_local_store",
    "array_checksum",
    "label_counts",
    "chunk_shape",
    "verify_case_data",
    "read_checked",
    "read_regions",
    "checked_root_meta",
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


def label_counts(array: np.ndarray, labels: Iterable[int] | None = None) -> dict[str, int]:
    """Voxel count of every non-zero label, keyed by the label as a string (JSON keys).

    ``labels``: values the array can hold besides 0 (any superset), when the caller
    knows them, e.g. the mask's labels for a target. With a few, each is counted
    directly (one label: ``count_nonzero``, 0.02 ms for 512x512 instead of 0.2 ms).

    >>> import numpy as np
    >>> a = np.array([[0, 2, 2], [5, 0, 0]], np.uint8)
    >>> label_counts(a), label_counts(a, labels=[2, 5, 7]), label_counts(a.clip(0, 3))
    ({'2': 2, '5': 1}, {'2': 2, '5': 1}, {'2': 2, '3': 1})
    """
    import numpy as np

    if labels is None and array.size:  # a binary or few-label mask: its maximum bounds the labels
        high = int(array.max())  # 0.02 ms for 512x512, where bincount takes 0.4 ms
        labels = range(1, high + 1) if high <= 4 else None
    known = None if labels is None else sorted({int(v) for v in labels} - {0})
    if known is not None and len(known) <= 4:
        if len(known) == 1:
            counts = {known[0]: int(np.count_nonzero(array))}
        else:
            counts = {v: int(np.count_nonzero(array == v)) for v in known}
        return {str(v): n for v, n in counts.items() if n}
    counts = np.bincount(array[array != 0])  # only the labelled voxels: bincount casts to int64
    return {str(v): int(counts[v]) for v in np.flatnonzero(counts) if v != 0}


def array_checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's C-order bytes; stored so ``verify`` can check the data."""
    import numpy as np

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


def open_root(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """Open the store's root group without trusting consolidated metadata (it may be stale).

    ``path`` may be a URL (``s3://bucket/x.zarr``); it is opened with the storage
    options of :mod:`skelprep._fs`.
    """
    import zarr

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


def _parse(raw: bytes | None) -> Any:
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None


def local_root_document(path: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed root ``zarr.json`` of a local store, read straight from its folder (no zarr).

    None for a URL, and where the document is absent, unreadable or not a zarr v3
    group with attributes: :func:`open_root` then opens the store (or says why not).
    """
    path = os.fspath(path)
    if is_url(path):  # file:// too: zarr opens it with fsspec, not as a folder
        return None
    try:
        doc = _parse(_files.get(path, "zarr.json"))
    except OSError:  # unreadable (permissions, ...): open_root says why
        return None
    ok = (
        isinstance(doc, dict)
        and doc.get("zarr_format") == 3
        and doc.get("node_type") == "group"
        and isinstance(doc.get("attributes", {}), dict)
    )
    return doc if ok else None


def consolidated_entries(document: Any) -> dict[str, Any] | None:
    """The consolidated metadata of a root ``zarr.json`` document (``{node path: document}``), or None."""
    consolidated = document.get("consolidated_metadata") if isinstance(document, dict) else None
    entries = consolidated.get("metadata") if isinstance(consolidated, dict) else None
    return dict(entries) if isinstance(entries, dict) else None


def _case_meta(doc: Any) -> dict[str, Any] | None:
    """The skelprep attributes of a case group's parsed ``zarr.json``, None if it is no such group."""
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return None
    attributes = doc.get("attributes", {})
    meta = attributes.get(ATTRS_KEY) if isinstance(attributes, dict) else None
    return dict(meta) if isinstance(meta, dict) else None


def store_key(*parts: str) -> str:
    """The zarr store key of path parts, empty parts (the store's root) left out.

    >>> store_key("", "case_001", "zarr.json")
    'case_001/zarr.json'
    """
    return "/".join(p for p in parts if p)


def files_at(root: zarr.Group | str) -> tuple[Any, str]:
    """(store for :mod:`skelprep._files`, path of the root in it) of a root (a root group, or a local store's folder path).

    >>> files_at("data/skeletons.zarr")
    ('data/skeletons.zarr', '')
    """
    if isinstance(root, str):
        return root, ""
    return root.store, root.store_path.path


def root_group(root: zarr.Group | str) -> zarr.Group:
    """The root group of a root, opened writable where it is a local folder's path (imports zarr)."""
    return open_root(root, mode="a") if isinstance(root, str) else root


# Case ids nest a few folders deep (``left/img_07``); the walk stops at this depth (a symlink loop).
_MAX_DEPTH = 32


def _walk(files: Any, root_path: str) -> tuple[list[str], list[str]]:
    """(complete, incomplete) case ids below ``root_path`` of a store, from the group documents alone.

    A case's arrays are never opened: one damaged array document cannot hide the
    other cases (zarr's listing parses every node). Incomplete are case groups
    without ``complete: true``, nodes whose ``zarr.json`` does not parse, and
    folders of arrays without group metadata (a build killed before it wrote the
    case's metadata). ``files``, ``root_path``: as :func:`files_at` gives them.
    """
    complete: list[str] = []
    incomplete: set[str] = set()
    level: list[tuple[str, bool]] = [("", False)]  # (folder, whether it lacks group metadata)
    for _ in range(_MAX_DEPTH):
        if not level:
            break
        listed = _files.list_many(files, [store_key(root_path, folder) for folder, _ in level])
        children = [
            (store_key(folder, name), bare)
            for (folder, bare), names in zip(level, listed, strict=True)
            for name in names
            if name != "zarr.json" and not name.endswith(".partial")
        ]
        raws = _files.get_many(files, [store_key(root_path, child, "zarr.json") for child, _ in children])
        level = []
        for (child, in_bare), raw in zip(children, raws, strict=True):
            if raw is None:  # a folder without metadata (or a file): look inside
                level.append((child, True))
                continue
            doc = _parse(raw)
            kind = doc.get("node_type") if isinstance(doc, dict) else None
            meta = _case_meta(doc)
            if kind == "array":
                if in_bare:  # arrays in a folder without group metadata: a case a kill cut short
                    incomplete.add(child.rpartition("/")[0])
            elif kind != "group":  # metadata that does not parse: a damaged node
                incomplete.add(child)
            elif meta is not None and "source" in meta:
                if meta.get("complete") is True:
                    complete.append(child)
                else:
                    incomplete.add(child)
            else:  # a group above nested case ids
                level.append((child, False))
    return sorted(complete), sorted(incomplete)


def damaged_root(path: str | os.PathLike) -> str | None:
    """Why a local store's root ``zarr.json`` cannot be read although skelprep cases lie below it.

    The reason names the file (``the root metadata zarr.json is not valid JSON (...)``).
    None where the root document is sound, for a URL, and for a folder that holds
    no skelprep case (that is no store of ours). A build rebuilds such a root from
    the case groups, which hold everything a case needs.
    """
    path = os.fspath(path)
    if is_url(path) or local_root_document(path) is not None or not os.path.isdir(path):
        return None
    try:
        raw = _files.get(path, "zarr.json")
    except OSError as exc:
        why = f"unreadable ({first_line(exc, with_type=True)})"
    else:
        if raw is None:
            why = "missing"
        else:
            try:
                json.loads(raw)
                why = "not a zarr v3 group document"
            except ValueError as exc:
                why = f"not valid JSON ({first_line(exc)})"
    if not any(_walk(path, "")):
        return None
    return f"the root metadata zarr.json is {why}"


def _same_write(now: Mapping[str, Any], then: Mapping[str, Any]) -> bool:
    """Whether two reads of a case's attributes see one write of it (its ``generation`` token).

    Cases written without a token are compared whole (as JSON: a NaN equals itself there).
    """
    if now.get("generation") is not None or then.get("generation") is not None:
        return now.get("generation") == then.get("generation")
    return json.dumps(now, sort_keys=True) == json.dumps(then, sort_keys=True)


def _checked(confirm: Callable[[], None] | None, read: Callable[[], Any]) -> Any:
    """``read()``, then ``confirm()``; an exception of the read is confirmed first.

    A file gone under the read (KeyError, FileNotFoundError) or chunks read as the
    fill value mean a build rewrote the case: ``confirm`` then raises StoreError.
    """
    if confirm is None:
        return read()
    try:
        data = read()
    except Exception:
        confirm()
        raise
    confirm()
    return data


def new_local_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a local path with nothing there yet (absent, or an empty folder).

    >>> new_local_store("/nonexistent/skeletons.zarr"), new_local_store("s3://bucket/x.zarr")
    (True, False)
    """
    path = os.fspath(path)
    if is_url(path):
        return False
    try:
        return not os.listdir(path)
    except FileNotFoundError:
        return True
    except OSError:  # a file, or unreadable: open_root says what it is
        return False


class CheckedArray:
    """A stored array of a case, read as the case was opened or not at all.

    ``a[selection]`` gives a numpy array and reads only the chunks it needs, then
    confirms that no build rewrote the case meanwhile (:meth:`SkeletonStore.confirm`:
    :class:`StoreError` "being rebuilt" otherwise). Every other attribute is the
    zarr array's (``shape``, ``dtype``, ``chunks``, ...); ``array`` is the zarr
    array itself, whose reads are not checked.
    """

    __slots__ = ("array", "confirm")

    def __init__(self, array: zarr.Array, confirm: Callable[[], None] | None) -> None:
        self.array = array
        self.confirm = confirm

    def __getitem__(self, selection: Any) -> Any:
        return _checked(self.confirm, lambda: self.array[selection])

    def __getattr__(self, name: str) -> Any:
        if name in CheckedArray.__slots__:  # not set yet (copy, unpickling): no recursion into the array
            raise AttributeError(name)
        return getattr(self.array, name)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        import numpy as np

        return np.asarray(self[...], dtype=dtype)

    def __len__(self) -> int:
        return len(self.array)

    def __repr__(self) -> str:
        return f"CheckedArray({self.array!r})"


@dataclass(frozen=True)
class CaseTargets:
    """The stored targets of one case.

    Attributes
    ----------
    case_id : str
    tube, thin : CheckedArray (a zarr.Array where built by hand)
        Lazily read label maps; ``case.tube[...]`` gives a numpy array,
        ``case.tube[10:74, 0:64, 0:64]`` reads only the chunks it needs. A read
        while a build rewrites the case raises StoreError ("being rebuilt"),
        never gives torn data.
    attrs : dict
        The case's provenance attributes.
    image, label : CheckedArray or None
        The channel-first image and the mask (cases built ``--with-images``).
    group : zarr.Group or None
        The case's group (its small arrays: :meth:`read`).
    confirm : callable or None
        Raises StoreError when a build has rewritten the case since it was opened
        (:meth:`SkeletonStore.confirm`); :meth:`checked` calls it after a read.
    """

    case_id: str
    tube: Any
    thin: Any
    attrs: dict[str, Any]
    image: Any = None
    label: Any = None
    group: zarr.Group | None = None
    confirm: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def checked(self, read: Callable[[], Any]) -> Any:
        """``read()`` (reads of this case's arrays), confirmed: StoreError if a build rewrote the case meanwhile.

        For several reads at one confirmation, through the arrays' unchecked
        ``array`` attributes (one metadata read instead of one per array).
        """
        return _checked(self.confirm, read)

    @property
    def has_images(self) -> bool:
        """Whether the case carries its image and label arrays (built ``--with-images``)."""
        return self.image is not None and self.label is not None

    def read(self, name: str) -> np.ndarray:
        """A whole array of the case by name (e.g. ``"tube_locations"``)."""
        if self.group is None:
            raise KeyError(name)
        group = self.group
        return self.checked(lambda: group[name][...])

    def array_names(self) -> list[str]:
        """Names of the case's arrays that carry a checksum (every array a build wrote)."""
        return list(self.attrs.get("checksums") or ARRAY_NAMES)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(self.attrs.get("spacing") or (1.0,) * len(self.attrs["shape"]))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.attrs["shape"])


def checked_root_meta(path: str, meta: Any, *, writing: bool = False) -> dict[str, Any]:
    """``meta``, a store's root ``attributes["skelprep"]``, if a skelprep of this version reads (or writes) it.

    Raises
    ------
    StoreError
        ``meta`` is not a JSON object, its ``format_version`` is not an integer
        version (a string, bool, float or null: shown as stored), or a version
        this skelprep does not know.

    Examples
    --------
    >>> checked_root_meta("s.zarr", {"format_version": 2})
    {'format_version': 2}
    >>> checked_root_meta("s.zarr", {"format_version": "2"})
    Traceback (most recent call last):
    ...
    skelprep.store.StoreError: s.zarr: invalid store format_version '2' (a str), not a version number; a skelprep store records an integer (2 for this skelprep)
    """
    if not isinstance(meta, dict):
        raise StoreError(f"{path}: not a skelprep store (attributes 'skelprep' is not an object)")
    if "format_version" not in meta:
        raise StoreError(f"{path}: not a skelprep store (its 'skelprep' attributes have no format_version)")
    version = meta["format_version"]
    # bool is an int, and True == 1, 1.0 == 1: only a plain int names a version
    if type(version) is not int or version < 1:
        raise StoreError(
            f"{path}: invalid store format_version {version!r} (a {type(version).__name__}), not a version "
            f"number; a skelprep store records an integer ({FORMAT_VERSION} for this skelprep)"
        )
    if version not in READABLE_VERSIONS:
        known = " and ".join(map(str, READABLE_VERSIONS))
        if writing:
            raise StoreError(
                f"{path}: store format version {version}, this skelprep writes {FORMAT_VERSION}; build into "
                "a new store (--out) or upgrade skelprep"
            )
        raise StoreError(
            f"{path}: store format version {version}, this skelprep reads {known}; upgrade skelprep"
        )
    return meta


class SkeletonStore(Mapping[str, CaseTargets]):
    """A built store: a read-only mapping from case id to :class:`CaseTargets`.

    Only complete cases are listed. Use :func:`open_store` to open one.

    ``root`` may be None for a local store: ``attributes`` (the root group's, as
    read by :func:`local_root_document`) then stand for it, case attributes are
    read from the folder, and the group is opened when first needed.
    """

    def __init__(
        self, root: zarr.Group | None, path: str | os.PathLike, *, attributes: Mapping[str, Any] | None = None
    ) -> None:
        self._root = root
        self.path = os.fspath(path)
        if root is None and (attributes is None or is_url(self.path)):
            raise ValueError("a SkeletonStore without its root group needs a local path and its attributes")
        meta = (attributes if root is None else root.attrs).get(ATTRS_KEY)
        if meta is None:
            raise StoreError(f"{self.path}: not a skelprep store (no 'skelprep' attributes)")
        self.attrs: dict[str, Any] = checked_root_meta(self.path, meta)
        self._case_ids: list[str] | None = None
        self._prefetched: dict[str, dict[str, Any] | None] = {}
        self._cases_only = False  # opened by of_cases: the root group is not read

    @classmethod
    def of_cases(cls, path: str | os.PathLike) -> SkeletonStore:
        """The cases of a local store whose root metadata is damaged (:func:`damaged_root`).

        Read from their own groups; ``attrs`` hold only the format version and
        ``with_images`` (the build's parameters and the rest were in the lost root).
        """
        store = cls(None, path, attributes={ATTRS_KEY: {"format_version": FORMAT_VERSION}})
        store._cases_only = True
        # a store built with images keeps them (the root said so): any case that carries them tells
        store.attrs["with_images"] = any(
            "image" in ((store.case_attrs(c) or {}).get("checksums") or {}) for c in store.case_ids
        )
        return store

    def __repr__(self) -> str:
        return f"SkeletonStore({self.path!r}, cases={len(self)})"

    @property
    def root(self) -> zarr.Group:
        """The store's root group (opened on first use when the store was opened from its folder)."""
        if self._root is None:
            self._root = open_root(self.path, mode="r")
        return self._root

    @property
    def dataset_path(self) -> str | None:
        """Where the store's dataset lies now: a local path or a URL; None where the store does not say.

        The root's ``dataset`` attribute is relative to the store (``..`` for
        ``<dataset>/skeletons.zarr``), a URL, an absolute path (``--absolute-paths``,
        and stores built before paths were recorded relative), or null (a local
        dataset built into a store at a URL records no local path).
        """
        recorded = self.attrs.get("dataset")
        if not isinstance(recorded, str) or not recorded:
            return None
        if is_url(recorded) or os.path.isabs(recorded):
            return recorded
        return _joined(self.path if is_url(self.path) else os.path.abspath(self.path), recorded)

    def resolve(self, recorded: str | None) -> str | None:
        """A path the store records for a dataset file (a case's ``source``, ``images.sources``) as it lies now.

        Relative paths are taken from :attr:`dataset_path` (None where that is
        unknown); URLs and absolute paths are returned as recorded.
        """
        if not isinstance(recorded, str) or not recorded:
            return None
        if is_url(recorded) or os.path.isabs(recorded):
            return recorded
        dataset = self.dataset_path
        return None if dataset is None else _joined(dataset, recorded)

    def source_path(self, case_id: str) -> str | None:
        """The mask file a case was built from, as it lies now (see :meth:`resolve`); None if unknown."""
        return self.resolve((self.case_attrs(case_id) or {}).get("source"))

    def _files_at(self) -> tuple[Any, str]:
        """(store for :mod:`skelprep._files`, path of the root in it): the folder itself when not opened."""
        return files_at(self.path if self._root is None else self._root)

    def prefetch_attrs(self, case_ids: Iterable[str]) -> None:
        """Read the attributes of many cases at once, for the next :meth:`case_attrs` of each.

        Direct reads from a local store, one round trip to zarr's event loop with
        the reads concurrent from an object store, instead of a group open per case
        (0.3-1 ms each; a build plans 504 cases in 20 ms).
        """
        ids = list(case_ids)
        files, root_path = self._files_at()
        keys = [store_key(root_path, c, "zarr.json") for c in ids]
        for case_id, raw in zip(ids, _files.get_many(files, keys), strict=True):
            self._prefetched[case_id] = _case_meta(_parse(raw))

    def case_attrs(self, case_id: str) -> dict[str, Any] | None:
        """The case's attributes, complete or not; None if the group is absent or unreadable."""
        if case_id in self._prefetched:
            return self._prefetched.pop(case_id)
        return self._read_attrs(case_id)

    def _read_attrs(self, case_id: str) -> dict[str, Any] | None:
        files, root_path = self._files_at()
        try:  # the group's zarr.json, as zarr would read it (a v3 group has no other metadata file)
            raw = _files.get(files, store_key(root_path, case_id, "zarr.json"))
        except Exception:  # a missing or half-written group is simply "not built"
            return None
        return _case_meta(_parse(raw))

    def _scan(self) -> tuple[list[str], list[str]]:
        """(complete, incomplete) case ids, found by walking the group tree (:func:`_walk`)."""
        files, root_path = self._files_at()
        try:
            return _walk(files, root_path)
        except Exception as exc:  # the object store failed a listing
            raise StoreError(
                f"{self.path}: cannot list the store ({first_line(exc, with_type=True)})"
            ) from exc

    @property
    def case_ids(self) -> list[str]:
        """Ids of the complete cases, sorted."""
        if self._case_ids is None:
            self._case_ids = self._scan()[0]
        return list(self._case_ids)

    @property
    def incomplete_case_ids(self) -> list[str]:
        """Ids of case groups whose writing did not finish (and case folders without group metadata)."""
        return self._scan()[1]

    def _rebuilt(self, case_id: str) -> StoreError:
        return StoreError(
            f"{self.path}: case '{case_id}' is being rebuilt; read it again when the build is done"
        )

    def absent(self, case_id: str) -> Exception:
        """What to raise for a case without group metadata: KeyError, or StoreError ("being rebuilt")
        where this store listed it complete (a build is rewriting, or pruning, it)."""
        return self._rebuilt(case_id) if case_id in (self._case_ids or ()) else KeyError(case_id)

    def confirm(self, case_id: str, attrs: Mapping[str, Any]) -> None:
        """The reader's last step: raise StoreError unless the case is still the write ``attrs`` were read from.

        ``attrs``: the case's attributes as read before its arrays (complete).
        Equal ``generation`` tokens, still complete, mean no build touched the
        case in between: a rewrite marks it incomplete before it deletes anything.
        """
        now = self._read_attrs(case_id)
        if now is None or now.get("complete") is not True or not _same_write(now, attrs):
            raise self._rebuilt(case_id)

    def checked(self, case_id: str, attrs: Mapping[str, Any], read: Callable[[], Any]) -> Any:
        """``read()`` of a case's arrays, then :meth:`confirm` (see :meth:`CaseTargets.checked`)."""
        return _checked(functools.partial(self.confirm, case_id, attrs), read)

    def group(self, case_id: str) -> zarr.Group:
        """The zarr group of a case (opened on its own where the root is damaged: :meth:`of_cases`)."""
        if not self._cases_only:
            return self.root[case_id]
        import zarr

        return zarr.open_group(os.path.join(self.path, case_id), mode="r", use_consolidated=False)

    def __getitem__(self, case_id: str) -> CaseTargets:
        meta = self.case_attrs(case_id)
        if meta is None:
            raise self.absent(case_id)
        if meta.get("complete") is not True:
            raise StoreError(f"{self.path}: case '{case_id}' is incomplete (its build did not finish)")
        confirm = functools.partial(self.confirm, case_id, meta)
        names = [*ARRAY_NAMES, *(n for n in IMAGE_ARRAY_NAMES if n in meta.get("checksums", {}))]
        arrays: dict[str, Any] = {}
        group = None
        try:
            group = self.group(case_id)
            for name in names:
                arrays[name] = CheckedArray(group[name], confirm)
        except Exception as exc:
            confirm()  # a build replaced the case while it was opened
            what = "its group" if group is None else f"array '{names[len(arrays)]}'"
            problem = (
                "is missing"
                if isinstance(exc, KeyError)
                else f"cannot be read ({first_line(exc, with_type=True)})"
            )
            raise StoreError(
                f"{self.path}: case '{case_id}' is damaged: {what} {problem}; "
                "'skelprep build --repair' rebuilds it"
            ) from exc
        return CaseTargets(
            case_id,
            arrays["tube"],
            arrays["thin"],
            meta,
            arrays.get("image"),
            arrays.get("label"),
            group,
            confirm,
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.case_ids)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __contains__(self, case_id: object) -> bool:
        meta = self.case_attrs(case_id) if isinstance(case_id, str) else None
        return bool(meta and meta.get("complete") is True)


def _joined(base: str, relative: str) -> str:
    """``relative`` (``/``-separated, ``..`` allowed) below a local folder or a URL, normalized.

    Lexical, as the path was computed: ``..`` of a store reached through a
    symlink is the folder the store's path names, not the link target's parent.

    >>> _joined("/data/ds/skeletons.zarr", ".."), _joined("s3://bkt/raw/ds", "../other/a.png")
    ('/data/ds', 's3://bkt/raw/other/a.png')
    """
    if is_url(base):
        scheme, _, rest = base.partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, relative))}"
    return os.path.normpath(os.path.join(base, *relative.split("/")))


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
    doc = local_root_document(path)
    if doc is not None:
        return SkeletonStore(None, path, attributes=doc.get("attributes", {}))
    try:
        return SkeletonStore(open_root(path, mode="r"), path)
    except StoreError:
        damage = damaged_root(path)
        if damage is None:
            raise
        raise StoreError(
            f"{path}: {damage}; its cases are intact: 'skelprep build DATASET --out {path}' rebuilds it "
            "from them"
        ) from None


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
    import numpy as np

    if len(arrays) == 1:
        return [np.asarray(arrays[0][selection])]
    import asyncio

    from zarr.core.sync import sync

    plain = [a.array if isinstance(a, CheckedArray) else a for a in arrays]
    confirms = list({id(a.confirm): a.confirm for a in arrays if isinstance(a, CheckedArray)}.values())

    async def read_all() -> list[Any]:
        return await asyncio.gather(*(a.async_array.getitem(selection) for a in plain))

    def confirm_all() -> None:
        for confirm in confirms:
            if confirm is not None:
                confirm()

    return [np.asarray(r) for r in _checked(confirm_all, lambda: sync(read_all()))]


def read_checked(case: CaseTargets, name: str) -> tuple[np.ndarray | None, str]:
    """(data, problem) of one stored array: ``problem`` is empty when the array reads, has the
    recorded shape and matches its recorded checksum; ``data`` is None when it cannot be read.
    """
    expected = case.attrs.get("checksums", {}).get(name)
    try:
        data = case.group[name][...] if case.group is not None else getattr(case, name)[...]
    except KeyError:
        return None, f"{name}: missing"
    except Exception as exc:  # the CRC-32C codec raises on altered chunk bytes
        return None, f"{name}: unreadable data ({type(exc).__name__}: {exc})"
    spatial = data.shape[1:] if name == "image" else data.shape
    if name in ARRAY_NAMES + IMAGE_ARRAY_NAMES and list(spatial) != list(case.attrs.get("shape", [])):
        return data, f"{name}: shape {data.shape} differs from recorded {case.attrs.get('shape')}"
    if expected != array_checksum(data):
        return data, f"{name}: data checksum mismatch (chunks altered or missing)"
    return data, ""


def verify_case_data(case: CaseTargets) -> list[str]:
    """Problems with a case's stored data: checksum or CRC failures, wrong shape. Empty if sound.

    Every array with a recorded checksum is read: the targets, and the image,
    label and sampling arrays of a case built with images.
    """
    problems = (read_checked(case, name)[1] for name in case.array_names())
    return [p for p in problems if p]
