"""Build a store: plan what is stale, compute it on Dask, report per-case outcomes.

One Dask task per case. Each task reads the mask, computes the targets and
writes its own case group, so only small outcome records travel back to the
client. The client holds a lock on the store for the whole build, plans from
fingerprints (so an unchanged dataset costs one hash per mask and no cluster),
and consolidates the metadata at the end.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skelprep import __version__
from skelprep.io import InputError, Volume, file_sha256, image_shape, read_mask
from skelprep.layout import DEFAULT_STORE_NAME, Case, DatasetLayout, discover
from skelprep.skeleton import MODES, skeleton_targets
from skelprep.store import (
    ATTRS_KEY,
    FORMAT_VERSION,
    SkeletonStore,
    StoreError,
    delete_case,
    finalize_store,
    label_counts,
    open_root,
    verify_case_data,
    write_case,
)

__all__ = [
    "BuildParams",
    "CaseOutcome",
    "BuildReport",
    "CaseCheck",
    "build",
    "build_case",
    "verify",
    "default_store_path",
    "store_is_busy",
    "BuildError",
]

# Bumped when the computation changes its output: stored cases then count as stale.
RECIPE_VERSION = 1


class BuildError(RuntimeError):
    """The build as a whole cannot run (store locked, unusable output path, ...)."""


@dataclass(frozen=True)
class BuildParams:
    """Parameters of the target computation (see :func:`skelprep.skeleton.skeleton_targets`)."""

    radius: int = 2
    mode: str = "joint"
    ignore_label: int | None = None
    slice_axis: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.radius < 0:
            raise ValueError(f"radius must be >= 0, got {self.radius}")
        if self.slice_axis is not None and self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {self.slice_axis}")
        if self.ignore_label is not None and self.ignore_label <= 0:
            raise ValueError(f"ignore_label must be a positive label, got {self.ignore_label}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready parameters, as recorded in the store (with the recipe version)."""
        return {**asdict(self), "recipe_version": RECIPE_VERSION}


@dataclass(frozen=True)
class CaseOutcome:
    """What happened to one case in a build."""

    case_id: str
    status: str  # "built", "up-to-date" or "failed"
    reason: str = ""
    seconds: float = 0.0
    fallback_components: int = 0
    detail: str = ""  # traceback of an unexpected failure, shown with --debug


@dataclass
class BuildReport:
    """Outcome of :func:`build`."""

    store: str
    outcomes: list[CaseOutcome] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def _with(self, status: str) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def built(self) -> list[CaseOutcome]:
        return self._with("built")

    @property
    def up_to_date(self) -> list[CaseOutcome]:
        return self._with("up-to-date")

    @property
    def failed(self) -> list[CaseOutcome]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "seconds": round(self.seconds, 3),
            "built": [o.case_id for o in self.built],
            "up_to_date": [o.case_id for o in self.up_to_date],
            "failed": {o.case_id: o.reason for o in self.failed},
            "pruned": self.pruned,
            "fallback_components": sum(o.fallback_components for o in self.built),
        }


def default_store_path(dataset: str | os.PathLike) -> str:
    return os.fspath(Path(dataset) / DEFAULT_STORE_NAME)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


@contextlib.contextmanager
def _store_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on a local store; a second build on it refuses at once.

    The lock file sits beside the store (``<store>.lock``): inside it, zarr would
    warn about a file that is no part of the hierarchy.
    """
    if not _is_local(path):
        yield  # remote stores: no portable lock; one builder per store is the user's job
        return
    folder = Path(path.removeprefix("file://"))
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        handle = open(folder.with_name(folder.name + ".lock"), "a+")
    except OSError as exc:
        raise BuildError(f"{folder}: cannot write the store ({exc.strerror or exc})") from None
    try:
        for attempt in range(10):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 9:
                    raise BuildError(
                        f"{folder}: another skelprep build is using this store; wait for it to finish"
                    ) from None
                time.sleep(0.05)  # not a build, maybe: store_is_busy() probes with a brief shared lock
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock, also when the process is killed


_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


def _remove_partial_files(path: str) -> list[str]:
    """Delete the temporary files of writes that a killed build left in a local store.

    zarr's local store writes each file as ``<name>.<uuid hex>.partial`` and renames it
    into place; a kill in between leaves the temporary file, which zarr then warns
    about on every listing. Only called under the store lock, when no one else writes.
    """
    if not _is_local(path):
        return []
    removed = []
    for dirpath, _, filenames in os.walk(path.removeprefix("file://")):
        for name in filenames:
            if _PARTIAL.search(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                removed.append(os.path.join(dirpath, name))
    return removed


def store_is_busy(path: str | os.PathLike) -> bool:
    """Whether a build holds the lock of a local store right now (False for remote stores)."""
    path = os.fspath(path)
    if not _is_local(path):
        return False
    folder = Path(path.removeprefix("file://"))
    try:
        handle = open(folder.with_name(folder.name + ".lock"))  # never creates it
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _versions() -> dict[str, str]:
    import scipy
    import skimage
    import zarr

    return {
        "skelprep": __version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "zarr": zarr.__version__,
    }


def _case_attrs(
    case: Case, layout_root: Path, fingerprint: str, params: dict[str, Any], vol: Volume, fallback: int
) -> dict[str, Any]:
    try:
        source = case.mask.relative_to(layout_root).as_posix()
    except ValueError:
        source = case.mask.as_posix()
    return {
        "source": source,
        "fingerprint": fingerprint,
        "params": params,
        "axes": vol.axes,
        "spacing": [float(s) for s in vol.spacing],
        "affine": None if vol.affine is None else np.asarray(vol.affine).tolist(),
        "label_remap": {str(k): v for k, v in vol.label_remap.items()},
        "mask_label_counts": label_counts(vol.array),
        "fallback_components": fallback,
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _one_line(path: Path, what: object) -> str:
    """``"<path>: <first line of what>"`` with control characters escaped: one line per failure."""
    lines = str(what).strip().splitlines()
    return str(InputError(path, lines[0] if lines else type(what).__name__))


def _check_images(case: Case, mask_shape: tuple[int, ...]) -> None:
    """Every image of the case has the mask's spatial shape (read from headers only)."""
    for image in case.images:
        shape = image_shape(image)
        if shape != mask_shape:
            raise InputError(
                image, f"image shape {shape} differs from the shape {mask_shape} of its mask {case.mask}"
            )


def _stored_case_intact(out: str, case_id: str) -> bool:
    """The stored case is complete and its arrays match their checksums."""
    store = SkeletonStore(open_root(out, mode="r"), out)
    return case_id in store and not verify_case_data(store[case_id])


def build_case(
    case: Case, out: str, params: dict[str, Any], layout_root: str, *, repair: bool = False
) -> CaseOutcome:
    """Compute and write one case; never raises (a failure is an outcome).

    Runs in a Dask worker: it opens the store itself, so only the case record
    and this outcome are sent over the wire. With ``repair``, a stored case whose
    data pass their checksums is left alone (outcome ``up-to-date``) and only a
    damaged one is rebuilt.
    """
    start = time.perf_counter()
    try:
        if repair and _stored_case_intact(out, case.case_id):
            return CaseOutcome(case.case_id, "up-to-date", seconds=time.perf_counter() - start)
        fingerprint = file_sha256(case.mask)
        vol = read_mask(case.mask)
        _check_images(case, vol.array.shape)
        targets = skeleton_targets(
            vol.array,
            radius=params["radius"],
            mode=params["mode"],
            ignore_label=params["ignore_label"],
            slice_axis=params["slice_axis"],
        )
        attrs = _case_attrs(case, Path(layout_root), fingerprint, params, vol, targets.fallback_components)
        write_case(open_root(out, mode="a"), case.case_id, tube=targets.tube, thin=targets.thin, attrs=attrs)
    except InputError as exc:
        return CaseOutcome(case.case_id, "failed", str(exc), time.perf_counter() - start)
    except (ValueError, OSError) as exc:
        return CaseOutcome(case.case_id, "failed", _one_line(case.mask, exc), time.perf_counter() - start)
    except MemoryError:
        return CaseOutcome(
            case.case_id, "failed", _one_line(case.mask, "out of memory"), time.perf_counter() - start
        )
    except Exception as exc:
        return CaseOutcome(
            case.case_id,
            "failed",
            _one_line(case.mask, f"unexpected {type(exc).__name__}: {exc}"),
            time.perf_counter() - start,
            detail=traceback.format_exc(),
        )
    return CaseOutcome(
        case.case_id,
        "built",
        seconds=time.perf_counter() - start,
        fallback_components=targets.fallback_components,
    )


def _open_or_create_root(out: str, layout: DatasetLayout, params: dict[str, Any]):
    try:
        root = open_root(out, mode="a")
    except StoreError as exc:
        raise BuildError(str(exc)) from None
    meta = root.attrs.get(ATTRS_KEY)
    if meta is None:
        if any(True for _ in root.members()):
            raise BuildError(f"{out}: exists and is not a skelprep store; choose another --out")
        meta = {
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "cases": [],
        }
    elif meta.get("format_version") != FORMAT_VERSION:
        raise BuildError(
            f"{out}: store format version {meta.get('format_version')}, this skelprep writes {FORMAT_VERSION}"
        )
    meta = {
        **meta,
        "params": params,
        "versions": _versions(),
        "dataset": os.path.abspath(layout.root),
        "layout": layout.kind,
        "label_names": {str(k): v for k, v in layout.label_names.items()},
    }
    root.attrs.update({ATTRS_KEY: meta})
    return root


@dataclass(frozen=True)
class CaseCheck:
    """State of one case of a dataset against its store (see :func:`verify`)."""

    case_id: str
    state: str  # ok, missing, incomplete, stale, params-changed, corrupt, orphan, failed-input
    reason: str = ""


def _check(store: SkeletonStore, case: Case, params: dict[str, Any]) -> CaseCheck:
    """Is the stored case up to date with its mask and these parameters?"""
    meta = store.case_attrs(case.case_id)
    if meta is None:
        return CaseCheck(case.case_id, "missing", "not built")
    if meta.get("complete") is not True:
        return CaseCheck(case.case_id, "incomplete", "its build did not finish")
    try:
        fingerprint = file_sha256(case.mask)
    except InputError as exc:
        return CaseCheck(case.case_id, "failed-input", str(exc))
    if meta.get("fingerprint") != fingerprint:
        return CaseCheck(case.case_id, "stale", "mask changed since it was built")
    if meta.get("params") != params:
        return CaseCheck(case.case_id, "params-changed", "built with other parameters")
    return CaseCheck(case.case_id, "ok")


def _check_data(store: SkeletonStore, case: Case, params: dict[str, Any]) -> CaseCheck:
    """Read a current case's arrays against their checksums; ``corrupt`` if they fail.

    A build running beside us may replace the case while we read it: then the
    data fail because the case changed, and we report what is there now.
    """
    before = store.case_attrs(case.case_id)
    try:
        problems = verify_case_data(store[case.case_id])
    except StoreError as exc:  # marked incomplete since it was checked
        problems = [str(exc)]
    except KeyError as exc:  # the group, or one of its arrays, is gone
        problems = [f"{exc.args[0] if exc.args else 'an array'}: missing"]
    if not problems:
        return CaseCheck(case.case_id, "ok")
    if store.case_attrs(case.case_id) != before:
        return _check(store, case, params)
    return CaseCheck(case.case_id, "corrupt", "; ".join(problems))


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


def _in_process(workers: int | None, scheduler: str | None, memory_limit: str | None, n_cases: int) -> bool:
    """Whether to skip Dask: one worker or one case, and no scheduler or memory limit to honour."""
    return scheduler is None and memory_limit is None and (workers == 1 or n_cases == 1)


def _run_in_process(
    cases: Sequence[Case],
    out: str,
    params: dict[str, Any],
    layout_root: str,
    *,
    progress: bool,
    repair: Sequence[str] = (),
) -> list[CaseOutcome]:
    """Build the cases one after another in this process: no cluster start-up (1-4 s) for small jobs."""
    from tqdm import tqdm

    to_repair = set(repair)
    return [
        build_case(case, out, params, layout_root, repair=case.case_id in to_repair)
        for case in tqdm(cases, desc="skelprep build", unit="case", file=sys.stderr, disable=not progress)
    ]


def _run_on_dask(
    cases: Sequence[Case],
    out: str,
    params: dict[str, Any],
    layout_root: str,
    *,
    workers: int | None,
    scheduler: str | None,
    memory_limit: str | None,
    progress: bool,
    repair: Sequence[str] = (),
) -> list[CaseOutcome]:
    import dask
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    cluster = None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise BuildError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
    else:
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(cases)))
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
    outcomes = []
    to_repair = set(repair)
    died = "the worker process died while building this case"
    if memory_limit:
        died += f" (over the memory limit of {memory_limit} per worker?)"
    try:
        futures = {
            client.submit(
                build_case,
                case,
                out,
                params,
                layout_root,
                repair=case.case_id in to_repair,
                pure=False,
                key=f"skelprep-{i}-{case.case_id}",
            ): case
            for i, case in enumerate(cases)
        }
        bar = tqdm(
            total=len(futures), desc="skelprep build", unit="case", file=sys.stderr, disable=not progress
        )
        for future in as_completed(futures):
            case = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # the worker died (memory limit, crash): only this case fails
                name = type(exc).__name__
                why = died if name == "KilledWorker" else f"{name}: {exc}"
                outcome = CaseOutcome(case.case_id, "failed", _one_line(case.mask, why))
            outcomes.append(outcome)
            bar.update()
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return outcomes


def _check_memory_limit(memory_limit: str | None, scheduler: str | None) -> None:
    """Reject a malformed memory limit before anything starts."""
    if memory_limit is None:
        return
    if scheduler is not None:
        raise BuildError(
            "--memory-limit applies to local workers; set it on the cluster of --scheduler instead"
        )
    from dask.utils import parse_bytes

    try:
        if memory_limit != "auto" and parse_bytes(memory_limit) <= 0:
            raise ValueError
    except ValueError:
        raise BuildError(
            f"invalid memory limit {memory_limit!r} (expected a size like 4GB or 500MiB)"
        ) from None


def build(
    dataset: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    params: BuildParams | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    force: bool = False,
    prune: bool = False,
    masks: str | None = None,
    images: str | None = None,
    memory_limit: str | None = None,
    progress: bool = False,
    repair: bool = False,
) -> BuildReport:
    """Build (or bring up to date) the store of a dataset.

    Parameters
    ----------
    dataset : path
        Dataset folder (nnU-Net raw, generic ``labels/``+``images/``, or any folder with ``masks``).
    out : path or URL, optional
        The store; ``<dataset>/skeletons.zarr`` by default.
    params : BuildParams, optional
        Target parameters. An ``ignore_label`` of None takes the dataset's
        (nnU-Net's ``ignore`` label), if any.
    workers : int, optional
        Local worker processes (default: the number of CPUs).
    scheduler : str, optional
        Address of a running Dask scheduler; its workers must see ``dataset`` and ``out``.
    force : bool
        Rebuild every case, even up-to-date ones.
    prune : bool
        Delete stored cases whose mask is no longer in the dataset.
    masks, images : str, optional
        Glob patterns (see :func:`skelprep.layout.discover`).
    memory_limit : str, optional
        Per-worker memory limit (e.g. ``"4GB"``); a case that exceeds it fails alone.
    progress : bool
        Show a progress bar on stderr.
    repair : bool
        Also read every up-to-date case and rebuild those whose data fail their
        checksums (altered or missing chunks), as ``verify`` reports them.

    Returns
    -------
    BuildReport

    Raises
    ------
    LayoutError
        The dataset as a whole cannot be used (nothing is built).
    BuildError
        The store is locked by another build or unusable, or an option is invalid.
    """
    start = time.perf_counter()
    _check_memory_limit(memory_limit, scheduler)
    layout = discover(dataset, masks=masks, images=images)
    params = params or BuildParams()
    if params.ignore_label is None and layout.ignore_label is not None:
        params = BuildParams(params.radius, params.mode, layout.ignore_label, params.slice_axis)
    param_dict = params.as_dict()
    out = os.fspath(out) if out is not None else default_store_path(dataset)
    report = BuildReport(store=out)
    report.outcomes.extend(CaseOutcome(p.case_id, "failed", str(p)) for p in layout.problems)
    with _store_lock(out):
        _remove_partial_files(out)
        root = _open_or_create_root(out, layout, param_dict)
        store = SkeletonStore(root, out)
        todo, to_repair = [], []
        for case in layout.cases:
            check = _check(store, case, param_dict)
            if check.state == "ok" and not force and repair:
                todo.append(case)
                to_repair.append(case.case_id)
            elif check.state == "ok" and not force:
                report.outcomes.append(CaseOutcome(case.case_id, "up-to-date"))
            elif check.state == "failed-input":
                report.outcomes.append(CaseOutcome(case.case_id, "failed", check.reason))
            else:
                todo.append(case)
        if todo:
            report.outcomes.extend(
                _run_in_process(
                    todo, out, param_dict, os.fspath(layout.root), progress=progress, repair=to_repair
                )
                if _in_process(workers, scheduler, memory_limit, len(todo))
                else _run_on_dask(
                    todo,
                    out,
                    param_dict,
                    os.fspath(layout.root),
                    workers=workers,
                    scheduler=scheduler,
                    memory_limit=memory_limit,
                    progress=progress,
                    repair=to_repair,
                )
            )
        if prune:
            wanted = {c.case_id for c in layout.cases} | {p.case_id for p in layout.problems}
            stored = set(store.case_ids) | set(store.incomplete_case_ids)
            for case_id in sorted(stored - wanted):
                delete_case(root, case_id)
                report.pruned.append(case_id)
        finalize_store(root, out)
    report.outcomes.sort(key=lambda o: o.case_id)
    report.seconds = time.perf_counter() - start
    return report


def verify(
    dataset: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    masks: str | None = None,
    images: str | None = None,
    check_data: bool = True,
) -> list[CaseCheck]:
    """Check a store against its dataset.

    Reports, per case: ``missing``, ``incomplete``, ``stale`` (mask changed),
    ``params-changed``, ``corrupt`` (chunk bytes altered or removed; needs
    ``check_data``), ``failed-input`` (a discovery problem), ``orphan`` (stored,
    but its mask is gone) or ``ok``. Parameters are compared with those of the
    store's last build.
    """
    layout = discover(dataset, masks=masks, images=images)
    out = os.fspath(out) if out is not None else default_store_path(dataset)
    store = SkeletonStore(open_root(out, mode="r"), out)
    params = store.attrs.get("params")
    checks = [CaseCheck(p.case_id, "failed-input", str(p)) for p in layout.problems]
    for case in layout.cases:
        check = _check(store, case, params)
        if check.state == "ok" and check_data:
            check = _check_data(store, case, params)
        checks.append(check)
    known = {c.case_id for c in layout.cases} | {p.case_id for p in layout.problems}
    for case_id in sorted(set(store.case_ids) | set(store.incomplete_case_ids)):
        if case_id not in known:
            checks.append(CaseCheck(case_id, "orphan", "stored, but its mask is no longer in the dataset"))
    return sorted(checks, key=lambda c: c.case_id)
