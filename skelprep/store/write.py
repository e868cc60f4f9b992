"""Writing a store: one :class:`StoreWriter` per build, crash-safe case writes, consolidation at the end.

Everything goes through zarr's public API (``create_group``, ``create_array`` with
``shards=``, ``zarr.consolidate_metadata``); zarr's local store writes every file
whole (a temporary ``.partial`` file renamed into place, which
:func:`skelprep.store.lock.remove_partial_files` clears after a kill).

The write protocol of ``docs/store-format.md``: a case is written as: mark the old
case incomplete (an atomic rewrite of its group metadata) and delete it, create the
group with ``complete: false``, write every array, then rewrite the group's
attributes with ``complete: true`` and every checksum. A case whose attributes do
not say ``complete: true`` is never read as built.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import time
import uuid
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from skelprep._fs import is_url
from skelprep._util import first_line, plain_path_problem, utc_now
from skelprep.store.format import (
    ATTRS_KEY,
    CHUNK_KEY_ENCODING,
    FORMAT_VERSION,
    OME_VERSION,
    StoreError,
    array_checksum,
    array_kind,
    array_layout,
    array_paths,
    axis_names,
    checked_root_meta,
    ome_label,
    ome_multiscale,
)
from skelprep.store.read import SkeletonStore, _meta, _node, damaged_root, open_root, store_key

if TYPE_CHECKING:
    import numpy as np
    import zarr

    from skelprep.store.lock import HeldLock

# ``write_case``'s arrays: name -> (data, options). The mapping is the extension point for new stored
# arrays: where they lie, their chunks and codecs follow from their shape and dtype (format.array_kind);
# options: ``classes`` ({value: name}) of a label map, for viewers.
Arrays = Mapping[str, "tuple[np.ndarray, Mapping[str, Any] | None]"]


def _check_key(key: str) -> None:
    """Refuse a case id that is no plain relative path: joined to the store's folder it could lead out of it."""
    problem = plain_path_problem(key)
    if problem is not None:
        raise ValueError(f"store key {key!r} is not a relative path of plain names ({problem})")


class StoreWriter:
    """The handle a build writes a store through: its root group, its lock or lease, its root attributes as opened.

    :meth:`open` records a build in the root (the client, under the store's lock);
    :meth:`attach` gives a worker process the same store to write cases into (the
    client's lock covers it). ``held`` is the :class:`~skelprep.store.lock.HeldLock`.
    """

    def __init__(self, path: str, root: zarr.Group, held: HeldLock | None = None) -> None:
        self.path, self.root, self.held = path, root, held
        self.meta: dict[str, Any] = dict(root.attrs.get(ATTRS_KEY) or {})

    @classmethod
    def open(
        cls, path: str | os.PathLike, attrs: Mapping[str, Any], held: HeldLock | None = None
    ) -> StoreWriter:
        """Open (or create) a store for a build and record this build's root ``attrs``.

        A new store gets ``format_version``, ``created`` and an empty case list; an
        existing one must be a skelprep store of a version this skelprep reads. A
        version-1 store is upgraded in place (its cases are valid version-2 cases;
        ``upgraded_from`` records the old version). A local store whose root
        document is damaged over intact cases gets a new one.

        Raises StoreError where the path holds something else, or a store of a newer format.
        """
        path = os.fspath(path)
        repaired = damaged_root(path) is not None
        if repaired:  # its cases hold everything they need; the root is written anew
            try:
                os.unlink(os.path.join(path, "zarr.json"))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StoreError(
                    f"{path}: cannot rewrite the root metadata ({first_line(exc, with_type=True)})"
                ) from exc
        root = open_root(path, mode="a")
        meta = root.attrs.get(ATTRS_KEY)
        if meta is None:
            if not repaired and _has_members(root):
                raise StoreError(f"{path}: exists and is not a skelprep store; choose another store path")
            meta = {"format_version": FORMAT_VERSION, "created": utc_now(), "cases": []}
        elif checked_root_meta(path, meta, writing=True)["format_version"] != FORMAT_VERSION:
            meta = {**meta, "format_version": FORMAT_VERSION, "upgraded_from": meta["format_version"]}
        root.attrs.update({ATTRS_KEY: {**meta, **attrs}})  # drops consolidated metadata: stale from now on
        return cls(path, root, held)

    @classmethod
    def attach(cls, path: str) -> StoreWriter:
        """The writer of a worker process (once per process and store): cases only, under the client's lock."""
        return _attached(path, os.getpid())

    def lease_lost(self) -> str | None:
        """Why this build's S3 lease is lost (no further case write may start then); None while it holds."""
        from skelprep.store.lock import lease_lost

        return lease_lost(self.path)

    def write_case(
        self,
        case_id: str,
        arrays: Arrays,
        attrs: Mapping[str, Any],
        *,
        patch: tuple[int, ...] | None = None,
    ) -> dict[str, float]:
        """Write one case so that it is never seen as complete before all its data are; seconds per phase.

        ``arrays``: name -> (data, options), written in this order; the first has
        the case's spatial shape (unless ``attrs`` says it). The case group is an
        OME-Zarr image (the image, or the mask ``label`` without one, at ``0``, the
        spacing as scale) with its label maps as image-labels (``labels/<name>``),
        other arrays by name beside them (:func:`~skelprep.store.format.array_paths`);
        chunks are laid out for ``patch``. ``attrs``: the case's provenance;
        ``shape``, ``layout``, ``arrays``, ``checksums``, ``generation`` and
        ``complete`` are added here. NaN or infinite attributes raise ValueError
        before anything is touched (not JSON: strict readers refuse them).
        """
        import numpy as np

        _check_key(case_id)
        start = time.perf_counter()
        data = {name: np.ascontiguousarray(a) for name, (a, _) in arrays.items()}
        spatial = tuple(attrs.get("shape") or next(iter(data.values())).shape)
        kinds = {name: array_kind(name, a.shape, a.dtype, spatial) for name, a in data.items()}
        paths = array_paths(kinds)
        meta = {**attrs, "shape": list(spatial), "layout": FORMAT_VERSION, "arrays": paths, "checksums": {}}
        # generation: this write's token; a reader's second look at the attributes tells a rewrite by it
        meta.update(complete=False, generation=uuid.uuid4().hex)
        json.dumps(meta, allow_nan=False)
        names = axis_names(attrs.get("axes"), len(spatial))
        spacing = attrs.get("spacing") or [1.0] * len(spatial)
        image = next((n for n, p in paths.items() if p == "0"), None)
        channels = image is not None and data[image].ndim > len(spatial)
        ome = {"version": OME_VERSION, "multiscales": [ome_multiscale(names, spacing, channels)]}
        self.delete_case(case_id)
        group = self.root.create_group(
            case_id, attributes={ATTRS_KEY: dict(meta), **({"ome": ome} if image is not None else {})}
        )
        labels = [n for n, p in paths.items() if p.startswith("labels/")]
        if labels:
            group.create_group("labels", attributes={"ome": {"version": OME_VERSION, "labels": labels}})
        for name, a in data.items():
            node, key = group, paths[name]
            dims = None
            if kinds[name] != "array":
                dims = (["c"] if a.ndim > len(spatial) else []) + names
            if name in labels:
                options = arrays[name][1] or {}
                classes = {int(v): str(n) for v, n in (options.get("classes") or {}).items()}
                label = {
                    "multiscales": [ome_multiscale(names, spacing, False)],
                    "image-label": ome_label(classes),
                }
                node = group.create_group(
                    f"labels/{name}", attributes={"ome": {"version": OME_VERSION, **label}}
                )
                key = "0"
            array = node.create_array(
                key,
                shape=a.shape,
                dtype=a.dtype,
                fill_value=0,
                chunk_key_encoding=CHUNK_KEY_ENCODING,
                dimension_names=dims,
                **array_layout(kinds[name], a.shape, a.dtype, patch),
            )
            if a.size:
                array[...] = a
            meta["checksums"][name] = array_checksum(a)
        meta["complete"] = True
        group.attrs.update({ATTRS_KEY: meta})  # last write: the case now counts as built
        return {"store": time.perf_counter() - start}

    def delete_case(self, case_id: str) -> None:
        """Remove a case (nothing if absent), marked incomplete first: a kill mid-deletion leaves no case that
        says complete over missing chunks. ValueError for a case id that is no plain relative path."""
        _check_key(case_id)
        key = store_key(self.root.store_path.path, case_id)
        kind, node = _node(self.root.store, key, mode="r+")
        meta = _meta(node) if kind == "group" else None
        if meta is not None and meta.get("complete") is not False:
            node.attrs.update({ATTRS_KEY: {**meta, "complete": False}})
        if kind is not None or not is_url(self.path):  # also the folder of a write a kill cut short
            try:
                del self.root[case_id]
            except (KeyError, FileNotFoundError):
                pass

    def finalize(self, **root_attrs: Any) -> None:
        """Record the complete cases (and ``root_attrs``) in the root attributes, then consolidate the metadata.

        A node zarr cannot read (a damaged case left for ``--repair``) leaves the store
        unconsolidated: readers list the case groups, never the consolidated metadata.
        """
        import zarr

        meta = {**(self.root.attrs.get(ATTRS_KEY) or {}), **root_attrs}
        meta.update(cases=SkeletonStore(self.root, self.path).case_ids, updated=utc_now())
        self.root.attrs.update({ATTRS_KEY: meta})
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec"
                zarr.consolidate_metadata(self.root.store, path=self.root.store_path.path or None)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
        except Exception:  # noqa: S110 - a damaged node: the store stays unconsolidated
            pass


@functools.lru_cache(maxsize=8)
def _attached(path: str, pid: int) -> StoreWriter:
    return StoreWriter(path, open_root(path, mode="a"))


def _has_members(root: zarr.Group) -> bool:
    try:
        return any(True for _ in root.keys())
    except Exception:  # a member that zarr cannot read: something is there
        return True
