"""Evaluate a folder of predicted label maps against a folder of ground truths.

The ground truth is a folder of label maps or a dataset folder as ``skelprep
build`` takes it, whose label folder is then used (:func:`ground_truth_folder`).
Files are paired by case id: the path relative to each folder, without
extension (``case_001.png`` with ``case_001.nii.gz`` too), found with the walk
and case-id rules of :func:`skelprep.layout.masks_by_case_id` and read with
:func:`skelprep.io.read_mask`. Each case is scored by
:func:`skelprep.metrics.evaluate_case` (per class, class mean, merged binary;
its conventions for empty classes and blank cases hold here too: such cases are
scored and counted, never left out of a mean).

Singleton axes: :func:`~skelprep.io.read_mask` drops trailing singleton axes,
so a 2D mask stored as a one-slice NIfTI ``(X, Y, 1)`` is scored as 2D and
thinned with Zhang, as skelprep builds its targets. With
``keep_singleton_axes=True`` it is scored as the 3D array in the file and
thinned with Lee, as 3D challenge scorers do.

Where a skelprep store of the ground truth is given (or found at
``GT_DIR/../skeletons.zarr``, nnU-Net's ``labelsTr/../skeletons.zarr``), its
thin skeletons replace skeletonizing the ground truth for cases that are up to
date with it, where they equal what would be computed (see
:func:`stored_skeletons`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skelprep.io import MASK_SUFFIXES, InputError, file_sha256, read_mask, split_suffix
from skelprep.layout import LayoutError, discover, masks_by_case_id
from skelprep.metrics import EMPTY_CONVENTION, SKELETON_METHODS, CaseScores, evaluate_case, mean_metrics
from skelprep.store import case_state, default_store_path

__all__ = [
    "CaseEvaluation",
    "EvaluationReport",
    "GroundTruthSkeletons",
    "find_masks",
    "ground_truth_folder",
    "read_label_map",
    "evaluate_folders",
    "stored_skeletons",
    "store_thin",
]

SKELETON_NOTES = {
    "skelprep": "skelprep.skeletonize_mask: scikit-image's thinning (Zhang 2D, Lee 3D) with a fallback "
    "skeleton for a component that Lee deletes whole",
    "skimage": "plain skimage.morphology.skeletonize (Zhang 2D, Lee 3D), as challenge scorers call it: a "
    "component it deletes whole has no skeleton, so topology sensitivity ignores it, and a mask of such "
    "components only gets clDice 0 even when predicted perfectly",
}
SINGLETON_NOTES = {
    False: "trailing singleton axes dropped on reading: a one-slice NIfTI (X, Y, 1) is scored as 2D, "
    "thinned with Zhang",
    True: "trailing singleton axes kept: a one-slice NIfTI (X, Y, 1) is scored as 3D, thinned with Lee",
}


def find_masks(folder: str | os.PathLike) -> tuple[dict[str, Path], dict[str, str]]:
    """Mask files below ``folder`` by case id, and the cases that cannot be paired (id -> reason).

    The walk and case-id rules are :func:`skelprep.layout.masks_by_case_id`'s:
    the ones a build of the same folder applies.

    Raises
    ------
    InputError
        The folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    masks, problems = masks_by_case_id(folder)
    return masks, {p.case_id: str(p) for p in problems}


def ground_truth_folder(gt: str | os.PathLike) -> Path:
    """The folder of ground-truth label maps that ``gt`` names: itself, or a dataset folder's label folder.

    A dataset folder as ``skelprep build`` takes it (``dataset.json`` with
    ``labelsTr/``, or a ``labels/``, ``masks/`` or ``labelsTr/`` subfolder) gives
    the label folder :func:`skelprep.layout.discover` finds in it; any other
    folder is a folder of label maps.

    Raises
    ------
    InputError
        The folder does not exist, or is a dataset folder whose layout is broken.
    """
    gt = Path(gt)
    if not gt.is_dir():
        raise InputError(gt, "folder not found")
    if (gt / "dataset.json").exists() or any((gt / n).is_dir() for n in ("labels", "masks", "labelsTr")):
        try:
            layout = discover(gt)
        except LayoutError as exc:
            raise InputError(gt, f"not a usable dataset folder ({exc})") from exc
        return Path(layout.mask_dir)
    return gt


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


@dataclass(frozen=True)
class GroundTruthSkeletons:
    """Stored skeletons of one ground truth that equal what :mod:`skelprep.metrics` would compute.

    Attributes
    ----------
    per_class : ndarray or None
        Labelled thin skeleton; ``per_class == c`` is class ``c``'s skeleton.
    binary : ndarray or None
        Skeleton of the merged binary mask ``gt > 0``.
    """

    per_class: np.ndarray | None = None
    binary: np.ndarray | None = None

    @property
    def source(self) -> str:
        """Where the ground-truth skeletons came from, for the report."""
        if self.per_class is not None and self.binary is not None:
            return "store"
        if self.per_class is not None:
            return "store (classes)"
        if self.binary is not None:
            return "store (merged binary)"
        return "computed"


def _current_attrs(store: Any, case_id: str, gt_path: Path) -> dict[str, Any] | None:
    """The stored case's attributes if it is complete and built from ``gt_path`` as it is now; else None."""
    if store is None:
        return None
    attrs = store.case_attrs(case_id)
    if not case_state(attrs).ok:  # missing or incomplete: no need to hash the mask
        return None
    return attrs if case_state(attrs, fingerprint=file_sha256(gt_path)).ok else None


def stored_skeletons(
    store: Any, case_id: str, gt_path: Path, gt: np.ndarray, skeleton_method: str = "skelprep"
) -> GroundTruthSkeletons:
    """The stored thin skeletons of a ground truth that are valid for the metrics; the others None.

    Valid when the case is complete, its fingerprint is the SHA-256 of
    ``gt_path``, its shape is ``gt``'s (so not with singleton axes kept), and
    it was built without per-slice skeletons or an ignore label. Then:

    - ``thin == c`` is class ``c``'s skeleton when built per class, or when the
      ground truth has at most one class (the joint skeleton is that class's);
    - ``thin > 0`` is the merged binary skeleton when built jointly
      (``skeletonize(gt > 0)``), or with at most one class;
    - with ``skeleton_method="skimage"`` only if the case needed no fallback
      (``fallback_components == 0``): then the stored skeleton is plain
      scikit-image's.
    """
    attrs = _current_attrs(store, case_id, gt_path)
    if attrs is None or tuple(attrs.get("shape", ())) != gt.shape:
        return GroundTruthSkeletons()
    params = attrs.get("params") or {}
    if params.get("slice_axis") is not None or params.get("ignore_label") is not None:
        return GroundTruthSkeletons()
    if skeleton_method == "skimage" and attrs.get("fallback_components") != 0:
        return GroundTruthSkeletons()
    one_class = np.count_nonzero(np.unique(gt)) <= 1
    per_class_mode = params.get("mode") == "per-class"
    use_classes, use_binary = per_class_mode or one_class, not per_class_mode or one_class
    thin = store[case_id].thin[...]
    return GroundTruthSkeletons(thin if use_classes else None, thin > 0 if use_binary else None)


def store_thin(store: Any, case_id: str, gt_path: Path, gt: np.ndarray) -> np.ndarray | None:
    """The stored labelled thin skeleton of a ground truth if valid per class, else None (see :func:`stored_skeletons`)."""
    return stored_skeletons(store, case_id, gt_path, gt).per_class


def _is_nifti(path: Path) -> bool:
    return split_suffix(path.name, MASK_SUFFIXES)[1].lower() in (".nii", ".nii.gz")


def read_label_map(path: Path, keep_singleton_axes: bool = False) -> np.ndarray:
    """A label map as :func:`skelprep.io.read_mask` reads it; with ``keep_singleton_axes`` a one-slice NIfTI stays 3D."""
    array = read_mask(path).array
    if not keep_singleton_axes or array.ndim != 2 or not _is_nifti(path):
        return array
    import nibabel as nib

    try:
        stored = tuple(int(n) for n in nib.load(path).header.get_data_shape())
    except Exception as exc:  # read_mask has just read it; a failure here is the file changing
        raise InputError(path, f"cannot read NIfTI header ({type(exc).__name__})") from exc
    # Metrics are 2D or 3D: of (X, Y, 1, 1, ...) only the third axis comes back.
    return array.reshape(array.shape + (1,)) if len(stored) >= 3 and stored[2] == 1 else array


@dataclass(frozen=True)
class CaseEvaluation:
    """The scores of one case and where its ground-truth skeletons came from."""

    case_id: str
    scores: CaseScores
    gt_skeleton: str  # "store", "computed", "store (classes)" or "store (merged binary)"
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {**self.scores, "gt_skeleton": self.gt_skeleton, "shape": list(self.shape)}


@dataclass
class EvaluationReport:
    """Outcome of :func:`evaluate_folders`; :meth:`as_dict` is the ``--json`` form.

    Means: ``mean`` averages each case's class mean over the scored cases,
    ``binary_mean`` their merged binary values, ``class_mean[c]`` class ``c``
    over the cases that score it (``class_cases[c]`` of them). Blank cases and
    empty classes are in every mean that covers them (see
    :data:`skelprep.metrics.EMPTY_CONVENTION`) and counted here.
    """

    pred_dir: str
    gt_dir: str
    store: str | None
    skeleton_method: str = "skelprep"
    keep_singleton_axes: bool = False
    classes: tuple[int, ...] | None = None
    cases: list[CaseEvaluation] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unmatched_predictions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def mean(self) -> dict[str, float]:
        return mean_metrics(c.scores["mean"] for c in self.cases)

    @property
    def binary_mean(self) -> dict[str, float]:
        return mean_metrics(c.scores["binary"] for c in self.cases)

    def _by_class(self) -> dict[int, list[dict[str, float]]]:
        by_class: dict[int, list[dict[str, float]]] = {}
        for case in self.cases:
            for c, values in case.scores["classes"].items():
                by_class.setdefault(c, []).append(values)
        return dict(sorted(by_class.items()))

    @property
    def class_mean(self) -> dict[int, dict[str, float]]:
        return {c: mean_metrics(v) for c, v in self._by_class().items()}

    @property
    def class_cases(self) -> dict[int, int]:
        return {c: len(v) for c, v in self._by_class().items()}

    @property
    def blank_cases(self) -> list[str]:
        return [c.case_id for c in self.cases if c.scores["blank"]]

    @property
    def empty_class_scores(self) -> int:
        """Class scores of a class absent from both masks of its case (scored as perfect)."""
        return sum(len(c.scores["empty_classes"]) for c in self.cases)

    def conventions(self) -> dict[str, str]:
        classes = (
            "the classes present in its ground truth or prediction"
            if self.classes is None
            else f"classes {', '.join(map(str, self.classes))}"
        )
        return {
            "empty": EMPTY_CONVENTION,
            "classes": f"each case scores {classes}; 'mean' is over its scored classes",
            "binary": "merged binary: all labels >= 1 as one foreground",
            "skeleton": f"{self.skeleton_method}: {SKELETON_NOTES[self.skeleton_method]}",
            "singleton_axes": SINGLETON_NOTES[self.keep_singleton_axes],
        }

    def counts(self) -> dict[str, int]:
        return {
            "cases": len(self.cases) + len(self.failed),
            "scored": len(self.cases),
            "failed": len(self.failed),
            "blank_cases": len(self.blank_cases),
            "empty_class_scores": self.empty_class_scores,
            "unmatched_predictions": len(self.unmatched_predictions),
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready report (NaN, a mean over nothing, becomes null)."""
        return _json_ready(
            {
                "pred_dir": self.pred_dir,
                "gt_dir": self.gt_dir,
                "store": self.store,
                "skeleton": self.skeleton_method,
                "keep_singleton_axes": self.keep_singleton_axes,
                "classes": None if self.classes is None else list(self.classes),
                "conventions": self.conventions(),
                "counts": self.counts(),
                "cases": {c.case_id: c.as_dict() for c in self.cases},
                "failed": dict(self.failed),
                "blank_cases": self.blank_cases,
                "unmatched_predictions": list(self.unmatched_predictions),
                "mean": self.mean,
                "binary_mean": self.binary_mean,
                "class_mean": {str(c): v for c, v in self.class_mean.items()},
                "class_cases": {str(c): n for c, n in self.class_cases.items()},
            }
        )


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    store: str | os.PathLike | None = None,
    classes: Iterable[int] | None = None,
    skeleton_method: str = "skelprep",
    keep_singleton_axes: bool = False,
) -> EvaluationReport:
    """Score every ground-truth case of ``gt_dir`` against its prediction in ``pred_dir``.

    Parameters
    ----------
    pred_dir, gt_dir : path
        Folders of label maps (PNG, NIfTI, TIFF), paired by case id. ``gt_dir``
        may also be a dataset folder as ``skelprep build`` takes it (see
        :func:`ground_truth_folder`): its label folder is the ground truth.
    store : path, optional
        skelprep store of the ground truth; default ``gt_dir/../skeletons.zarr``
        if it exists. Its thin skeletons are reused where valid (see
        :func:`stored_skeletons`), else the ground truth is skeletonized.
    classes : iterable of int, optional
        Classes to score in every case (default: those present in each case).
    skeleton_method : {"skelprep", "skimage"}
        See :func:`skelprep.metrics.skeleton`.
    keep_singleton_axes : bool
        Score one-slice NIfTI masks as 3D (Lee thinning) instead of 2D (Zhang).

    Returns
    -------
    EvaluationReport
        A case that cannot be scored (no prediction, unreadable file, shape
        mismatch, a duplicate case id) is in ``failed`` with its reason.

    Examples
    --------
    The ground truth scored against itself (a prediction folder goes first):

    >>> report = evaluate_folders("examples/road_cracks/labelsTr", "examples/road_cracks/labelsTr")
    >>> report.mean["cldice"], report.binary_mean["betti0_error"], report.counts()["blank_cases"]
    (1.0, 0.0, 0)
    """
    if skeleton_method not in SKELETON_METHODS:
        raise ValueError(f"skeleton method must be one of {SKELETON_METHODS}, got {skeleton_method!r}")
    gt_dir, pred_dir = ground_truth_folder(gt_dir), Path(pred_dir)
    gts, gt_problems = find_masks(gt_dir)
    if not gts and not gt_problems:
        raise InputError(
            gt_dir,
            "no ground-truth masks found (expected label maps, or a dataset folder: dataset.json with "
            "labelsTr/, or labels/)",
        )
    preds, pred_problems = find_masks(pred_dir)
    opened = _open_store(store, gt_dir)
    report = EvaluationReport(
        os.fspath(pred_dir),
        os.fspath(gt_dir),
        None if opened is None else opened.path,
        skeleton_method,
        keep_singleton_axes,
        None if classes is None else tuple(int(c) for c in classes),
        failed=dict(gt_problems),
        unmatched_predictions=sorted(set(preds) - set(gts) - set(gt_problems)),
    )
    for case_id, gt_path in gts.items():
        pred_path = preds.get(case_id)
        if pred_path is None:
            report.failed[case_id] = pred_problems.get(
                case_id, f"{pred_dir / case_id}: no prediction for case '{case_id}'"
            )
            continue
        try:
            gt = read_label_map(gt_path, keep_singleton_axes)
            pred = read_label_map(pred_path, keep_singleton_axes)
            if pred.shape != gt.shape:
                raise InputError(pred_path, f"shape {pred.shape} differs from ground truth shape {gt.shape}")
            stored = stored_skeletons(opened, case_id, gt_path, gt, skeleton_method)
            scores = evaluate_case(
                pred,
                gt,
                classes=report.classes,
                gt_thin=stored.per_class,
                gt_binary_thin=stored.binary,
                skeleton_method=skeleton_method,
            )
        except InputError as exc:
            report.failed[case_id] = str(exc)
            continue
        report.cases.append(CaseEvaluation(case_id, scores, stored.source, gt.shape))
    report.failed = dict(sorted(report.failed.items()))
    return report
