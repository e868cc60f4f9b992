"""``skelprep nnunet build``: the sidecar store of one preprocessed configuration, and its currency check.

Store: ``$nnUNet_preprocessed/DatasetXXX/skelprep/<data_identifier>/``, a skelprep store (format 1) whose
cases are nnU-Net's case identifiers, each with ``tube`` and ``thin`` of the preprocessed seg's spatial
shape and voxel order (2D configurations: chunked one slice at a time). A case is current when the store's
rule (:func:`skelprep.store.case_state`) says so against the SHA-256 of the preprocessed seg file
(``<id>_seg.b2nd``, or ``<id>.npz`` for nnU-Net's numpy format) and the parameters; re-running nnU-Net's
preprocessing rewrites the file, so the case becomes stale and the next build redoes it.

The build is ``skelprep build``'s machinery: the store's lock and clean-up of killed writes
(:mod:`skelprep.store.lock`), one task per case in process or on Dask (:mod:`skelprep.runner`), the crash-safe
case write with CRC-32C chunks and checksums (:meth:`skelprep.store.write.StoreWriter.write_case`), and per-case one-line
failures.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

from skelprep._util import utc_now
from skelprep.build import BuildParams, BuildReport, _versions, target_arrays
from skelprep.io import InputError, file_sha256
from skelprep.nnunet.preprocessed import DEFAULT_PLANS, PreprocessedConfiguration, locate, read_seg
from skelprep.nnunet.targets import preprocessed_targets
from skelprep.runner import BuildError, CaseOutcome, check_memory_limit, guarded, run_cases
from skelprep.store import (
    FORMAT_VERSION,
    CaseState,
    SkeletonStore,
    StoreError,
    case_state,
    label_counts,
    open_root,
)
from skelprep.store.lock import remove_partial_files, store_lock
from skelprep.store.write import StoreWriter

__all__ = [
    "SidecarCase",
    "SidecarError",
    "sidecar_params",
    "build_sidecar",
    "build_sidecar_case",
    "stale_cases",
    "require_current",
]

LAYOUT = "nnunet-preprocessed"


class SidecarError(SystemExit):
    """The sidecar is missing or not current; the message names the command that builds it.

    A :class:`SystemExit`: raised in the trainer's ``on_train_start``, uncaught, it ends ``nnUNetv2_train``
    with this one line on stderr and exit status 1 instead of a traceback. Catch it by name (``except
    Exception`` does not).
    """

    def __str__(self) -> str:
        return str(self.code)


def sidecar_params(config: PreprocessedConfiguration) -> BuildParams:
    """The target parameters of a configuration's sidecar (recorded per case; a change makes cases stale)."""
    return BuildParams(
        radius=2, mode="joint", ignore_label=config.ignore_label, slice_axis=0 if config.two_d else None
    )


@dataclass(frozen=True)
class SidecarCase:
    """One case to build, as sent to a worker."""

    case_id: str
    seg_file: str
    source: str  # the seg file relative to the dataset folder, as recorded in the case
    two_d: bool
    spacing: (
        tuple[float, ...] | None
    )  # None for 2D configurations (their plans know the in-plane spacing only)


def build_sidecar_case(case: SidecarCase, *, out: str, params: BuildParams) -> CaseOutcome:
    """Read, compute and write one case; never raises (a failure is an outcome with a one-line reason)."""

    def work() -> CaseOutcome:
        fingerprint = file_sha256(case.seg_file)
        seg = read_seg(case.seg_file)
        targets = preprocessed_targets(
            seg, two_d=case.two_d, ignore_label=params.ignore_label, radius=params.radius
        )
        attrs = {
            "source": case.source,
            "fingerprint": fingerprint,
            "params": params.as_dict(),
            "axes": "nnU-Net preprocessed order (the seg's channel axis dropped)",
            "spacing": None if case.spacing is None else list(case.spacing),
            "affine": None,
            "label_remap": {},
            "mask_label_counts": label_counts(seg[0].clip(min=0)),
            "fallback_components": targets.fallback_components,
            "built": utc_now(),
        }
        arrays, target_attrs = target_arrays(targets)
        arrays["label"] = (
            seg[0].clip(min=0),
            None,
        )  # the case's OME-Zarr image: the seg, as nnU-Net stores it
        patch = (1, 512, 512) if case.two_d else None  # 2D configurations read one slice at a time
        StoreWriter.attach(out).write_case(case.case_id, arrays, {**attrs, **target_attrs}, patch=patch)
        return CaseOutcome(case.case_id, "built", fallback_components=targets.fallback_components)

    return guarded(case.case_id, case.seg_file, work)


def _state(store: SkeletonStore, config: PreprocessedConfiguration, case_id: str, params: dict) -> CaseState:
    """The store's currency rule for one case, against its preprocessed seg file now."""
    meta = store.case_attrs(case_id)
    state = case_state(meta)
    if not state.ok:
        return state
    try:
        state = case_state(
            meta, fingerprint=file_sha256(config.seg_file(case_id)), params=params, layout=FORMAT_VERSION
        )
    except InputError as exc:
        return CaseState("failed-input", str(exc))
    if state.state == "stale" and not state.images_only:
        return CaseState("stale", "preprocessed segmentation changed since it was built")
    return state


def stale_cases(config: PreprocessedConfiguration) -> dict[str, CaseState]:
    """The configuration's cases whose sidecar entry is not current (empty if all are).

    Raises
    ------
    StoreError
        There is no sidecar store.
    """
    store = SkeletonStore(open_root(config.sidecar, mode="r"), config.sidecar)
    params = sidecar_params(config).as_dict()
    states = {case_id: _state(store, config, case_id, params) for case_id in config.case_ids()}
    return {case_id: state for case_id, state in states.items() if not state.ok}


def require_current(config: PreprocessedConfiguration) -> None:
    """Raise :class:`SidecarError` (one line, naming the build command) unless every case is current."""
    command = config.build_command()
    try:
        problems = stale_cases(config)
    except StoreError:
        raise SidecarError(
            f"{config.sidecar}: no Skeleton Recall targets; build them with: {command}"
        ) from None
    if problems:
        case_id, state = next(iter(problems.items()))
        raise SidecarError(
            f"{config.sidecar}: {len(problems)} case(s) not current (e.g. {case_id}: {state.reason}); "
            f"build them with: {command}"
        )


def build_sidecar(
    dataset: str | int,
    configuration: str,
    *,
    plans_identifier: str = DEFAULT_PLANS,
    workers: int | None = None,
    scheduler: str | None = None,
    memory_limit: str | None = None,
    force: bool = False,
    progress: bool = False,
) -> BuildReport:
    """Build (or bring up to date) the sidecar of one preprocessed configuration.

    Parameters
    ----------
    dataset : str or int
        nnU-Net dataset id or name, resolved as ``nnUNetv2_train`` resolves it.
    configuration : str
        A preprocessed configuration of the plans (``2d``, ``3d_fullres``, ...).
    plans_identifier : str
        The plans' name.
    workers, scheduler, memory_limit, progress
        As for :func:`skelprep.build.build`.
    force : bool
        Rebuild every case, even current ones.

    Raises
    ------
    NnUNetError
        The dataset or configuration cannot be found as nnU-Net would find it.
    BuildError
        The store is locked by another build or unusable, or an option is invalid.
    """
    start = time.perf_counter()
    check_memory_limit(memory_limit, scheduler)
    config = locate(dataset, configuration, plans_identifier)
    out = str(config.sidecar)
    params = sidecar_params(config)
    report = BuildReport(store=out)
    with contextlib.ExitStack() as stack:
        try:
            held = stack.enter_context(store_lock(out))
        except StoreError as exc:
            raise BuildError(str(exc)) from exc
        remove_partial_files(out)
        try:
            writer = StoreWriter.open(
                out,
                {
                    "params": params.as_dict(),
                    "versions": _versions(),
                    # relative, as skelprep build records it: the store tells nothing of this machine's folders
                    "dataset": Path(os.path.relpath(config.dataset_folder, config.sidecar)).as_posix(),
                    "layout": LAYOUT,
                    "nnunet": {
                        "configuration": config.configuration,
                        "plans_identifier": config.plans_identifier,
                        "data_identifier": config.data_identifier,
                    },
                },
                held,
            )
        except StoreError as exc:
            raise BuildError(str(exc)) from exc
        store = SkeletonStore(writer.root, out)
        jobs = []
        for case_id in config.case_ids():
            state = _state(store, config, case_id, params.as_dict())
            if state.ok and not force:
                report.outcomes.append(CaseOutcome(case_id, "up-to-date"))
            elif state.state == "failed-input":
                report.outcomes.append(CaseOutcome(case_id, "failed", state.reason))
            else:
                seg_file = config.seg_file(case_id)
                source = seg_file.relative_to(config.dataset_folder).as_posix()
                jobs.append(
                    SidecarCase(
                        case_id, str(seg_file), source, config.two_d, None if config.two_d else config.spacing
                    )
                )
        if jobs:
            report.outcomes.extend(
                run_cases(
                    functools.partial(build_sidecar_case, out=out, params=params),
                    jobs,
                    case_id=lambda job: job.case_id,
                    source=lambda job: job.seg_file,
                    workers=workers,
                    scheduler=scheduler,
                    memory_limit=memory_limit,
                    progress=progress,
                )
            )
        # nnU-Net's folder is the whole truth: cases it no longer has (preprocessing re-run) go too
        known = set(config.case_ids())
        for case_id in sorted((set(store.case_ids) | set(store.incomplete_case_ids)) - known):
            writer.delete_case(case_id)
            report.pruned.append(case_id)
        writer.finalize()
    report.outcomes.sort(key=lambda o: o.case_id)
    report.seconds = time.perf_counter() - start
    return report
