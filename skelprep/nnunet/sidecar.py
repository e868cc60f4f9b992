"""``skelprep nnunet build``: the sidecar store of one preprocessed configuration, and its currency check.

Store: ``$nnUNet_preprocessed/DatasetXXX/skelprep/<data_identifier>/``, a skelprep store (format 1) whose
cases are nnU-Net's case identifiers, each with ``tube`` and ``thin`` of the preprocessed seg's spatial
shape and voxel order. A case is current when it is complete, its ``fingerprint`` is the SHA-256 of the
preprocessed seg file (``<id>_seg.b2nd``, or ``<id>.npz`` for the numpy format) and its parameters match;
re-running nnU-Net's preprocessing changes the file, so the case becomes stale and is rebuilt.
"""

from __future__ import annotations

import datetime as _dt
import time
import traceback
from dataclasses import dataclass
from typing import Any

from skelprep.build import BuildParams, CaseOutcome
from skelprep.io import InputError, file_sha256
from skelprep.nnunet.preprocessed import PreprocessedConfiguration, read_seg
from skelprep.nnunet.targets import preprocessed_targets
from skelprep.store import SkeletonStore, StoreError, label_counts, open_root, write_case

__all__ = [
    "SidecarCase",
    "sidecar_params",
    "build_sidecar_case",
    "stale_cases",
    "require_current",
    "SidecarError",
]

LAYOUT = "nnunet-preprocessed"


class SidecarError(RuntimeError):
    """The sidecar is missing or not current; the message names the command that builds it."""


def sidecar_params(config: PreprocessedConfiguration) -> dict[str, Any]:
    """The target parameters of a configuration's sidecar (recorded per case; a change makes cases stale)."""
    params = BuildParams(
        radius=2, mode="joint", ignore_label=config.ignore_label, slice_axis=0 if config.two_d else None
    )
    return params.as_dict()


@dataclass(frozen=True)
class SidecarCase:
    """One case to build (picklable: sent to a Dask worker)."""

    case_id: str
    seg_file: str
    source: str  # seg file relative to the dataset folder, recorded in the case
    store: str
    params: dict[str, Any]
    two_d: bool
    spacing: tuple[float, ...]


def _attrs(
    case: SidecarCase, fingerprint: str, labels_counts: dict[str, int], fallback: int
) -> dict[str, Any]:
    return {
        "source": case.source,
        "fingerprint": fingerprint,
        "params": case.params,
        "axes": "nnU-Net preprocessed (seg channel dropped)",
        # a 2D configuration's plans know the in-plane spacing only
        "spacing": None if case.two_d else [float(s) for s in case.spacing],
        "affine": None,
        "label_remap": {},
        "mask_label_counts": labels_counts,
        "fallback_components": fallback,
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def build_sidecar_case(case: SidecarCase) -> CaseOutcome:
    """Read, compute and write one case; never raises (a failure is an outcome with a one-line reason)."""
    start = time.perf_counter()
    try:
        fingerprint = file_sha256(case.seg_file)
        seg = read_seg(case.seg_file)
        targets = preprocessed_targets(
            seg, two_d=case.two_d, ignore_label=case.params["ignore_label"], radius=case.params["radius"]
        )
        attrs = _attrs(case, fingerprint, label_counts(seg[0].clip(min=0)), targets.fallback_components)
        write_case(
            open_root(case.store, mode="a"), case.case_id, tube=targets.tube, thin=targets.thin, attrs=attrs
        )
    except InputError as exc:
        return CaseOutcome(case.case_id, "failed", str(exc), time.perf_counter() - start)
    except (ValueError, OSError, MemoryError) as exc:
        why = "out of memory" if isinstance(exc, MemoryError) else str(exc).strip().splitlines()[0]
        return CaseOutcome(
            case.case_id, "failed", str(InputError(case.seg_file, why)), time.perf_counter() - start
        )
    except Exception as exc:
        why = f"unexpected {type(exc).__name__}: {exc}".strip().splitlines()[0]
        return CaseOutcome(
            case.case_id,
            "failed",
            str(InputError(case.seg_file, why)),
            time.perf_counter() - start,
            detail=traceback.format_exc(),
        )
    return CaseOutcome(
        case.case_id,
        "built",
        seconds=time.perf_counter() - start,
        fallback_components=targets.fallback_components,
    )


def stale_cases(config: PreprocessedConfiguration) -> dict[str, str]:
    """Cases of the configuration whose sidecar entry is not current: ``{case_id: reason}`` (empty if all are).

    Raises
    ------
    StoreError
        No sidecar store at all.
    """
    store = SkeletonStore(open_root(config.sidecar, mode="r"), config.sidecar)
    params = sidecar_params(config)
    problems = {}
    for case_id in config.case_ids():
        meta = store.case_attrs(case_id)
        if meta is None:
            problems[case_id] = "not built"
        elif meta.get("complete") is not True:
            problems[case_id] = "its build did not finish"
        else:
            try:
                fingerprint = file_sha256(config.seg_file(case_id))
            except InputError as exc:
                problems[case_id] = str(exc)
                continue
            if meta.get("fingerprint") != fingerprint:
                problems[case_id] = "preprocessed segmentation changed since it was built"
            elif meta.get("params") != params:
                problems[case_id] = "built with other parameters"
    return problems


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
        case_id, reason = next(iter(problems.items()))
        raise SidecarError(
            f"{config.sidecar}: {len(problems)} case(s) missing or stale (e.g. {case_id}: {reason}); "
            f"build them with: {command}"
        )


def _root_meta(root, config: PreprocessedConfiguration, params: dict[str, Any]) -> None:
    """Create or refresh the store's root attributes (refuse a folder that is some other zarr)."""
    from skelprep.build import BuildError, _versions
    from skelprep.store import ATTRS_KEY, FORMAT_VERSION

    meta = root.attrs.get(ATTRS_KEY)
    if meta is None:
        if any(True for _ in root.members()):
            raise BuildError(f"{config.sidecar}: exists and is not a skelprep store")
        meta = {"format_version": FORMAT_VERSION, "created": _now(), "cases": []}
    elif meta.get("format_version") != FORMAT_VERSION:
        raise BuildError(f"{config.sidecar}: store format version {meta.get('format_version')}")
    root.attrs.update(
        {
            ATTRS_KEY: {
                **meta,
                "params": params,
                "versions": _versions(),
                "dataset": str(config.dataset_folder),
                "layout": LAYOUT,
                "nnunet": {
                    "configuration": config.configuration,
                    "plans_identifier": config.plans_identifier,
                    "data_identifier": config.data_identifier,
                },
            }
        }
    )


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def build_sidecar(
    dataset: str | int,
    configuration: str,
    *,
    plans_identifier: str = "nnUNetPlans",
    workers: int | None = None,
    scheduler: str | None = None,
    memory_limit: str | None = None,
    force: bool = False,
    progress: bool = False,
):
    """Build (or bring up to date) the sidecar of one preprocessed configuration; see the module docstring.

    Returns
    -------
    skelprep.build.BuildReport

    Raises
    ------
    NnUNetError
        The dataset or configuration cannot be found as nnU-Net would find it.
    BuildError
        The store is locked by another build or unusable.
    """
    from skelprep.build import BuildReport, _store_lock
    from skelprep.nnunet.preprocessed import locate

    start = time.perf_counter()
    config = locate(dataset, configuration, plans_identifier)
    out = str(config.sidecar)
    params = sidecar_params(config)
    report = BuildReport(store=out)
    with _store_lock(out):
        root = open_root(out, mode="a")
        _root_meta(root, config, params)
        stale = stale_cases(config)
        todo = []
        for case_id in config.case_ids():
            if case_id in stale or force:
                seg_file = config.seg_file(case_id)
                todo.append(
                    SidecarCase(
                        case_id,
                        str(seg_file),
                        seg_file.relative_to(config.dataset_folder).as_posix(),
                        out,
                        params,
                        config.two_d,
                        config.spacing,
                    )
                )
            else:
                report.outcomes.append(CaseOutcome(case_id, "up-to-date"))
        report.outcomes.extend(build_sidecar_case(case) for case in todo)  # TODO runner
        from skelprep.store import finalize_store

        finalize_store(root, out)
    report.outcomes.sort(key=lambda o: o.case_id)
    report.seconds = time.perf_counter() - start
    return report
