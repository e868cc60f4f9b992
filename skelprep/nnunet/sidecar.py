"""``skelprep nnunet build``: the sidecar store of one preprocessed configuration, and its currency check.

Store: ``$nnUNet_preprocessed/DatasetXXX/skelprep/<data_identifier>/``, a skelprep store whose cases are
nnU-Net's case identifiers, each with ``tube`` and ``thin`` of the preprocessed seg's spatial shape and voxel
order (2D configurations: chunked one slice at a time). A case is current when the store's rule
(:func:`skelprep.store.case_state`) says so against the SHA-256 of the preprocessed seg file
(``<id>_seg.b2nd``, or ``<id>.npz`` for nnU-Net's numpy format) and the parameters; re-running nnU-Net's
preprocessing rewrites the file, so the case becomes stale and the next build redoes it.

The topology targets of ``skelprep build --targets`` (``sdf``, ``radius``, ``components``;
:func:`skelprep.targets.build_targets`) are stored beside them on request, computed on the preprocessed
seg (``-1`` as background) with the plans' spacing of the configuration, ``sdf`` for the foreground labels
of the preprocessed folder's ``dataset.json`` (never the ignore label). A 2D configuration computes them per
slice along axis 0, as its tube and nnU-Net's 2D patches: in-plane distances with the plans' in-plane
spacing, components at 8-connectivity within a slice (numbered on through the slices). Each case records
them and these parameters in its ``targets`` attribute; a case lacking a requested target, or holding it
with other parameters, is stale, and the build computes only that target (the tube and thin skeleton,
current, are reused).

The build is ``skelprep build``'s own loop (:func:`skelprep.build.run_plan`) with the preprocessed segs as its
source of cases: the store's lock and the clean-up of killed writes, an S3 lease, one task per case in process
or on Dask, per-case one-line failures, a full disk ending the build in one line, pruning of cases nnU-Net no
longer has, and consolidation.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from skelprep._util import utc_now
from skelprep.build import (
    BuildParams,
    BuildPlan,
    BuildReport,
    extra_target_names,
    extra_targets,
    locked_store,
    run_plan,
    store_case,
    stored_targets,
    target_arrays,
)
from skelprep.io import InputError, file_sha256
from skelprep.nnunet.preprocessed import DEFAULT_PLANS, PreprocessedConfiguration, locate, read_seg
from skelprep.nnunet.targets import preprocessed_labels, preprocessed_targets
from skelprep.runner import CaseOutcome, check_memory_limit, guarded
from skelprep.store import (
    FORMAT_VERSION,
    CaseState,
    SkeletonStore,
    StoreError,
    case_state,
    label_counts,
    open_root,
)
from skelprep.targets import TargetError, target_params

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
    targets: tuple[str, ...] = ()  # of EXTRA_TARGETS, beside the tube and thin skeleton
    target_spacing: tuple[float, ...] = ()  # the plans' spacing (in-plane for 2D configurations)
    classes: tuple[int, ...] = ()  # the sdf's: dataset.json's foreground labels
    reuse_targets: bool = False  # tube and thin are current: only the targets beside them are computed


def _slice_axis(two_d: bool, ndim: int) -> int | None:
    """The axis a 2D configuration's targets are computed per slice along (its 2D patches' slices)."""
    return 0 if two_d and ndim == 3 else None


def _target_params(config: PreprocessedConfiguration, name: str, ndim: int) -> dict:
    """What target ``name`` of a case of ``ndim`` spatial axes is built with in this configuration."""
    return target_params(
        name,
        ndim,
        spacing=config.spacing,
        classes=config.foreground_labels,
        slice_axis=_slice_axis(config.two_d, ndim),
    )


def build_sidecar_case(case: SidecarCase, *, out: str, params: BuildParams) -> CaseOutcome:
    """Read, compute and write one case; never raises (a failure is an outcome with a one-line reason)."""

    def work() -> CaseOutcome:
        fingerprint = file_sha256(case.seg_file)
        seg = read_seg(case.seg_file)
        targets = stored_targets(out, case.case_id) if case.reuse_targets else None
        if targets is None:
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
        if case.targets:
            labels = preprocessed_labels(seg)
            extra, attrs["targets"] = extra_targets(
                out,
                case.case_id,
                case.targets,
                labels,
                targets.thin,
                spacing=case.target_spacing,
                classes=case.classes,
                ignore_label=params.ignore_label,
                reuse=case.reuse_targets,
                slice_axis=_slice_axis(case.two_d, labels.ndim),
            )
            arrays.update(extra)
        patch = (1, 512, 512) if case.two_d else None  # 2D configurations read one slice at a time
        return store_case(
            out,
            case.case_id,
            arrays,
            {**attrs, **target_attrs},
            patch=patch,
            fallback_components=targets.fallback_components,
        )

    return guarded(case.case_id, case.seg_file, work)


def _state(
    store: SkeletonStore,
    config: PreprocessedConfiguration,
    case_id: str,
    params: dict,
    targets: tuple[str, ...] = (),
) -> CaseState:
    """The store's currency rule for one case, against its preprocessed seg file now, with ``targets``
    (of :data:`~skelprep.store.EXTRA_TARGETS`) stored with this configuration's parameters."""
    meta = store.case_attrs(case_id)
    state = case_state(meta)
    if not state.ok:
        return state
    try:
        ndim = len(meta.get("shape") or ())
        wanted = {n: _target_params(config, n, ndim) for n in targets}
    except TargetError as exc:
        return CaseState("failed-input", f"{config.seg_file(case_id)}: {exc}")
    try:
        state = case_state(
            meta,
            fingerprint=file_sha256(config.seg_file(case_id)),
            params=params,
            layout=FORMAT_VERSION,
            targets=wanted,
        )
    except InputError as exc:
        return CaseState("failed-input", str(exc))
    if state.state == "stale" and not state.images_only and not state.targets_only:
        return CaseState("stale", "preprocessed segmentation changed since it was built")
    return state


def stale_cases(config: PreprocessedConfiguration, targets: Sequence[str] = ()) -> dict[str, CaseState]:
    """The configuration's cases whose sidecar entry is not current (empty if all are).

    ``targets``: names of ``--targets`` the sidecar must hold (``tube`` and ``thin`` it always does); a case
    without one of them, or with one built with other parameters, is stale.

    Raises
    ------
    StoreError
        There is no sidecar store.
    BuildError
        A name of ``targets`` is no target.
    """
    extras = extra_target_names(targets)
    store = SkeletonStore(open_root(config.sidecar, mode="r"), config.sidecar)
    params = sidecar_params(config).as_dict()
    states = {case_id: _state(store, config, case_id, params, extras) for case_id in config.case_ids()}
    return {case_id: state for case_id, state in states.items() if not state.ok}


def require_current(config: PreprocessedConfiguration, targets: Sequence[str] = ()) -> None:
    """Raise :class:`SidecarError` (one line, naming the build command) unless every case is current
    and holds ``targets`` (see :func:`stale_cases`)."""
    command = config.build_command(targets)
    try:
        problems = stale_cases(config, targets)
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
    targets: Sequence[str] | None = None,
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
    targets : sequence of str, optional
        As for :func:`skelprep.build.build`: ``tube`` and ``thin`` (always) and any of ``sdf``, ``radius``,
        ``components``, kept by later builds; a case lacking one gets it added, only it computed.

    Raises
    ------
    NnUNetError
        The dataset or configuration cannot be found as nnU-Net would find it.
    BuildError
        The store is locked by another build or unusable, or an option is invalid.
    """
    start = time.perf_counter()
    check_memory_limit(memory_limit, scheduler)
    extras = extra_target_names(targets)
    config = locate(dataset, configuration, plans_identifier)
    out = str(config.sidecar)
    params = sidecar_params(config)
    report = BuildReport(store=out)
    options = dict(workers=workers, scheduler=scheduler, memory_limit=memory_limit, progress=progress)
    with locked_store(out) as (held, store):
        if store is not None:  # sticky: a target once stored is kept by later builds
            extras = extra_target_names([*extras, *(store.attrs.get("targets") or ())])
        jobs = []
        for case_id in config.case_ids():
            state = _state(store, config, case_id, params.as_dict(), extras) if store is not None else None
            if state is not None and state.ok and not force:
                report.outcomes.append(CaseOutcome(case_id, "up-to-date"))
            elif state is not None and state.state == "failed-input":
                report.outcomes.append(CaseOutcome(case_id, "failed", state.reason))
            else:
                seg_file = config.seg_file(case_id)
                source = seg_file.relative_to(config.dataset_folder).as_posix()
                spacing = None if config.two_d else config.spacing
                job = SidecarCase(
                    case_id,
                    str(seg_file),
                    source,
                    config.two_d,
                    spacing,
                    targets=extras,
                    target_spacing=config.spacing,
                    classes=config.foreground_labels,
                    reuse_targets=state is not None and state.targets_only and not force,
                )
                jobs.append(job)
        report.plan_phases["plan"] = time.perf_counter() - start
        attrs = {
            "params": params.as_dict(),
            # relative, as skelprep build records it: the store tells nothing of this machine's folders
            "dataset": Path(os.path.relpath(config.dataset_folder, config.sidecar)).as_posix(),
            "layout": LAYOUT,
            "nnunet": {
                "configuration": config.configuration,
                "plans_identifier": config.plans_identifier,
                "data_identifier": config.data_identifier,
            },
        }
        if extras:  # a sidecar of the tube and thin skeleton only records no target list
            attrs["targets"] = list(extras)
        plan = BuildPlan(
            attrs,
            jobs,
            functools.partial(build_sidecar_case, out=out, params=params),
            job_id=lambda job: job.case_id,
            job_source=lambda job: job.seg_file,
            keep=frozenset(config.case_ids()),  # nnU-Net's folder is the whole truth
        )
        run_plan(plan, report, out, held, store, **options)
    report.outcomes.sort(key=lambda o: o.case_id)
    report.seconds = time.perf_counter() - start
    return report
