"""Run one task per case in this process (serially or in threads) or on Dask, and collect outcomes.

The runner knows nothing about targets: it takes a picklable function
``task(item) -> CaseOutcome`` and a sequence of items, runs them, and turns a
worker that dies (memory limit, crash) into a failed outcome for that item
alone. :mod:`skelprep.build` (and the nnU-Net sidecar build) use it.

Which execution (:func:`execution`): a running cluster when given
(``scheduler``); Dask worker processes when each needs a memory limit (only a
process can be capped and killed alone); otherwise this process — serially
for one worker or one item, else a pool of ``workers`` threads. Threads fit a
task that releases the GIL for most of its time, as a build case does (the
numba thinning is ``nogil``, gzip inflate, zstd, CRC-32C and SHA-256 release
it): no cluster to start and stop (0.7-1 s on 2 cores, more than a whole
build of 14 2D masks), no pickling of arrays, one numba cache load. Pass
``threads=False`` for a task that holds the GIL; it then gets processes.

Contract: ``task`` never raises for a problem with its item; it returns a
``CaseOutcome`` with ``status="failed"`` and a one-line reason instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from skelprep._util import first_line
from skelprep.io import InputError

__all__ = [
    "BuildError",
    "CaseOutcome",
    "run_cases",
    "execution",
    "runs_in_process",
    "check_memory_limit",
    "memory_budget",
    "format_size",
    "failure_line",
    "guarded",
]

T = TypeVar("T")


class BuildError(RuntimeError):
    """The build as a whole cannot run (store locked, unusable output path, unreachable cluster, ...).

    ``param`` names the argument of :func:`skelprep.build.build` that would fix it, or is None; a
    front end can then point at its own option for that argument.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class CaseOutcome:
    """What happened to one case in a build."""

    case_id: str
    status: Literal["built", "up-to-date", "failed"]
    reason: str = ""
    seconds: float = 0.0
    fallback_components: int = 0
    detail: str = ""  # traceback of an unexpected failure, shown with --debug
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the task (read, core, ...)


def failure_line(path: str | os.PathLike, what: object) -> str:
    """``"<path>: <first line of what>"`` with control characters escaped: one line per failure."""
    return str(InputError(path, first_line(what)))


def guarded(case_id: str, source: str | os.PathLike, work: Callable[[], CaseOutcome]) -> CaseOutcome:
    """Run one case's ``work`` and time it; any exception becomes a failed outcome with one line.

    The line is the :class:`~skelprep.io.InputError` itself, or ``"<source>: <first line>"``
    for other errors; an unexpected exception type also keeps its traceback in ``detail``
    (shown with ``--debug``). This is what makes a task honour :func:`run_cases`' contract.
    """
    start = time.perf_counter()

    def failed(reason: str, detail: str = "") -> CaseOutcome:
        return CaseOutcome(case_id, "failed", reason, time.perf_counter() - start, detail=detail)

    try:
        outcome = work()
    except InputError as exc:
        return failed(str(exc))
    except (ValueError, OSError) as exc:
        return failed(failure_line(source, exc))
    except MemoryError:
        return failed(failure_line(source, "out of memory"))
    except Exception as exc:
        return failed(failure_line(source, f"unexpected {type(exc).__name__}: {exc}"), traceback.format_exc())
    return dataclasses.replace(outcome, seconds=time.perf_counter() - start)


# A case whose worker dies twice (memory limit, crash) fails alone instead of being retried
# on every worker in turn; with one task slot per worker, a death implicates only its own case.
_DASK_CONFIG = {
    "distributed.scheduler.allowed-failures": 1,
    "distributed.scheduler.worker-saturation": 1.0,
    # distributed starts workers with MALLOC_TRIM_THRESHOLD_=65536, which pins glibc's mmap
    # threshold: every large temporary array is then mapped and page-faulted afresh. On
    # 256x512x512 volumes that made a case 2x slower in a worker than in process (writes 0.88 s
    # vs 0.38 s); glibc's own adaptive threshold is right for arrays this size.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}


def runs_in_process(
    workers: int | None, scheduler: str | None, memory_limit: str | None, n_cases: int
) -> bool:
    """Whether to skip Dask: one worker or one case, and no scheduler or memory limit to honour."""
    return execution(workers, scheduler, memory_limit, n_cases) == "serial"


def execution(
    workers: int | None,
    scheduler: str | None,
    memory_limit: str | None,
    n_cases: int,
    *,
    threads: bool = True,
) -> str:
    """How :func:`run_cases` runs: ``"serial"``, ``"threads"``, ``"cluster"`` (local Dask) or ``"scheduler"``.

    >>> execution(2, None, None, 10)
    'threads'
    >>> execution(2, None, "4GB", 10), execution(1, None, None, 10), execution(2, "tcp://h:8786", None, 10)
    ('cluster', 'serial', 'scheduler')
    """
    if scheduler is not None:
        return "scheduler"
    if memory_limit is not None:
        return "cluster"
    n = min(workers or os.cpu_count() or 1, n_cases)
    if n <= 1:
        return "serial"
    return "threads" if threads else "cluster"


def check_memory_limit(memory_limit: str | None, scheduler: str | None) -> None:
    """Reject a malformed memory limit before anything starts."""
    if memory_limit is None:
        return
    if scheduler is not None:
        raise BuildError(
            "a memory limit applies to local workers; set it on the cluster of the scheduler instead"
        )
    from dask.utils import parse_bytes

    try:
        if memory_limit != "auto" and parse_bytes(memory_limit) <= 0:
            raise ValueError
    except ValueError as exc:
        raise BuildError(
            f"invalid memory limit {memory_limit!r} (expected a size like 4GB or 500MiB)"
        ) from exc


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations now (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # free pages: other systems
    except (OSError, ValueError, AttributeError):
        return None


def memory_budget(memory_limit: str | None) -> tuple[int, str] | None:
    """(bytes, what they are, in words) that one case may use: the per-worker limit, else what is free now.

    ``memory_limit`` as :func:`check_memory_limit` accepts it; ``"auto"`` (Dask's
    share of the machine) and no limit take the memory available now. None where
    that is unknown.
    """
    if memory_limit is not None and memory_limit != "auto":
        from dask.utils import parse_bytes

        return parse_bytes(memory_limit), f"the {memory_limit} memory limit per worker"
    available = _available_memory()
    if available is None:
        return None
    return available, f"the {format_size(available)} of memory available"


def format_size(n: int) -> str:
    """Bytes in words for a message: ``"14.2 GB"``, ``"350 MB"``."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def run_cases(
    task: Callable[[T], CaseOutcome],
    items: Sequence[T],
    *,
    case_id: Callable[[T], str],
    source: Callable[[T], Any],
    workers: int | None = None,
    scheduler: str | None = None,
    memory_limit: str | None = None,
    progress: bool = False,
    threads: bool = True,
    stop: Callable[[], str | None] | None = None,
) -> list[CaseOutcome]:
    """Run ``task`` on every item, in process or on Dask, and return the outcomes (in completion order).

    Parameters
    ----------
    task : callable
        Picklable ``item -> CaseOutcome`` (a module-level function or a
        :func:`functools.partial` of one); it must not raise for a bad item.
    items : sequence
        What to run it on; each is sent to the worker that runs it.
    case_id, source : callable
        The item's case id, and the file named when its worker dies.
    workers : int, optional
        Local workers (default: the number of CPUs): threads of this process,
        or with a ``memory_limit`` (or ``threads=False``) Dask worker
        processes. One worker or one item runs serially in this process.
    scheduler : str, optional
        Address of a running Dask scheduler to use instead of a local cluster.
    memory_limit : str, optional
        Per-worker memory limit of the local cluster.
    progress : bool
        Show a progress bar on stderr.
    threads : bool
        The task releases the GIL for most of its time: local parallel runs use threads.
    stop : callable, optional
        On Dask, asked as each item completes: once it returns a reason, the items
        not yet completed are cancelled (one running on a worker runs to its end)
        and fail with that reason. A task run in this process checks for itself.

    Raises
    ------
    BuildError
        The scheduler cannot be reached.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc="skelprep build", unit="case", file=sys.stderr, disable=not progress)
    try:
        how = execution(workers, scheduler, memory_limit, len(items), threads=threads)
        if how == "serial":
            outcomes = []
            for item in items:
                outcomes.append(task(item))
                bar.update()
            return outcomes
        if how == "threads":
            return _run_in_threads(task, items, case_id=case_id, source=source, workers=workers, bar=bar)
        return _run_on_dask(
            task,
            items,
            case_id=case_id,
            source=source,
            workers=workers,
            scheduler=scheduler,
            memory_limit=memory_limit,
            bar=bar,
            stop=stop,
        )
    finally:
        bar.close()


def _run_in_threads(task, items, *, case_id, source, workers, bar) -> list[CaseOutcome]:
    from concurrent.futures import ThreadPoolExecutor, as_completed

    n = max(1, min(workers or os.cpu_count() or 1, len(items)))
    outcomes = []
    with ThreadPoolExecutor(n, thread_name_prefix="skelprep-case") as pool:
        futures = {pool.submit(task, item): item for item in items}
        try:
            for future in as_completed(futures):
                item = futures[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # a task must not raise; if it does, only its case fails
                    why = f"unexpected {type(exc).__name__}: {exc}"
                    outcome = CaseOutcome(case_id(item), "failed", failure_line(source(item), why))
                outcomes.append(outcome)
                bar.update()
        except BaseException:  # Ctrl-C: start no further case; the running ones finish their write
            for future in futures:
                future.cancel()
            raise
    return outcomes


def _run_on_dask(
    task, items, *, case_id, source, workers, scheduler, memory_limit, bar, stop=None
) -> list[CaseOutcome]:
    import dask
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise BuildError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from exc
    else:
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(items)))
        with dask.config.set(_DASK_CONFIG):  # read when the scheduler starts
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,  # skeletonization is single-threaded; one process per core
                processes=True,
                dashboard_address=":0",  # any free port: never clash with a running dashboard
                memory_limit=memory_limit or 0,
                silence_logs=logging.CRITICAL,  # a dead worker is reported as its case's failure, in one line
            )
        client = Client(cluster)
    died = "the worker process died while building this case"
    if memory_limit:
        died += f" (over the memory limit of {memory_limit} per worker?)"
    outcomes = []
    try:
        futures = {
            client.submit(task, item, pure=False, key=f"skelprep-{i}-{case_id(item)}"): item
            for i, item in enumerate(items)
        }
        pending = dict(futures)
        for future in as_completed(futures):
            item = pending.pop(future)
            try:
                outcome = future.result()
            except Exception as exc:  # the worker died (memory limit, crash): only this case fails
                name = type(exc).__name__
                why = died if name == "KilledWorker" else f"{name}: {exc}"
                where = getattr(getattr(exc, "last_worker", None), "address", None)
                if name == "KilledWorker" and scheduler is not None and where:
                    why += f" (worker {where})"  # on a shared cluster: which machine to look at
                outcome = CaseOutcome(case_id(item), "failed", failure_line(source(item), why))
            outcomes.append(outcome)
            bar.update()
            if pending and stop is not None and (reason := stop()) is not None:
                client.cancel(list(pending))
                outcomes.extend(
                    CaseOutcome(case_id(i), "failed", failure_line(source(i), reason))
                    for i in pending.values()
                )
                break
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return outcomes
