"""One builder per S3 store: a lease object ``<store>.lease`` beside the store, written with conditional puts.

Every step is one conditional request decided by the server, so two builders on
different machines cannot both win:

- **acquire**: ``PutObject If-None-Match: *`` creates the lease if there is none. An
  existing one is *expired* when its ``LastModified`` is more than ``ttl`` seconds old
  by the server's clock (the ``Date`` of the same response: clock skew does not
  matter), and is taken over with ``PutObject If-Match: <its ETag>`` (one of several
  takers wins). A live lease refuses the build in one line naming its holder.
- **renew**: a thread rewrites it every ``ttl / 4`` with ``If-Match: <our ETag>``. A
  412 whose record names another owner means it was taken over (naming us: our own
  write's answer was lost). Any other failure is retried every ``ttl / 8``.
- **lost**: taken over, or not renewed for ``ttl * 3/4`` on this machine's monotonic
  clock (counting a suspended machine's sleep on Linux) from when the last successful
  write was sent: :attr:`Lease.lost` then says why in one line, and stays set.
- **release**: ``DeleteObject If-Match: <our ETag>`` at the end (not once lost: a lease
  left behind expires after ``ttl``).

While a build keeps renewing, no other skelprep build can start on the store; a
killed build blocks it for at most ``ttl`` seconds (60, ``SKELPREP_LEASE_TTL``) after
its last renewal. A build whose lease is lost starts no further case write in its
own process, cancels the Dask cases not finished yet, and never finalizes the store.
Before pruning and finalizing it confirms the lease (:meth:`Lease.confirm`).

Not guaranteed: writers other than skelprep are not stopped; a case write already
under way when the lease is lost (and cases on Dask workers) runs to its end — the
case-level ``complete`` flag and the next build's currency check repair what they
leave. The server must honour conditional writes (AWS S3, MinIO, Ceph RGW, moto).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import email.utils
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from skelprep._fs import filesystem
from skelprep._util import first_line, utc_now

__all__ = ["LeaseError", "Lease", "lease_url", "remote_lease", "lease_holder", "supports_lease"]

DEFAULT_TTL = 60.0  # seconds; renewed every TTL/4
# The share of the ttl kept in hand: a lease unconfirmed for ttl * (1 - SAFETY) counts as lost, so a
# build stops starting writes that long before another build can take the lease over. Failed
# renewals are retried every ttl * SAFETY / 2: twice or more before that.
SAFETY = 0.25


def _clock() -> float:
    """Seconds on a monotonic clock that also counts a suspended machine's sleep (Linux's
    ``CLOCK_BOOTTIME``; elsewhere ``time.monotonic``, which may not): a laptop that slept
    past the ttl must find its lease lost."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


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
        self._lost: str | None = None
        self._confirmed: float | None = None  # monotonic time a successful write of the lease was sent
        self._failing: str | None = None  # the first error of the renewals failing since then
        self._renewing = threading.Lock()  # one conditional write at a time: each changes the ETag
        try:
            self._fs, path = filesystem(self.url)
        except Exception as exc:  # s3fs missing (ImportError), malformed URL (ValueError), ...
            raise LeaseError(f"{store}: cannot open the store ({first_line(exc, with_type=True)})") from exc
        self._bucket, _, self._key = path.partition("/")
        if not self._key:
            raise LeaseError(f"{store}: a store URL needs a folder inside the bucket (s3://bucket/x.zarr)")
        self._stop = threading.Event()
        self._wake = threading.Event()  # renew now (or stop)
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> str | None:
        """Why the lease is lost, once it is; None while it is ours.

        Lost when another build took it over, and also when no renewal has
        succeeded for ``ttl`` less :data:`SAFETY` of it (on this machine's
        monotonic clock, :func:`_clock`, from when the last successful write was sent): it may
        have expired by then, whatever the server says later. Once lost, it stays lost.
        """
        if self._lost is None and self._confirmed is not None:
            silent = _clock() - self._confirmed
            if silent >= self.ttl * (1 - SAFETY):
                why = self._failing or "no renewal was answered"
                self._lost = f"cannot renew the lease {self.url} since {silent:.0f} s: {why}"
        return self._lost

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

    def _put(self, **condition: str) -> float:
        """Write the lease; the monotonic time the request was sent (the lease lasts ttl from then at least)."""
        sent = _clock()  # the server's LastModified is later
        response = self._fs.call_s3(
            "put_object", Bucket=self._bucket, Key=self._key, Body=self._body(), **condition
        )
        self.etag = response["ETag"]
        return sent

    def _head(self) -> dict[str, Any] | None:
        try:
            return self._fs.call_s3("head_object", Bucket=self._bucket, Key=self._key)
        except FileNotFoundError:
            return None

    def _still_ours(self) -> bool:
        """After a failed condition: whether the lease object is our own last write all the same.

        A write whose answer was lost on the way (a dropped connection, retried by the
        client) changed the ETag without our knowing it; the owner in the record tells.
        The ETag is read before the record: a taker's write in between shows its owner.
        """
        try:
            held = self.holder()
        except Exception:
            return False
        if held is None or held[0].get("owner") != self.owner:
            return False
        self.etag = held[0]["etag"]
        return True

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
            self._confirmed = self._put(IfNoneMatch="*")
            return self._start()
        except Exception as exc:  # s3fs translates to OSError; botocore's own (no credentials) are not
            if not _precondition_failed(exc):
                raise LeaseError(f"{self.store}: cannot write the store's lease ({first_line(exc)})") from exc
        try:
            held = self.holder()
        except Exception as exc:
            raise LeaseError(f"{self.store}: cannot read the store's lease ({first_line(exc)})") from exc
        if held is None:  # released between our two requests: try once more
            return self.acquire()
        record, left = held
        if record.get("owner") == self.owner:  # our own put, retried after its answer was lost
            self.etag, self._confirmed = record["etag"], _clock() - max(0.0, self.ttl - left)
            return self._start()
        if left > 0:
            who = f"host {record.get('host', '?')}, pid {record.get('pid', '?')}"
            raise LeaseError(
                f"{self.store}: another skelprep build is using this store ({who}, lease {self.url} "
                f"renewed {record.get('renewed', '?')}); wait for it to finish, or {left:.0f} s after it stops"
            )
        try:
            self._confirmed = self._put(IfMatch=record["etag"])  # take over: one of several takers wins
        except Exception as exc:
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
        """Rewrite the lease if it is still ours; False once it is :attr:`lost`.

        Any other failure of the request (a dropped connection, a refused one, a
        timeout, a server error) is kept for the message and retried at the next
        renewal, until :attr:`lost` says the lease may have expired meanwhile. A
        renewal answered only after that is too late: the lease stays lost.
        """
        with self._renewing:
            if self.lost:
                return False
            try:
                sent = self._put(IfMatch=self.etag)
            except Exception as exc:
                if isinstance(exc, FileNotFoundError) or (
                    _precondition_failed(exc) and not self._still_ours()
                ):
                    self._lost = f"the lease {self.url} was taken over by another build"
                    return False
                self._failing = self._failing or first_line(exc, with_type=True)
                return self.lost is None
            if self.lost is None:  # judged from the renewal before: did it lapse while this one was out?
                self._confirmed, self._failing = sent, None
            return self.lost is None

    def confirm(self) -> bool:
        """Whether the lease is still ours: waits for a renewal sent from now on, or for :attr:`lost`.

        Call it before a step that only the holder may take (finalizing the store):
        it proves the lease was ours after everything before it. It returns within
        ``ttl`` of the last successful renewal, however long a request hangs.
        """
        asked = _clock()
        self._wake.set()
        while self.lost is None:
            if self._confirmed is not None and self._confirmed >= asked:
                return True
            time.sleep(0.02)
        return False

    def _renew_loop(self) -> None:
        while True:
            # After a failure, retry sooner: several tries fit before the lease may have expired.
            self._wake.wait(self.ttl / 4 if self._failing is None else self.ttl * SAFETY / 2)
            self._wake.clear()
            if self._stop.is_set() or not self.renew():
                return

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)
        if self.lost or self.etag is None:
            return
        with contextlib.suppress(Exception):  # left behind, it expires after ttl
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
