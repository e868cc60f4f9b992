"""A batch-queue Dask cluster for one build (``skelprep build --cluster slurm|pbs|sge|lsf``), via dask-jobqueue.

:func:`jobqueue_cluster` starts dask-jobqueue's cluster class for the queue system
from the user's Dask configuration (``jobqueue.<system>`` in
``~/.config/dask/jobqueue.yaml`` or ``DASK_CONFIG``: cores, memory, queue,
walltime, prologue; dask-jobqueue's own convention, nothing of skelprep's), submits
``jobs`` worker jobs, waits until the first worker has joined, and yields the
scheduler's address for :func:`skelprep.build.build`. It closes the cluster, which
cancels every job it submitted, when the build ends, fails or is interrupted
(Ctrl-C). The scheduler runs in this process; the jobs' workers must reach it.

Problems end in one :class:`~skelprep.runner.BuildError` line before any case is
built: dask-jobqueue not installed, the queue system's submit command missing
(no Slurm here), no configuration (cores and memory unset), a job the queue
refuses (the submit command's own message), and jobs that do not start within
``start_timeout`` seconds (naming the jobs still pending).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from skelprep._util import first_line
from skelprep.runner import BuildError

__all__ = ["SYSTEMS", "jobqueue_cluster"]

# --cluster NAME -> dask-jobqueue's cluster class (NAME is also its configuration section)
SYSTEMS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}


def _refusal(exc: BaseException) -> str:
    """The submit command's own complaint, from dask-jobqueue's RuntimeError (its stderr), in one line."""
    text = str(exc)
    if "stderr:" in text:
        lines = [ln.strip() for ln in text.split("stderr:", 1)[1].splitlines() if ln.strip()]
        if lines:
            return "; ".join(lines)
    return first_line(exc)


class _Failures(logging.Handler):
    """Keeps the errors that the cluster's background tasks log (a refused submission) instead of
    printing their tracebacks: the build reports the first one in one line."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


# Where tornado, asyncio and distributed log an exception of a cluster's background task.
_TASK_LOGGERS = ("tornado.application", "asyncio", "distributed.deploy.spec")


@contextlib.contextmanager
def _captured() -> Iterator[_Failures]:
    handler = _Failures()
    loggers = [logging.getLogger(n) for n in _TASK_LOGGERS]
    saved = [(lg.propagate, lg.handlers[:]) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
    try:
        yield handler
    finally:
        for lg, (propagate, handlers) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate


def _import_jobqueue() -> Any:
    """dask_jobqueue, with this process's Ctrl-C left as it was.

    Importing dask-jobqueue 0.9.0 sets a SIGINT handler that exits with status 0 (for the
    processes of its runners): a build interrupted on the login node would then end
    silently, as if it had succeeded. The build keeps Python's KeyboardInterrupt, which
    closes the cluster (cancelling its jobs) and ends in one line with status 130.
    """
    main = threading.current_thread() is threading.main_thread()
    interrupt = signal.getsignal(signal.SIGINT) if main else None
    try:
        import dask_jobqueue
    finally:
        if interrupt is not None:
            signal.signal(signal.SIGINT, interrupt)
    return dask_jobqueue


@contextlib.contextmanager
def jobqueue_cluster(system: str, jobs: int, *, start_timeout: float = 600.0) -> Iterator[str]:
    """Run a dask-jobqueue cluster of ``jobs`` worker jobs on ``system``; yield its scheduler address.

    Raises
    ------
    BuildError
        dask-jobqueue or the queue system is missing, its configuration is
        incomplete, the queue refuses the job, or no job starts in time.
    """
    if system not in SYSTEMS:
        raise BuildError(f"unknown cluster {system!r} (one of {', '.join(SYSTEMS)})")
    try:
        import dask

        dask_jobqueue = _import_jobqueue()
    except ImportError:
        raise BuildError(f"--cluster {system} needs dask-jobqueue: pip install 'skelprep[hpc]'") from None
    cls = getattr(dask_jobqueue, SYSTEMS[system])
    submit = cls.job_cls.submit_command
    if shutil.which(submit.split()[0]) is None:
        raise BuildError(
            f"--cluster {system}: '{submit}' not found on this machine; run the build where {system} "
            "jobs are submitted (a login node)"
        )
    missing = [k for k in ("cores", "memory") if dask.config.get(f"jobqueue.{system}.{k}", None) is None]
    if missing:
        unset = " and ".join(f"jobqueue.{system}.{k}" for k in missing)
        raise BuildError(
            f"--cluster {system}: no jobqueue configuration ({unset} unset); write them to "
            "~/.config/dask/jobqueue.yaml (see docs/many-machines.md)"
        )
    with _captured() as failures:
        try:
            # Any free port for the dashboard, unless the configuration names one: never clash.
            options = {
                "dashboard_address": ":0",
                **(dask.config.get(f"jobqueue.{system}.scheduler-options") or {}),
            }
            cluster = cls(scheduler_options=options)
        except (ValueError, TypeError, KeyError, RuntimeError, OSError) as exc:
            raise BuildError(f"--cluster {system}: cannot start the cluster ({first_line(exc)})") from exc
        with cluster:  # closing cancels every job the cluster submitted
            _probe(cluster, system)
            cluster.scale(jobs=jobs)
            _wait_for_a_worker(cluster, system, start_timeout, failures)
            yield cluster.scheduler_address


# How each queue system submits a job held (it is checked and queued, but never runs).
_HOLD = {"slurm": ["--hold"], "pbs": ["-h"], "sge": ["-h"], "lsf": ["-H"]}


def _probe(cluster: Any, system: str) -> None:
    """Submit the worker job once, held, and cancel it: a queue that refuses it says so here, in one line.

    (A submission that dask-jobqueue makes fails in a background task: the job would
    just never start.)
    """
    job_cls = cluster.job_cls
    submit = [*shlex.split(job_cls.submit_command), *_HOLD[system]]
    script = cluster.job_script()
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="skelprep-probe-") as f:
        f.write(script)
        f.flush()
        piped = system == "lsf"  # bsub reads its script from stdin
        try:
            done = subprocess.run(
                submit if piped else [*submit, f.name],
                input=script if piped else None,
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"--cluster {system}: cannot submit a job ({first_line(exc)})") from exc
    if done.returncode != 0:
        said = (
            "; ".join(ln.strip() for ln in done.stderr.splitlines() if ln.strip())
            or f"exit {done.returncode}"
        )
        raise BuildError(f"--cluster {system}: the queue refused the job: {said}")
    match = re.search(job_cls.job_id_regexp, done.stdout)
    if match is not None and match.groupdict().get("job_id"):
        subprocess.run(
            [*shlex.split(job_cls.cancel_command), match["job_id"]],
            capture_output=True,
            timeout=120,
            check=False,
        )


def _wait_for_a_worker(cluster: Any, system: str, timeout: float, failures: _Failures) -> None:
    """Return once one worker has joined; the build's tasks wait in the scheduler for the others."""
    deadline = time.monotonic() + timeout
    while not cluster.scheduler_info.get("workers"):
        if time.monotonic() > deadline:
            pending = sorted(str(j.job_id) for j in cluster.workers.values() if getattr(j, "job_id", None))
            refused = [_refusal(e) for e in failures.errors if "Command exited with non-zero" in str(e)]
            why = f"; the queue refused a job: {refused[0]}" if refused else ""
            raise BuildError(
                f"--cluster {system}: no job started within {timeout:g} s (pending: "
                f"{', '.join(pending) or 'none submitted'}){why}; the jobs are cancelled - check the queue's "
                "limits or raise --start-timeout"
            )
        time.sleep(0.2)
