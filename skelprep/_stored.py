"""Reading any named array of a stored case, for the framework adapters.

The store's :class:`~skelprep.store.CaseTargets` exposes ``tube`` and ``thin``;
a store built with images (format v2, ``skelprep build --with-images``) also
holds ``image`` (channel-first) and ``label`` per case. The adapters read them
by name through this module. (Belongs in :mod:`skelprep.store` once that
format lands; kept here so as not to edit the store module concurrently.)
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from skelprep.store import SkeletonStore, StoreError, open_store

__all__ = ["as_store", "has_arrays", "read_array", "stored_array"]


@functools.lru_cache(maxsize=16)
def _cached_store(path: str) -> SkeletonStore:
    return open_store(path)


def as_store(store: str | os.PathLike | SkeletonStore, *, cached: bool = False) -> SkeletonStore:
    """An open store: ``store`` itself, or the store at that path (opened once per process if ``cached``)."""
    if isinstance(store, SkeletonStore):
        return store
    return _cached_store(os.fspath(store)) if cached else open_store(store)


def has_arrays(store: SkeletonStore, case_id: str, names: tuple[str, ...]) -> bool:
    """Whether the complete case ``case_id`` holds every array in ``names``."""
    if case_id not in store:
        return False
    group = store.root[case_id]
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
        The case is incomplete, or has no array ``name``.
    """
    attrs = store[case_id].attrs  # KeyError / StoreError (incomplete)
    return read_array(store, case_id, name), attrs


def read_array(store: SkeletonStore, case_id: str, name: str) -> np.ndarray:
    """One stored array of a case already known to be complete; StoreError if it has no such array."""
    try:
        array = store.root[case_id][name]
    except KeyError:
        hint = " (build with --with-images)" if name in ("image", "label") else ""
        raise StoreError(f"{store.path}: case '{case_id}' has no array '{name}'{hint}") from None
    return array[...]
