"""One builder per store: a lock beside a local store, and clean-up of killed writes.

The lock is ``<store>.lock`` beside the store (inside it, zarr would warn about a
file that is no part of the hierarchy), held with ``flock`` for the whole build:
the kernel releases it when the process dies, so a killed build never leaves a
stale lock. Remote stores (URLs) are not locked here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from skelprep.runner import BuildError

__all__ = ["is_local", "store_lock", "store_is_busy", "remove_partial_files"]


def is_local(path: str) -> bool:
    """Whether a store path is on the local file system (a plain path or ``file://``)."""
    return "://" not in path or path.startswith("file://")


def _lock_path(path: str) -> Path:
    folder = Path(path.removeprefix("file://"))
    return folder.with_name(folder.name + ".lock")


@contextlib.contextmanager
def store_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on a local store; a second build on it refuses at once.

    Raises
    ------
    BuildError
        Another build holds the lock, or the lock file cannot be written.
    """
    if not is_local(path):
        yield  # remote stores: no portable lock; one builder per store is the user's job
        return
    folder, lock = Path(path.removeprefix("file://")), _lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")
    except OSError as exc:
        raise BuildError(f"{folder}: cannot write the store ({exc.strerror or exc})") from exc
    try:
        for attempt in range(10):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if attempt == 9:
                    raise BuildError(
                        f"{folder}: another skelprep build is using this store; wait for it to finish"
                    ) from exc
                time.sleep(0.05)  # not a build, maybe: store_is_busy() probes with a brief shared lock
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock, also when the process is killed


def store_is_busy(path: str | os.PathLike) -> bool:
    """Whether a build holds the lock of a local store right now (False for remote stores)."""
    path = os.fspath(path)
    if not is_local(path):
        return False
    try:
        handle = open(_lock_path(path))  # never creates it
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


def remove_partial_files(path: str) -> list[str]:
    """Delete the temporary files of writes that a killed build left in a local store.

    zarr's local store writes each file as ``<name>.<uuid hex>.partial`` and renames it
    into place; a kill in between leaves the temporary file, which zarr then warns
    about on every listing. Only call this under the store lock, when no one else writes.
    """
    if not is_local(path):
        return []
    removed = []
    for dirpath, _, filenames in os.walk(path.removeprefix("file://")):
        for name in filenames:
            if _PARTIAL.search(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                removed.append(os.path.join(dirpath, name))
    return removed
