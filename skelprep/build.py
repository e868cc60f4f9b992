"""Build a store: plan what is stale, compute it on Dask, report per-case outcomes.

One task per case (:mod:`skelprep.runner` runs them in process or on Dask).
Each task reads the mask, computes the targets and writes its own case group,
so only small outcome records travel back to the client. The client holds the
store's lock (:mod:`skelprep._lock`) for the whole build, plans from
fingerprints with the store's one "is this case current" rule (so an unchanged
dataset costs one hash per mask and no cluster), and consolidates the metadata
at the end.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from skelprep import __version__
from skelprep._fs import RemotePath, set_storage_options, storage_options
from skelprep._lock import remove_partial_files, store_lock
from skelprep._util import utc_now
from skelprep.io import InputError, Volume, file_sha256, image_shape, local_file, read_mask
from skelprep.layout import Case, DatasetLayout, discover
from skelprep.runner import BuildError, CaseOutcome, check_memory_limit, guarded, run_cases
from skelprep.skeleton import MODES, skeleton_targets
from skelprep.store import (
    SkeletonStore,
    StoreError,
    default_store_path,
    delete_case,
    finalize_store,
    label_counts,
    open_for_writing,
    open_root,
    verify_case_data,
    write_case,
)
from skelprep.verify import check_case

__all__ = [
    "BuildParams",
    "CaseOutcome",
    "BuildReport",
    "CaseJob",
    "build",
    "build_case",
    "BuildError",
]

# Bumped when the computation changes its output: stored cases then count as stale.
RECIPE_VERSION = 1


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


@dataclass(frozen=True)
class CaseJob:
    """One case to build, as sent to a worker.

    ``source`` is the mask's path as recorded in the store (relative to the
    dataset root where it lies below it), computed on the client.
    """

    case: Case
    source: str
    repair: bool = False


def _case_attrs(
    job: CaseJob, fingerprint: str, params: BuildParams, vol: Volume, fallback: int
) -> dict[str, Any]:
    return {
        "source": job.source,
        "fingerprint": fingerprint,
        "params": params.as_dict(),
        "axes": vol.axes,
        "spacing": [float(s) for s in vol.spacing],
        "affine": None if vol.affine is None else np.asarray(vol.affine).tolist(),
        "label_remap": {str(k): v for k, v in vol.label_remap.items()},
        "mask_label_counts": label_counts(vol.array),
        "fallback_components": fallback,
        "built": utc_now(),
    }


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
    job: CaseJob, *, out: str, params: BuildParams, options: dict[str, Any] | None = None
) -> CaseOutcome:
    """Compute and write one case; never raises (a failure is an outcome).

    Runs in a Dask worker: it opens the store itself, so only the job and this
    outcome are sent over the wire. With ``job.repair``, a stored case whose
    data pass their checksums is left alone (outcome ``up-to-date``) and only a
    damaged one is rebuilt. ``options`` are the client's storage options
    (:mod:`skelprep._fs`), set in the worker before any URL is opened.
    """
    if options is not None:
        set_storage_options(options)
    case = job.case

    def work() -> CaseOutcome:
        if job.repair and _stored_case_intact(out, case.case_id):
            return CaseOutcome(case.case_id, "up-to-date")
        with local_file(case.mask) as mask:  # a URL's mask is downloaded once, hashed and read
            fingerprint = file_sha256(mask)
            vol = read_mask(mask)
        _check_images(case, vol.array.shape)
        targets = skeleton_targets(
            vol.array,
            radius=params.radius,
            mode=params.mode,
            ignore_label=params.ignore_label,
            slice_axis=params.slice_axis,
        )
        attrs = _case_attrs(job, fingerprint, params, vol, targets.fallback_components)
        write_case(open_root(out, mode="a"), case.case_id, tube=targets.tube, thin=targets.thin, attrs=attrs)
        return CaseOutcome(case.case_id, "built", fallback_components=targets.fallback_components)

    return guarded(case.case_id, case.mask, work)


def _source(case: Case, layout: DatasetLayout) -> str:
    """The mask's path as recorded: relative to the dataset root where it lies below it."""
    try:
        return case.mask.relative_to(layout.root).as_posix()
    except ValueError:
        return case.mask.as_posix()


def _open_for_build(out: str, layout: DatasetLayout, params: BuildParams):
    try:
        return open_for_writing(
            out,
            {
                "params": params.as_dict(),
                "versions": _versions(),
                "dataset": str(layout.root)
                if isinstance(layout.root, RemotePath)
                else os.path.abspath(layout.root),
                "layout": layout.kind,
                "label_names": {str(k): v for k, v in layout.label_names.items()},
            },
        )
    except StoreError as exc:
        raise BuildError(str(exc)) from exc


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
    dataset : path or URL
        Dataset folder (nnU-Net raw, generic ``labels/``+``images/``, or any folder with ``masks``),
        local or a URL (``s3://bucket/raw/Dataset101_X``; see :mod:`skelprep._fs` for credentials).
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
    check_memory_limit(memory_limit, scheduler)
    layout = discover(dataset, masks=masks, images=images)
    params = params or BuildParams()
    if params.ignore_label is None and layout.ignore_label is not None:
        params = BuildParams(params.radius, params.mode, layout.ignore_label, params.slice_axis)
    param_dict = params.as_dict()
    out = os.fspath(out) if out is not None else default_store_path(dataset)
    report = BuildReport(store=out)
    report.outcomes.extend(CaseOutcome(p.case_id, "failed", str(p)) for p in layout.problems)
    with store_lock(out) as lease:
        remove_partial_files(out)
        root = _open_for_build(out, layout, params)
        store = SkeletonStore(root, out)
        jobs = []
        for case in layout.cases:
            check = check_case(store, case, param_dict)
            if check.state == "ok" and not force and not repair:
                report.outcomes.append(CaseOutcome(case.case_id, "up-to-date"))
            elif check.state == "failed-input":
                report.outcomes.append(CaseOutcome(case.case_id, "failed", check.reason))
            else:
                repair_only = check.state == "ok" and not force  # with --repair: rebuilt only if damaged
                jobs.append(CaseJob(case, _source(case, layout), repair=repair_only))
        if jobs:
            report.outcomes.extend(
                run_cases(
                    functools.partial(build_case, out=out, params=params, options=storage_options()),
                    jobs,
                    case_id=lambda job: job.case.case_id,
                    source=lambda job: job.case.mask,
                    workers=workers,
                    scheduler=scheduler,
                    memory_limit=memory_limit,
                    progress=progress,
                )
            )
        if lease is not None and lease.lost:  # another build may be writing now: leave the rest to it
            raise BuildError(
                f"{out}: {lease.lost} while this build ran; rerun 'skelprep build' when it is done"
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
