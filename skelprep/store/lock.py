"""One builder per store: a lock beside a local store, and clean-up of killed writes.

The lock is ``<store>.lock`` beside the store's real folder (``os.path.realpath``:
every spelling of one store on this machine gets one lock; one folder reached
through two mounts does not), held with ``flock`` for the whole build: the kernel
releases it when the process dies. A lock file that cannot be written (a full disk)
ends the build in one :class:`~skelprep.store.StoreError` line naming the store. An
S3 store gets a lease instead (:mod:`skelprep.store.lease`); :func:`lease_lost` tells
a case write in the process that holds it whether it may still start. Other remote
stores are not locked: one builder per store is then the user's job.

The lock file also says how the last build ended: ``pid N building`` from when it
takes the lock, ``clean <inode> <mtime>`` of the store's folder once the builder
says it ended cleanly (:meth:`HeldLock.ended_cleanly`). After anything else the next
build walks the store for the ``.partial`` files a kill left (:func:`remove_partial_files`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from skelprep.store.format import StoreError

if TYPE_CHECKING:
    from skelprep.store.lease import Lease

# skelprep.store.lease (and the email, socket and uuid modules it uses: 5-10 ms of import, the
# same again to compile it where no bytecode is cached) is imported for remote stores only.

__all__ = [
    "PARTIAL_SUFFIX",
    "is_local",
    "HeldLock",
    "store_lock",
    "store_lock_file",
    "store_is_busy",
    "lock_is_held",
    "lease_lost",
    "remove_partial_files",
]

_LEASES: dict[str, Lease] = {}  # the leases this process holds, by store path as given to store_lock


def is_local(path: str) -> bool:
    """Whether a store path is on the local file system (a plain path or ``file://``)."""
    return "://" not in path or path.startswith("file://")


def _lock_path(path: str) -> Path:
    """``<store>.lock`` beside the store's real folder: every spelling of one store gets one lock."""
    folder = Path(os.path.realpath(path.removeprefix("file://")))  # resolves the symlinks that exist
    return folder.with_name(folder.name + ".lock")


def store_lock_file(path: str) -> Path:
    """The store's lock file, ``<store>.lock`` (a shard builder holds it shared: :mod:`skelprep.shard`)."""
    return _lock_path(path)


@dataclass
class HeldLock:
    """A held store lock (see :func:`store_lock`).

    ``lease``: the :class:`skelprep.store.lease.Lease` of an S3 store (check its
    ``lost`` before finishing the build), else None. ``unclean``: the last build
    into this local store may have been killed, so ``.partial`` files may be
    left (always True for other stores, and where the lock file says nothing).
    """

    path: str
    lease: Lease | None = None
    unclean: bool = True
    clean_end: bool = False

    def ended_cleanly(self) -> None:
        """Record, on release, that this build ended cleanly: every write it started is done or undone.

        Call it last, only when no case write of this build can have been cut short
        (a failed case may be a killed worker's): the next build then skips the walk
        of :func:`remove_partial_files`.
        """
        self.clean_end = True


def _folder_state(folder: Path) -> str | None:
    """``<inode> <mtime ns>`` of the store's folder, None if absent."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return f"{st.st_ino} {st.st_mtime_ns}"


@contextlib.contextmanager
def store_lock(path: str) -> Iterator[HeldLock]:
    """Hold an exclusive lock on a store; a second build on it refuses at once.

    Yields a :class:`HeldLock`: its ``lease`` for an S3 store, whether the last
    build may have been killed (``unclean``), and :meth:`HeldLock.ended_cleanly`.

    Raises
    ------
    StoreError
        Another build holds the lock, or the lock file cannot be written.
    """
    if not is_local(path):
        from skelprep.store.lease import Lease, LeaseError, supports_lease

        if not supports_lease(path):
            yield HeldLock(path)  # gs://, ...: no lease; one builder per store is the user's job
            return
        try:
            lease = Lease(path)
            lease.acquire()
        except LeaseError as exc:
            raise StoreError(str(exc)) from exc
        _LEASES[path] = lease
        try:
            yield HeldLock(path, lease)
        finally:
            del _LEASES[path]
            lease.release()
        return
    folder, lock = Path(path.removeprefix("file://")), _lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")
    except OSError as exc:
        raise _unwritable(folder, lock, exc) from exc
    try:
        for attempt in range(10):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if attempt == 9:
                    raise StoreError(
                        f"{folder}: another skelprep build is using this store; wait for it to finish"
                    ) from exc
                time.sleep(0.05)  # not a build, maybe: store_is_busy() probes with a brief shared lock
        handle.seek(0)
        before = handle.read()
        state = _folder_state(folder)
        held = HeldLock(path, unclean=state is None or before != f"clean {state}\n")
        try:
            _rewrite(handle, f"pid {os.getpid()} building\n")  # a kill from here on leaves this
        except OSError as exc:
            raise _unwritable(folder, lock, exc) from exc
        yield held
        if held.clean_end and (state := _folder_state(folder)) is not None:
            # Unwritten (a full disk), the record says "building" or nothing: the next build walks.
            with contextlib.suppress(OSError):
                _rewrite(handle, f"clean {state}\n")
    finally:
        handle.close()  # closing releases the lock, also when the process is killed


def _unwritable(folder: Path, lock: Path, exc: OSError) -> StoreError:
    if exc.errno == errno.ENOSPC:
        return StoreError(
            f"{folder}: no space left on device for the store's lock file {lock}; free space (or build "
            "into a store on a larger disk) and rerun the build"
        )
    return StoreError(f"{folder}: cannot write the store ({exc.strerror or exc})")


def _rewrite(handle, text: str) -> None:
    """Replace the lock file's text with one unbuffered write: a failure raises here, never at close.

    (Opened for appending, the write lands at the start of the emptied file; one cut short
    by a full disk leaves a record that says nothing, and the next build walks the store.)
    """
    os.ftruncate(handle.fileno(), 0)
    os.write(handle.fileno(), text.encode())


def lease_lost(path: str) -> str | None:
    """Why the lease this process holds on the store at ``path`` is lost; None while it holds (or for none).

    A case write in this process checks it before it starts (see :mod:`skelprep.store.lease`).
    """
    lease = _LEASES.get(path)
    return lease.lost if lease is not None else None


def store_is_busy(path: str | os.PathLike) -> bool:
    """Whether a build holds the lock of a store right now (S3: a live lease; other URLs: False)."""
    path = os.fspath(path)
    if not is_local(path):
        from skelprep.store.lease import lease_holder, supports_lease

        return supports_lease(path) and lease_holder(path) is not None
    return lock_is_held(_lock_path(path))


def lock_is_held(lock: Path) -> bool:
    """Whether a process holds this lock file exclusively: a probe with a brief shared lock (never creates it)."""
    try:
        handle = open(lock)
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


# The suffix of a file being written whole (zarr's LocalStore names it so).
PARTIAL_SUFFIX = r"\.[0-9a-f]{32}\.partial"
_PARTIAL = re.compile(PARTIAL_SUFFIX + "$")


def remove_partial_files(path: str, held: HeldLock | None = None) -> list[str]:
    """Delete the temporary files of writes that a killed build left in a local store.

    zarr's local store writes each file as ``<name>.<uuid hex>.partial`` and renames it
    into place; a kill in between leaves the temporary file, which zarr then warns
    about on every listing. Only call this under the store lock, when no one else writes.
    With the ``held`` lock of a store whose last build ended cleanly, nothing is
    walked: the walk costs 20-45 ms over the 1516 folders of 504 small cases, a
    third of planning their up-to-date rerun.
    """
    if not is_local(path) or (held is not None and not held.unclean):
        return []
    removed = []
    for dirpath, _, filenames in os.walk(path.removeprefix("file://")):
        for name in filenames:
            if _PARTIAL.search(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                removed.append(os.path.join(dirpath, name))
    return removed
