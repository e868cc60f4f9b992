"""Sharded builds (``skelprep build --shard I/N``): one task of a job array builds one slice of the cases.

**The split.** A case belongs to shard ``sha256(case id) mod N`` (:func:`shard_index`):
it depends on the case's own id only, so adding, removing or changing other cases
never moves a case to another shard, and every case is in exactly one shard of N.

**Who may run** (a local store, or one on a shared file system that honours
``flock``). The store's lock ``<store>.lock`` (:mod:`skelprep.store.lock`) is held
*shared* by every shard builder and *exclusively* by a build of the whole store,
so a whole-store build refuses while any shard builder runs, and a shard builder
refuses while a whole-store build runs. Each shard builder also holds
``<store>.shard-I-of-N.lock`` exclusively: two builders of one shard cannot
both run. Shard builders of another N, or with other root attributes (the
parameters), refuse while any other shard builder runs: their cases would
overlap. All locks are ``flock``: the kernel drops them when a builder dies
(``scancel``, a lost node, walltime), so a resubmitted shard job starts at once.
A shard builder writes ``shards building`` into ``<store>.lock``: the next
whole-store build then walks the store for killed writes' ``.partial`` files (a
shard builder never walks: the other shards are writing).

**The root metadata.** Root updates are serialized by a short exclusive lock,
``<store>.root.lock``, and each is one atomic file replace, so the root is never
torn. A shard builder records its build and takes itself off the list of done
shards when it starts (this drops the consolidated metadata, which would be stale
while shards write); when it ends with every case of its shard built or current it
adds itself to ``shards.done`` in the root attributes and records the complete
cases found in the store. The builder that completes the last shard consolidates
the metadata, as a whole-store build does; a plain ``skelprep build`` afterwards
does the same (it rebuilds nothing that is current) and drops the shard record.

Stores at URLs are refused with ``--shard`` (one line): their builders' exclusion
would need a lease per shard beside the store's lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from skelprep.runner import BuildError
from skelprep.store.lock import HeldLock, is_local, lock_is_held, store_lock_file

__all__ = [
    "parse_shard",
    "shard_index",
    "shard_lock",
    "root_update",
    "shards_running",
    "shard_record",
]

Shard = tuple[int, int]  # (index, count)


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> ``(I, N)``, with ``0 <= I < N``.

    >>> parse_shard("2/4")
    (2, 4)
    >>> parse_shard("4/4")
    Traceback (most recent call last):
    ...
    ValueError: shard 4/4: the index must be 0 to 3
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise ValueError(f"expected I/N like 0/4 (shard I of N), got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise ValueError(f"shard {text}: the number of shards must be at least 1")
    if index >= count:
        raise ValueError(f"shard {index}/{count}: the index must be 0 to {count - 1}")
    return index, count


def shard_index(case_id: str, count: int) -> int:
    """The shard of N that a case belongs to: a stable hash of its id alone.

    >>> shard_index("case_000", 4), shard_index("case_000", 1)
    (3, 0)
    """
    digest = hashlib.sha256(case_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


def _beside(path: str, suffix: str) -> Path:
    """``<store><suffix>`` beside the store's real folder, where :mod:`skelprep.store.lock` places its lock."""
    lock = store_lock_file(path)
    return lock.with_name(lock.name.removesuffix(".lock") + suffix)


def _shard_lock_path(path: str, shard: Shard) -> Path:
    return _beside(path, f".shard-{shard[0]}-of-{shard[1]}.lock")


def _open(lock: Path, folder: str) -> Any:
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        return open(lock, "a+")
    except OSError as exc:
        raise BuildError(
            f"{folder}: cannot write the store's lock file {lock} ({exc.strerror or exc})"
        ) from exc


def _try_flock(handle: Any, mode: int, attempts: int = 10) -> bool:
    """Take a lock without waiting (a few quick tries: a verify's brief probe may hold it)."""
    for attempt in range(attempts):
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < attempts - 1:
                time.sleep(0.05)
    return False


def shards_running(path: str | os.PathLike, *, besides: Shard | None = None) -> list[Shard]:
    """The shards whose builders run on a local store now (other than ``besides``), sorted."""
    path = os.fspath(path)
    if not is_local(path):
        return []
    pattern = glob.escape(str(_beside(path, ""))) + ".shard-*-of-*.lock"
    found = []
    for name in glob.glob(pattern):
        match = re.search(r"\.shard-(\d+)-of-(\d+)\.lock$", name)
        if match is None:
            continue
        shard = (int(match[1]), int(match[2]))
        if shard != besides and lock_is_held(Path(name)):
            found.append(shard)
    return sorted(found)


@contextlib.contextmanager
def shard_lock(path: str, shard: Shard) -> Iterator[HeldLock]:
    """Hold the store lock shared and this shard's lock exclusively, for a shard builder.

    Raises
    ------
    BuildError
        A whole-store build runs, another builder of this shard runs, the store
        is at a URL, or a lock file cannot be written.
    """
    index, count = shard
    if not is_local(path):
        raise BuildError(
            f"{path}: --shard needs a store on a (shared) file system; build a store at a URL without --shard "
            "(one build, --cluster or --scheduler for many machines)"
        )
    folder = path.removeprefix("file://")
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(_open(store_lock_file(path), folder))
        if not _try_flock(store, fcntl.LOCK_SH):
            raise BuildError(
                f"{folder}: a build of the whole store is running; wait for it to finish before building shards"
            )
        own = stack.enter_context(_open(_shard_lock_path(path, shard), folder))
        if not _try_flock(own, fcntl.LOCK_EX):
            raise BuildError(f"{folder}: another build of shard {index}/{count} is running on this store")
        # Never the clean-end record: the next whole-store build walks for killed writes.
        with contextlib.suppress(OSError):
            os.ftruncate(store.fileno(), 0)
            os.write(store.fileno(), b"shards building\n")
        yield HeldLock(path)


@contextlib.contextmanager
def root_update(path: str, timeout: float = 120.0) -> Iterator[None]:
    """Hold ``<store>.root.lock`` exclusively while a shard builder reads and rewrites the root metadata."""
    folder = path.removeprefix("file://")
    with _open(_beside(path, ".root.lock"), folder) as handle:
        deadline = time.monotonic() + timeout
        while not _try_flock(handle, fcntl.LOCK_EX, attempts=1):
            if time.monotonic() > deadline:
                raise BuildError(f"{folder}: another shard builder held the store's root for {timeout:g} s")
            time.sleep(0.02)
        yield


def shard_record(meta: dict[str, Any] | None, shard: Shard, *, done: bool) -> dict[str, Any]:
    """The root's ``shards`` record with this shard marked done (``done``) or not (it starts).

    A record of another number of shards is replaced: the cases were split otherwise.

    >>> shard_record(None, (1, 4), done=True)
    {'count': 4, 'done': [1]}
    >>> shard_record({"shards": {"count": 4, "done": [0, 1]}}, (1, 4), done=False)
    {'count': 4, 'done': [0]}
    """
    index, count = shard
    old = (meta or {}).get("shards") or {}
    finished = set(old.get("done") or []) if old.get("count") == count else set()
    if done:
        finished.add(index)
    else:
        finished.discard(index)
    return {"count": count, "done": sorted(finished)}
