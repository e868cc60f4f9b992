"""Whole files of a zarr store, by key: written straight to a local folder, through zarr's event loop elsewhere.

Contract: :func:`put` writes every key of a mapping so that each file appears
whole or not at all (on a local folder: a temporary ``<name>.<uuid hex>.partial``
renamed into place, as zarr's ``LocalStore`` names them, so
:func:`skelprep._lock.remove_partial_files` clears the leftovers of a kill; an
object store's PUT is atomic). No order holds among the keys of one call: a
caller that needs one (data before the metadata that declares them complete)
makes two calls. :func:`get` reads a key (None if absent), :func:`put_absent`
writes a key that does not exist yet, :func:`remove` deletes everything below a
prefix, :func:`list_many` names what lies directly below prefixes. Keys are
relative to the store's root, as in zarr, and each is a relative path of plain
names (:func:`skelprep._util.plain_path_problem`): a key that would lead out of
the store's folder (``..``, absolute) raises :class:`ValueError` before anything
is touched. ``store`` is a zarr
store, or the path of a local store's folder (a ``str``): reading a local store
then needs no zarr (planning an up-to-date rerun of 504 cases imports none, 0.2-0.3 s).

Why a local path of its own: zarr's ``LocalStore`` sends every file to a
thread of its event loop (``asyncio.to_thread``), creates its folder with
``pathlib``, and the caller waits on the loop for each batch. For the 5 files of
a 512x512 case (two arrays of one shard each, their ``zarr.json``, the group's)
that cost 5.3 ms per case on 2 cores, more than computing the case; writing
them from the calling thread costs ~0.5 ms (file I/O releases the GIL, so the
build's worker threads still write in parallel).
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from skelprep._util import plain_path_problem

__all__ = ["local_folder", "check_key", "get", "get_many", "list_many", "put", "put_absent", "remove"]

Data = bytes | bytearray | memoryview


def local_folder(store: Any) -> str | None:
    """The folder of a local store (a zarr ``LocalStore``, or a folder's path), or None for any other store."""
    if isinstance(store, str):
        return store
    from zarr.storage import LocalStore  # imported already: the caller holds one of zarr's stores

    return os.fspath(store.root) if isinstance(store, LocalStore) else None


@functools.cache
def _prototype() -> Any:  # once, as zarr's own stores do
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()


def _sync(coroutine: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coroutine)


def get(store: Any, key: str) -> bytes | None:
    """The bytes of ``key``, or None if there is no such file."""
    folder = local_folder(store)
    if folder is None:
        raw = _sync(store.get(key, prototype=_prototype()))
        return None if raw is None else raw.to_bytes()
    try:
        with open(os.path.join(folder, key), "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def get_many(store: Any, keys: Sequence[str]) -> list[bytes | None]:
    """The bytes of each key (None where absent); an object store's reads run concurrently."""
    if local_folder(store) is not None:
        return [get(store, key) for key in keys]  # 20 us a small file; the event loop's hop costs 0.2 ms

    import asyncio

    async def read_all() -> list[Any]:
        prototype = _prototype()
        return await asyncio.gather(*(store.get(key, prototype=prototype) for key in keys))

    return [None if raw is None else raw.to_bytes() for raw in _sync(read_all())]


def list_many(store: Any, prefixes: Sequence[str]) -> list[list[str]]:
    """The names directly below each prefix (files and folders; empty where there is nothing).

    A local folder is listed with ``os.listdir`` (a prefix that is a file, or vanished, has
    nothing below it); an object store's listings run concurrently.
    """
    folder = local_folder(store)
    if folder is not None:
        found = []
        for prefix in prefixes:
            try:
                found.append(sorted(os.listdir(os.path.join(folder, prefix))))
            except OSError:  # a file, or deleted by a build since it was named
                found.append([])
        return found

    import asyncio

    async def names(prefix: str) -> list[str]:
        return sorted([name async for name in store.list_dir(prefix)])

    async def list_all() -> list[list[str]]:
        return await asyncio.gather(*(names(p) for p in prefixes))

    return _sync(list_all())


def put(store: Any, files: Mapping[str, Data], *, whole: bool = True) -> None:
    """Write every ``{key: bytes}`` of ``files``, each file whole (see the module's contract).

    ``whole=False`` writes a local file in place, without the temporary name: for
    the files of a case that nothing counts as built yet (its group metadata is
    absent or says incomplete), where a torn file is deleted with the case. Saves
    a rename and a directory entry a file. Metadata documents (``zarr.json``) are
    written whole all the same: zarr's listing parses every one, and a torn one
    (a kill mid-write) made listing the store fail until the next build.
    """
    if not files:
        return
    for key in files:
        check_key(key)
    folder = local_folder(store)
    if folder is None:
        _sync(_put_remote(store, files))
        return
    made: set[str] = set()
    for key, value in files.items():
        path = os.path.join(folder, key)
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        if whole or key.endswith("zarr.json"):
            _write_whole(path, value)
        else:
            with open(path, "wb") as f:
                f.write(value)


def put_absent(store: Any, key: str, value: Data) -> None:
    """Write ``key`` unless a file of that key exists (zarr's ``set_if_not_exists``)."""
    check_key(key)
    folder = local_folder(store)
    if folder is None:
        _sync(store.set_if_not_exists(key, _prototype().buffer.from_bytes(bytes(value))))
    elif not os.path.exists(os.path.join(folder, key)):
        put(store, {key: value})


def remove(store: Any, prefix: str) -> None:
    """Delete every file below ``prefix`` (nothing if there is none); never the store's root."""
    check_key(prefix)
    folder = local_folder(store)
    if folder is None:
        _sync(store.delete_dir(prefix))
    else:
        path = os.path.join(folder, prefix)
        if os.path.isdir(path):  # the build holds the store's lock: nothing else creates it meanwhile
            shutil.rmtree(path)


def check_key(key: str) -> None:
    """Refuse a key that is no plain relative path: joined to the store's folder it could lead out of it."""
    problem = plain_path_problem(key)
    if problem is not None:
        raise ValueError(f"store key {key!r} is not a relative path of plain names ({problem})")


def _write_whole(path: str, value: Data) -> None:
    partial = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with open(partial, "wb") as f:
            f.write(value)
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        raise


async def _put_remote(store: Any, files: Mapping[str, Data]) -> None:
    import asyncio

    buffer = _prototype().buffer
    await asyncio.gather(*(store.set(key, buffer.from_bytes(bytes(value))) for key, value in files.items()))
