"""One builder per S3 store: a lease object beside the store, created with a conditional put.

The lease is the object ``<store>.lease`` (``s3://bucket/data/x.zarr.lease``), a
small JSON record of who holds it. It lives beside the store, not in it, so it is
no part of the Zarr hierarchy. Every step is one conditional request, decided by
the server, so two builders on different machines cannot both win:

- **acquire**: ``PutObject`` with ``If-None-Match: *`` creates the lease only if
  there is none. If there is one, it is *expired* when its last write
  (``LastModified``) is more than ``ttl`` seconds old **by the server's clock**
  (the ``Date`` of the same response), so clock skew between machines does not
  matter. An expired lease is taken over with ``PutObject If-Match: <its ETag>``:
  of several builders taking it over at once exactly one succeeds. A live lease
  refuses the build in one line, naming its holder.
- **renew**: a thread rewrites the lease every ``ttl / 4`` seconds with
  ``If-Match: <our ETag>``. If that fails (412), someone took the lease over:
  the build is told through :attr:`Lease.lost` and refuses to finalize.
- **release**: ``DeleteObject If-Match: <our ETag>`` at the end of the build.

What it guarantees: while a build keeps renewing, no other skelprep build can
start on the store; a killed build blocks the store for at most ``ttl`` seconds
(60 by default, ``SKELPREP_LEASE_TTL`` to change) after its last renewal, then the
next build takes over.

What it does not guarantee: it is advisory: writers other than skelprep are not
stopped. A build that stalls for longer than ``ttl`` (a suspended laptop, a
network partition) can lose the lease while its workers still write; it notices
at its next renewal and stops before finalizing, but writes already in flight
may interleave with the new holder's (the case-level ``complete`` flag and the
next build's "is it current" check repair what that leaves). The server must
honour conditional writes (AWS S3 since 2024, MinIO, Ceph RGW, moto); on one that
silently ignores ``If-None-Match`` two builds can both proceed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import email.utils
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from skelprep._fs import filesystem
from skelprep._util import first_line, utc_now

__all__ = ["LeaseError", "Lease", "lease_url", "remote_lease", "lease_holder", "supports_lease"]

DEFAULT_TTL = 60.0  # seconds; renewed every TTL/4, so three renewals may fail in a row


def _default_ttl() -> float:
    """``SKELPREP_LEASE_TTL`` (seconds) if set: longer for flaky networks, shorter in tests."""
    try:
        return max(1.0, float(os.environ.get("SKELPREP_LEASE_TTL", DEFAULT_TTL)))
    except ValueError:
        return DEFAULT_TTL


class LeaseError(RuntimeError):
    """The lease is held by another build, or cannot be read or written."""


def supports_lease(url: str) -> bool:
    """Whether stores at ``url`` get a lease (S3 and S3-compatible servers)."""
    return url.startswith(("s3://", "s3a://"))


def lease_url(store: str) -> str:
    """The lease object of a store: ``<store>.lease`` beside it.

    >>> lease_url("s3://bucket/data/x.zarr/")
    's3://bucket/data/x.zarr.lease'
    """
    return store.rstrip("/") + ".lease"


def _precondition_failed(exc: BaseException) -> bool:
    """Whether an s3fs/botocore error is a failed condition (412) or a conditional conflict (409)."""
    if isinstance(exc, FileExistsError):  # s3fs's translation of If-None-Match failing
        return True
    for err in (exc, exc.__cause__):
        response = getattr(err, "response", None) or {}
        code = response.get("Error", {}).get("Code")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return True
    return False


class Lease:
    """A held lease; renewed by a background thread until :meth:`release`."""

    def __init__(self, store: str, ttl: float | None = None) -> None:
        self.store = store.rstrip("/")
        self.url = lease_url(store)
        self.ttl = float(ttl) if ttl is not None else _default_ttl()
        self.owner = uuid.uuid4().hex
        self.etag: str | None = None
        self.lost: str | None = None  # why the lease was lost, once it is
        try:
            self._fs, path = filesystem(self.url)
        except Exception as exc:  # s3fs missing (ImportError), malformed URL (ValueError), ...
            raise LeaseError(f"{store}: cannot open the store ({first_line(exc, with_type=True)})") from exc
        self._bucket, _, self._key = path.partition("/")
        if not self._key:
            raise LeaseError(f"{store}: a store URL needs a folder inside the bucket (s3://bucket/x.zarr)")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- requests --------------------------------------------------------------------------
    def _body(self) -> bytes:
        record = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "renewed": utc_now(),
            "ttl": self.ttl,
        }
        return json.dumps(record).encode()

    def _put(self, **condition: str) -> None:
        response = self._fs.call_s3(
            "put_object", Bucket=self._bucket, Key=self._key, Body=self._body(), **condition
        )
        self.etag = response["ETag"]

    def _head(self) -> dict[str, Any] | None:
        try:
            return self._fs.call_s3("head_object", Bucket=self._bucket, Key=self._key)
        except FileNotFoundError:
            return None

    def holder(self) -> tuple[dict[str, Any], float] | None:
        """(the lease's record, seconds until it expires by the server's clock); None if there is none."""
        head = self._head()
        if head is None:
            return None
        try:
            record = json.loads(self._fs.cat_file(f"{self._bucket}/{self._key}"))
        except (OSError, ValueError):
            record = {}
        record = record if isinstance(record, dict) else {}
        date = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = email.utils.parsedate_to_datetime(date) if date else _dt.datetime.now(_dt.timezone.utc)
        age = (now - head["LastModified"]).total_seconds()
        ttl = float(record.get("ttl", self.ttl)) if isinstance(record.get("ttl"), (int, float)) else self.ttl
        return {**record, "etag": head["ETag"]}, ttl - age

    # -- protocol --------------------------------------------------------------------------
    def acquire(self) -> None:
        """Create the lease, or take over an expired one; :class:`LeaseError` if another build holds it."""
        try:
            self._put(IfNoneMatch="*")
            return self._start()
        except Exception as exc:  # s3fs translates to OSError; botocore's own (no credentials) are not
            if not _precondition_failed(exc):
                raise LeaseError(f"{self.store}: cannot write the store's lease ({first_line(exc)})") from exc
        held = self.holder()
        if held is None:  # released between our two requests: try once more
            return self.acquire()
        record, left = held
        if left > 0:
            who = f"host {record.get('host', '?')}, pid {record.get('pid', '?')}"
            raise LeaseError(
                f"{self.store}: another skelprep build is using this store ({who}, lease {self.url} "
                f"renewed {record.get('renewed', '?')}); wait for it to finish, or {left:.0f} s after it stops"
            )
        try:
            self._put(IfMatch=record["etag"])  # take over: only one of several takers wins
        except OSError as exc:
            if _precondition_failed(exc):
                raise LeaseError(
                    f"{self.store}: another skelprep build took over the expired lease {self.url} first"
                ) from exc
            raise LeaseError(f"{self.store}: cannot write the store's lease ({first_line(exc)})") from exc
        self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="skelprep-lease", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """Rewrite the lease if it is still ours; False (and :attr:`lost` set) if it is not."""
        if self.lost:
            return False
        try:
            self._put(IfMatch=self.etag)
        except OSError as exc:
            if _precondition_failed(exc) or isinstance(exc, FileNotFoundError):
                self.lost = f"the lease {self.url} was taken over by another build"
                return False
            # a failed request is retried at the next renewal; the lease holds for ttl meanwhile
        return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            if not self.renew():
                return

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)
        if self.lost or self.etag is None:
            return
        with contextlib.suppress(OSError):
            self._fs.call_s3("delete_object", Bucket=self._bucket, Key=self._key, IfMatch=self.etag)


@contextlib.contextmanager
def remote_lease(store: str, ttl: float | None = None) -> Iterator[Lease]:
    """Hold the store's lease for the duration of the block (see the module docstring)."""
    lease = Lease(store, ttl)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()


def lease_holder(store: str) -> dict[str, Any] | None:
    """The record of the build that holds a live lease on ``store``, or None."""
    try:
        held = Lease(store).holder()
    except (LeaseError, OSError, ValueError):
        return None
    return held[0] if held is not None and held[1] > 0 else None
