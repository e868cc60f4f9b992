"""Evaluate a folder of predicted label maps against a folder of ground truths.

Files are paired by case id: the path relative to each folder, without
extension (``case_001.png`` with ``case_001.nii.gz`` too), both read with
:func:`skelprep.io.read_mask`. Where a skelprep store of the ground truth is
given (or found at ``GT_DIR/../skeletons.zarr``, nnU-Net's
``labelsTr/../skeletons.zarr``), the stored thin skeletons replace
skeletonizing the ground truth for cases that are up to date with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from skelprep.io import MASK_SUFFIXES, InputError, file_sha256, read_mask, split_suffix
from skelprep.metrics import evaluate_case, mean_metrics
from skelprep.store import case_state, default_store_path

__all__ = ["find_masks", "evaluate_folders", "store_thin"]


def find_masks(folder: str | os.PathLike) -> dict[str, Path]:
    """Mask files below ``folder`` by case id (relative path without extension); hidden and ``.zarr`` skipped.

    Raises
    ------
    InputError
        The folder does not exist, or two files share a case id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(".zarr"))
        for name in sorted(filenames):
            stem, suffix = split_suffix(name, MASK_SUFFIXES)
            if name.startswith(".") or not suffix:
                continue
            path = Path(dirpath) / name
            case_id = split_suffix(path.relative_to(folder).as_posix(), MASK_SUFFIXES)[0]
            if case_id in found:
                raise InputError(path, f"case id '{case_id}' also names {found[case_id].name}")
            found[case_id] = path
    return found


def _open_store(store: str | os.PathLike | None, gt_dir: Path):
    """The store to take ground-truth skeletons from, or None.

    An explicit ``store`` must open (its errors propagate); the default location
    is used only when a store is there.
    """
    from skelprep.store import StoreError, open_store

    if store is not None:
        return open_store(store)
    default = Path(default_store_path(gt_dir.resolve().parent))
    if not default.exists():
        return None
    try:
        return open_store(default)
    except StoreError:
        return None


def store_thin(store: Any, case_id: str, gt_path: Path, gt: np.ndarray) -> np.ndarray | None:
    """The stored thin skeleton of a ground truth, if it is valid for per-class metrics; else None.

    Valid when the case is complete, its fingerprint is the SHA-256 of
    ``gt_path``, its shape is ``gt``'s, it was built without per-slice skeletons
    or an ignore label, and ``thin == c`` is the skeleton of class ``c``: built
    per class, or the ground truth has at most one class (then the joint
    skeleton ``skeletonize(gt > 0) * gt`` is that class's).
    """
    if store is None:
        return None
    attrs = store.case_attrs(case_id)
    if not case_state(attrs).ok or not case_state(attrs, fingerprint=file_sha256(gt_path)).ok:
        return None
    params = attrs.get("params") or {}
    if tuple(attrs.get("shape", ())) != gt.shape:
        return None
    if params.get("slice_axis") is not None or params.get("ignore_label") is not None:
        return None
    if params.get("mode") != "per-class" and np.count_nonzero(np.unique(gt)) > 1:
        return None
    return store[case_id].thin[...]


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    store: str | os.PathLike | None = None,
    classes: Iterable[int] | None = None,
) -> dict[str, Any]:
    """Score every ground-truth case of ``gt_dir`` against its prediction in ``pred_dir``.

    Parameters
    ----------
    pred_dir, gt_dir : path
        Folders of label maps (PNG, NIfTI, TIFF), paired by case id.
    store : path, optional
        skelprep store of the ground truth; default ``gt_dir/../skeletons.zarr``
        if it exists. Its thin skeletons are reused where valid (see
        :func:`store_thin`), else the ground truth is skeletonized.
    classes : iterable of int, optional
        Classes to score (default: those present in each case).

    Returns
    -------
    dict
        ``cases`` (case id -> :func:`skelprep.metrics.evaluate_case` result plus
        ``gt_skeleton``: ``"store"`` or ``"computed"``), ``failed`` (case id ->
        reason: no prediction, unreadable file, shape mismatch), ``mean`` (mean
        over cases of the class-averaged metrics), ``class_mean`` (class ->
        mean over the cases that score it), ``store`` (the store used, or None).

    Examples
    --------
    >>> report = evaluate_folders("runs/x/predictions", "examples/road_cracks/labelsTr")  # doctest: +SKIP
    >>> report["mean"]["cldice"]                                                          # doctest: +SKIP
    0.83
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    gts = find_masks(gt_dir)
    if not gts:
        raise InputError(gt_dir, "no ground-truth masks found")
    preds = find_masks(pred_dir)
    opened = _open_store(store, gt_dir)
    classes = None if classes is None else [int(c) for c in classes]
    cases: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for case_id, gt_path in gts.items():
        pred_path = preds.get(case_id)
        if pred_path is None:
            failed[case_id] = f"{pred_dir / case_id}: no prediction for case '{case_id}'"
            continue
        try:
            gt = read_mask(gt_path).array
            pred = read_mask(pred_path).array
            if pred.shape != gt.shape:
                raise InputError(pred_path, f"shape {pred.shape} differs from ground truth shape {gt.shape}")
            thin = store_thin(opened, case_id, gt_path, gt)
            result = evaluate_case(pred, gt, classes=classes, gt_thin=thin)
        except InputError as exc:
            failed[case_id] = str(exc)
            continue
        result["gt_skeleton"] = "computed" if thin is None else "store"
        cases[case_id] = result
    per_class: dict[int, list[dict[str, float]]] = {}
    for result in cases.values():
        for c, values in result["classes"].items():
            per_class.setdefault(c, []).append(values)
    return {
        "pred_dir": os.fspath(pred_dir),
        "gt_dir": os.fspath(gt_dir),
        "store": None if opened is None else opened.path,
        "cases": cases,
        "failed": failed,
        "unmatched_predictions": sorted(set(preds) - set(gts)),
        "mean": mean_metrics(r["mean"] for r in cases.values() if r["mean"]),
        "class_mean": {c: mean_metrics(v) for c, v in sorted(per_class.items())},
    }
