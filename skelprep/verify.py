"""Check a store against its dataset: which cases are missing, stale, corrupt or orphaned.

:func:`check_case` applies the store's one "is this case current" rule
(:func:`skelprep.store.case_state`) to a dataset case; ``build`` plans with it,
and :func:`verify` adds a read of the data against its checksums.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from skelprep._fs import RemotePath
from skelprep.io import InputError, file_sha256
from skelprep.layout import Case, discover
from skelprep.store import (
    FORMAT_VERSION,
    SkeletonStore,
    StoreError,
    case_state,
    damaged_root,
    default_store_path,
    open_root,
    verify_case_data,
)

__all__ = ["CaseCheck", "CheckState", "check_case", "verify"]

# What verify can say of a case; "corrupt-root" is the check of the root document (case id "zarr.json",
# never a case id). The first five are a stored case's own (skelprep.store.CaseState).
CheckState = Literal[
    "ok",
    "missing",
    "incomplete",
    "stale",
    "params-changed",
    "corrupt",
    "orphan",
    "failed-input",
    "corrupt-root",
]


@dataclass(frozen=True)
class CaseCheck:
    """State of one case of a dataset against its store (see :func:`verify`).

    ``images_only``: the targets are current and only the case's images need
    (re)writing; ``targets_only``: only targets beside the tube need adding
    (see :class:`skelprep.store.CaseState`).
    """

    case_id: str
    state: CheckState
    reason: str = ""
    images_only: bool = False
    targets_only: bool = False


def known_sdf_classes(
    chosen: Sequence[int] | None, labels: Iterable[int], ignore_label: int | None
) -> list[int]:
    """The sdf's classes as far as they are known before a mask is read.

    ``chosen`` (``--classes``), else the dataset's named ``labels`` but the background and
    the ignore label; empty when neither names any: each case then takes ``1..`` its own
    highest label.

    >>> known_sdf_classes(None, [0, 1, 2, 3], ignore_label=3)
    [1, 2]
    """
    if chosen:
        return [int(c) for c in chosen]
    return [int(v) for v in labels if v not in (0, ignore_label)]


def target_expectations(
    names: Sequence[str], *, slice_axis: int | None, classes: Sequence[int] | None
) -> dict[str, dict[str, Any]]:
    """What each stored target's recorded parameters must hold, as far as they are known without the mask.

    Every target is computed per slice along ``slice_axis`` or on the whole case (None); the sdf is of
    ``classes`` where they are known (:func:`known_sdf_classes`).

    >>> target_expectations(["sdf", "radius"], slice_axis=None, classes=[1, 2])
    {'sdf': {'slice_axis': None, 'classes': [1, 2]}, 'radius': {'slice_axis': None}}
    """
    expected: dict[str, dict[str, Any]] = {n: {"slice_axis": slice_axis} for n in names}
    if "sdf" in expected and classes:
        expected["sdf"]["classes"] = [int(c) for c in classes]
    return expected


def check_case(
    store: SkeletonStore,
    case: Case,
    params: dict[str, Any] | None,
    *,
    with_images: bool = False,
    targets: Sequence[str] | Mapping[str, Mapping[str, Any]] = (),
) -> CaseCheck:
    """Is the stored case up to date with its mask (and images), these parameters and ``targets``?

    The mask is hashed only when the stored case is complete (``failed-input``
    when it cannot be read). Its image files are hashed too when ``with_images``
    or when the stored case carries images: a changed image makes it ``stale``.
    A case without one of ``targets`` (beside the tube), or, where ``targets`` maps
    names to parameters, with one built with other values of them, is ``stale``.
    """
    meta = store.case_attrs(case.case_id)
    if case.image_problem is not None and (with_images or (meta or {}).get("images")):
        return CaseCheck(case.case_id, "failed-input", str(case.image_problem))
    state = case_state(meta)
    if state.ok:
        try:
            images = None
            if with_images or (meta or {}).get("images"):
                images = [file_sha256(path) for path in case.images]
            state = case_state(
                meta,
                fingerprint=file_sha256(case.mask),
                params=params,
                image_fingerprints=images,
                layout=FORMAT_VERSION,
                targets=targets,
            )
        except InputError as exc:
            return CaseCheck(case.case_id, "failed-input", str(exc))
    return CaseCheck(case.case_id, state.state, state.reason, state.images_only, state.targets_only)


def _check_data(store: SkeletonStore, case: Case, params: dict[str, Any] | None) -> CaseCheck:
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
        return check_case(
            store,
            case,
            params,
            with_images=bool(store.attrs.get("with_images")),
            targets=tuple(store.attrs.get("targets") or ()),
        )
    return CaseCheck(case.case_id, "corrupt", "; ".join(problems))


def _unbuilt(case: Case, check: CaseCheck, incomplete: set[str]) -> CaseCheck:
    """A case that is not built: ``failed-input`` if its mask cannot be read (a build would fail it),
    ``incomplete`` where a folder of it lies in the store without group metadata (a killed build)."""
    if not isinstance(case.mask, RemotePath):  # a URL's mask is read when it is built, not fetched here
        try:
            file_sha256(case.mask)
        except InputError as exc:
            return CaseCheck(case.case_id, "failed-input", str(exc))
    if check.state == "missing" and case.case_id in incomplete:
        return CaseCheck(
            case.case_id,
            "incomplete",
            "its folder has no readable group metadata (a build killed before it wrote it)",
        )
    return check


def verify(
    dataset: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    masks: str | None = None,
    images: str | None = None,
    check_data: bool = True,
) -> list[CaseCheck]:
    """Check a store against its dataset.

    Reports, per case: ``missing``, ``incomplete``, ``stale`` (mask or image changed, or a
    store built with images lacks the case's images),
    ``params-changed``, ``corrupt`` (chunk bytes altered or removed, an array or
    its metadata gone; needs ``check_data``), ``failed-input`` (a discovery
    problem, or a mask that cannot be read), ``orphan`` (stored, but its mask is
    gone) or ``ok``. Parameters are compared with those of the store's last
    build, and so are the targets it added (a case without one is ``stale``). A local store whose root metadata is damaged gets one ``corrupt-root``
    check (case id ``zarr.json``), its cases checked from their own groups.
    """
    layout = discover(dataset, masks=masks, images=images)
    out = os.fspath(out) if out is not None else default_store_path(dataset)
    checks = [CaseCheck(p.case_id, "failed-input", str(p)) for p in layout.problems]
    try:
        store = SkeletonStore(open_root(out, mode="r"), out)
    except StoreError:
        damage = damaged_root(out)
        if damage is None:
            raise
        store = SkeletonStore.of_cases(out)
        checks.append(
            CaseCheck("zarr.json", "corrupt-root", f"{damage}; the cases were checked from their groups")
        )
    params = store.attrs.get("params")
    with_images = bool(store.attrs.get("with_images"))
    targets = target_expectations(
        tuple(store.attrs.get("targets") or ()),
        slice_axis=(params or {}).get("slice_axis"),
        classes=known_sdf_classes(
            store.attrs.get("sdf_classes"), layout.label_names, (params or {}).get("ignore_label")
        ),
    )
    incomplete = set(store.incomplete_case_ids)
    for case in layout.cases:
        check = check_case(store, case, params, with_images=with_images, targets=targets)
        if check.state == "ok" and check_data:
            check = _check_data(store, case, params)
        elif check.state in ("missing", "incomplete"):
            check = _unbuilt(case, check, incomplete)
        checks.append(check)
    known = {c.case_id for c in layout.cases} | {p.case_id for p in layout.problems}
    for case_id in sorted(set(store.case_ids) | incomplete):
        if case_id not in known:
            checks.append(CaseCheck(case_id, "orphan", "stored, but its mask is no longer in the dataset"))
    return sorted(checks, key=lambda c: c.case_id)
