"""Reading any named array of a stored case, for the framework adapters.

The store's :class:`~skelprep.store.CaseTargets` exposes ``tube`` and ``thin``;
a store built with images (format v2, ``skelprep build --with-images``) also
holds ``image`` (channel-first) and ``label`` per case. The adapters read them
by name through this module, opening the case group once (``store[case_id]``
also opens ``tube`` and ``thin``, a few ms per item on small cases). Their reads
follow the store's reader protocol (:meth:`skelprep.store.SkeletonStore.checked`):
the case as :func:`case_group` read its attributes, or StoreError "being rebuilt".
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import zarr

from skelprep.store import ATTRS_KEY, SkeletonStore, StoreError, case_state, open_store

__all__ = ["as_store", "case_group", "has_arrays", "read_array", "stored_array"]


@functools.lru_cache(maxsize=16)
def _cached_store(path: str) -> SkeletonStore:
    return open_store(path)


def as_store(store: str | os.PathLike | SkeletonStore, *, cached: bool = False) -> SkeletonStore:
    """An open store: ``store`` itself, or the store at that path (opened once per process if ``cached``)."""
    if isinstance(store, SkeletonStore):
        return store
    return _cached_store(os.fspath(store)) if cached else open_store(store)


def case_group(store: SkeletonStore, case_id: str) -> tuple[zarr.Group, dict[str, Any]]:
    """(group, attributes) of a complete case, with one metadata read.

    (``store[case_id]`` also opens the ``tube`` and ``thin`` arrays: ~4 ms of a
    ~9 ms item on a small case, measured with cProfile.)

    Raises
    ------
    KeyError
        No such case.
    StoreError
        The case is incomplete.
    """
    try:
        group = store.group(case_id)
    except Exception:  # absent or unreadable: "not built", as SkeletonStore says
        raise store.absent(case_id) from None
    meta = group.attrs.get(ATTRS_KEY) if isinstance(group, zarr.Group) else None
    if not isinstance(meta, dict):
        raise store.absent(case_id)
    state = case_state(meta)
    if not state.ok:  # the store's one rule: here only "incomplete" can remain
        raise StoreError(f"{store.path}: case '{case_id}' is {state.state} ({state.reason})")
    return group, dict(meta)


def has_arrays(store: SkeletonStore, case_id: str, names: tuple[str, ...]) -> bool:
    """Whether the complete case ``case_id`` holds every array in ``names``."""
    try:
        group, _ = case_group(store, case_id)
    except (KeyError, StoreError):
        return False
    return all(name in group for name in names)


def stored_array(store: SkeletonStore, case_id: str, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(array, case attributes) of one stored array of a complete case.

    ``name`` is ``tube``, ``thin``, or an array a store may hold besides them
    (``image``, ``label`` with ``skelprep build --with-images``).

    Raises
    ------
    KeyError
        No complete case ``case_id``.
    StoreError
        The case is incomplete, has no array ``name``, or a build rewrote it during the read.
    """
    group, attrs = case_group(store, case_id)
    return store.checked(case_id, attrs, lambda: read_array(group, name, store.path)), attrs


def read_array(group: zarr.Group, name: str, store_path: str = "") -> np.ndarray:
    """One array of a case group (from :func:`case_group`); StoreError if it has no such array."""
    try:
        array = group[name]
    except KeyError:
        hint = " (build with --with-images)" if name in ("image", "label") else ""
        raise StoreError(f"{store_path}: case '{group.basename}' has no array '{name}'{hint}") from None
    return array[...]
