"""Segmentation metrics for thin structures: Dice, clDice, Betti number errors (2D and 3D).

numpy, scipy and scikit-image only; pure functions on arrays, no I/O.
:func:`evaluate_case` scores each class, their mean, and the *merged binary*
mask (all labels >= 1 as one foreground), which is what challenge scorers such
as TopCoW report clDice and Betti errors on.

Conventions (the evaluation table of the user guide, docs/guide/evaluation.md, says the same):

- **clDice** (Shit et al., CVPR 2021) with hard skeletons: topology precision
  ``|skel(pred) ∩ gt| / |skel(pred)|``, topology sensitivity
  ``|skel(gt) ∩ pred| / |skel(gt)|``, clDice their harmonic mean (0 when both
  are 0).
- **Skeletons** (``skeleton_method``): ``"skelprep"`` (default) is
  :func:`skelprep.skeletonize_mask`, scikit-image's thinning (Zhang in 2D, Lee
  in 3D) where that keeps every component, with a fallback skeleton where Lee
  deletes one whole; it equals a store's ``thin``. ``"skimage"`` is plain
  ``skimage.morphology.skeletonize``, as challenge scorers use it: a component
  it deletes has no skeleton, so topology sensitivity ignores it (missing it
  costs nothing), and a mask made only of such components gets clDice 0 even
  when predicted perfectly.
- **Dimensionality** follows the array: a 2D array is thinned with Zhang, a 3D
  one with Lee, so a 2D mask stored as one slice ``(X, Y, 1)`` is thinned with
  Zhang once squeezed and with Lee if kept 3D (see :mod:`skelprep.evaluate`).
- **Betti numbers**: 2D ``b0`` = 8-connected foreground components, ``b1`` =
  holes = 4-connected background components not touching the border. 3D ``b0``
  = 26-connected components, ``b2`` = 6-connected background cavities, ``b1 =
  b0 + b2 - chi`` with ``chi = skimage.measure.euler_number(mask,
  connectivity=3)``. Betti errors are ``|b_k(pred) - b_k(gt)|``. A one-slice
  3D mask has the Betti numbers of its 2D slice (``b2 = 0``).
- **Empty masks** (:data:`EMPTY_CONVENTION`): nothing to find and nothing found
  is perfect. A ratio (Dice, topology precision or sensitivity) is 1 when both
  masks are empty and 0 when only its denominator is (e.g. an empty skeleton
  of a non-empty mask); a Betti error of two empty masks is 0. So a class
  absent from both masks scores Dice 1, clDice 1, Betti errors 0, and so does
  a blank case (no foreground in either): its merged binary values are those,
  and with no class to average its class mean is too. Such scores are counted
  (``empty_classes``, ``blank``), never dropped from a mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TypedDict

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import euler_number

from skelprep.skeleton import skeletonize_mask

__all__ = [
    "METRIC_NAMES",
    "SKELETON_METHODS",
    "EMPTY_CONVENTION",
    "CaseScores",
    "dice",
    "cldice",
    "betti_numbers",
    "betti_errors",
    "skeleton",
    "evaluate_case",
    "mean_metrics",
]

METRIC_NAMES: tuple[str, ...] = (
    "dice",
    "cldice",
    "topology_precision",
    "topology_sensitivity",
    "betti0_error",
    "betti1_error",
)
SKELETON_METHODS: tuple[str, ...] = ("skelprep", "skimage")
EMPTY_CONVENTION = (
    "nothing to find and nothing found is perfect: a ratio (Dice, topology precision/sensitivity) is 1 when "
    "both masks are empty and 0 when only its denominator is; Betti errors of two empty masks are 0. A class "
    "absent from both masks of a case scores so, and a blank case (no foreground in either) scores so in its "
    "class mean and merged binary values; both are counted in every mean, never dropped"
)


class CaseScores(TypedDict):
    """What :func:`evaluate_case` returns; each metrics dict holds the keys of :data:`METRIC_NAMES`."""

    classes: dict[int, dict[str, float]]  # per scored class
    mean: dict[str, float]  # mean over the scored classes
    binary: dict[str, float]  # merged binary mask: all labels >= 1 as one foreground
    empty_classes: list[int]  # scored classes absent from both masks (scored as perfect)
    blank: bool  # no foreground in either mask


def _binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} differs from ground truth shape {b.shape}")


def _ratio(num: int, den: int, both_empty: bool) -> float:
    """``num / den``; with ``den == 0``: 1 if both masks are empty, else 0 (see :data:`EMPTY_CONVENTION`)."""
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of two binary masks (1.0 when both are empty).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4), bool); b[1:3] = True
    >>> dice(a, b)
    0.5
    """
    pred, gt = _binary(pred), _binary(gt)
    _same_shape(pred, gt)
    total = int(pred.sum()) + int(gt.sum())
    return _ratio(2 * int(np.logical_and(pred, gt).sum()), total, total == 0)


def skeleton(mask: np.ndarray, method: str = "skelprep") -> np.ndarray:
    """Hard skeleton of a binary mask: Zhang thinning in 2D, Lee in 3D (scikit-image's).

    Parameters
    ----------
    mask : ndarray of bool
        2D or 3D binary mask.
    method : {"skelprep", "skimage"}
        ``"skelprep"``: :func:`skelprep.skeletonize_mask`, which gives a
        fallback skeleton to a component the thinning deletes whole (equal to
        the ``thin`` array of a store built in the same mode). ``"skimage"``:
        plain ``skimage.morphology.skeletonize``, which leaves such a component
        without skeleton, as scorers that call it do.

    Examples
    --------
    >>> import numpy as np
    >>> bar = np.zeros((5, 9), bool); bar[1:4, 1:8] = True
    >>> skeleton(bar).astype(int)
    array([[0, 0, 0, 0, 0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 1, 0, 0],
           [0, 1, 1, 1, 1, 1, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 0, 0, 0]])
    >>> rod = np.zeros((6, 6, 20), bool); rod[2:4, 2:4, 2:18] = True   # Lee deletes even widths whole
    >>> int(skeleton(rod, "skimage").sum()), bool(skeleton(rod).any())
    (0, True)
    """
    if method not in SKELETON_METHODS:
        raise ValueError(f"skeleton method must be one of {SKELETON_METHODS}, got {method!r}")
    mask = _binary(mask)
    if not mask.any():
        return np.zeros(mask.shape, bool)
    if method == "skimage":
        from skimage.morphology import skeletonize

        return np.asarray(skeletonize(mask), dtype=bool)
    return skeletonize_mask(mask)[0]


def cldice(
    pred: np.ndarray,
    gt: np.ndarray,
    gt_skeleton: np.ndarray | None = None,
    skeleton_method: str = "skelprep",
) -> tuple[float, float, float]:
    """clDice with its topology precision and sensitivity.

    Parameters
    ----------
    pred, gt : ndarray
        Binary masks of the same shape.
    gt_skeleton : ndarray, optional
        Precomputed skeleton of ``gt`` (e.g. a store's ``thin == c``).
    skeleton_method : {"skelprep", "skimage"}
        How skeletons are computed (see :func:`skeleton`).

    Returns
    -------
    cldice, topology_precision, topology_sensitivity : float

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((9, 20), bool); gt[4, 2:18] = True   # a one-pixel line is its own skeleton
    >>> pred = gt.copy(); pred[:, 10:] = False            # half of the line found
    >>> tuple(round(v, 3) for v in cldice(pred, gt))
    (0.667, 1.0, 0.5)
    """
    pred, gt = _binary(pred), _binary(gt)
    _same_shape(pred, gt)
    skel_gt = skeleton(gt, skeleton_method) if gt_skeleton is None else _binary(gt_skeleton)
    _same_shape(skel_gt, gt)
    skel_pred = skeleton(pred, skeleton_method)
    both_empty = not pred.any() and not gt.any()
    tprec = _ratio(int(np.logical_and(skel_pred, gt).sum()), int(skel_pred.sum()), both_empty)
    tsens = _ratio(int(np.logical_and(skel_gt, pred).sum()), int(skel_gt.sum()), both_empty)
    cl = 0.0 if tprec + tsens == 0 else 2.0 * tprec * tsens / (tprec + tsens)
    return cl, tprec, tsens


def _count_components(mask: np.ndarray, connectivity: int) -> int:
    if not mask.any():
        return 0
    return int(ndi.label(mask, structure=ndi.generate_binary_structure(mask.ndim, connectivity))[1])


def _enclosed_background(mask: np.ndarray) -> int:
    """Background components (face-connected) that do not touch the border: holes (2D) / cavities (3D)."""
    # One voxel of background around the array joins every border-touching
    # background component into the single outer component, which we discount.
    padded = np.pad(~mask, 1, constant_values=True)
    return _count_components(padded, 1) - 1


def betti_numbers(mask: np.ndarray) -> tuple[int, ...]:
    """Betti numbers of a binary mask: ``(b0, b1)`` in 2D, ``(b0, b1, b2)`` in 3D.

    Examples
    --------
    >>> import numpy as np
    >>> ring = np.zeros((7, 7), bool); ring[1:6, 1:6] = True; ring[3, 3] = False
    >>> betti_numbers(ring)
    (1, 1)
    >>> betti_numbers(ring[:, :, np.newaxis])   # the same ring as a one-slice volume
    (1, 1, 0)
    >>> shell = np.zeros((7, 7, 7), bool); shell[1:6, 1:6, 1:6] = True; shell[3, 3, 3] = False
    >>> betti_numbers(shell)
    (1, 0, 1)
    """
    mask = _binary(mask)
    if mask.ndim == 2:
        return _count_components(mask, 2), _enclosed_background(mask)
    b0 = _count_components(mask, 3)
    b2 = _enclosed_background(mask)
    chi = int(euler_number(mask, connectivity=3)) if mask.any() else 0
    return b0, b0 + b2 - chi, b2


def betti_errors(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """``(|b0(pred) - b0(gt)|, |b1(pred) - b1(gt)|)``.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((8, 8), bool); gt[1:7, 1:7] = True; gt[3:5, 3:5] = False   # a ring
    >>> pred = np.zeros((8, 8), bool); pred[1:3, 1:3] = pred[5:7, 5:7] = True    # two blobs
    >>> betti_errors(pred, gt)
    (1, 1)
    """
    pred, gt = _binary(pred), _binary(gt)
    _same_shape(pred, gt)
    bp, bg = betti_numbers(pred), betti_numbers(gt)
    return abs(bp[0] - bg[0]), abs(bp[1] - bg[1])


def mean_metrics(results: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric of :data:`METRIC_NAMES` over a sequence of metric dicts.

    A metric is averaged over the dicts that hold it; with no dicts at all,
    every metric is NaN (there is nothing to average, which is not a score).

    Examples
    --------
    >>> mean_metrics([{"dice": 1.0}, {"dice": 0.5}])
    {'dice': 0.75}
    >>> mean_metrics([])["cldice"]
    nan
    """
    results = list(results)
    if not results:
        return dict.fromkeys(METRIC_NAMES, math.nan)
    keys = [k for k in METRIC_NAMES if any(k in r for r in results)]
    return {k: float(np.mean([r[k] for r in results if k in r])) for k in keys}


def _scores(
    pred: np.ndarray, gt: np.ndarray, gt_skeleton: np.ndarray | None, skeleton_method: str
) -> dict[str, float]:
    """Every metric of :data:`METRIC_NAMES` for two binary masks."""
    cl, tprec, tsens = cldice(pred, gt, gt_skeleton, skeleton_method)
    e0, e1 = betti_errors(pred, gt)
    return {
        "dice": dice(pred, gt),
        "cldice": cl,
        "topology_precision": tprec,
        "topology_sensitivity": tsens,
        "betti0_error": float(e0),
        "betti1_error": float(e1),
    }


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    classes: Iterable[int] | None = None,
    gt_thin: np.ndarray | None = None,
    *,
    gt_binary_thin: np.ndarray | None = None,
    skeleton_method: str = "skelprep",
) -> CaseScores:
    """Dice, clDice (with topology precision/sensitivity) and Betti errors: per class, class mean, merged binary.

    Parameters
    ----------
    pred, gt : ndarray of int
        Label maps of the same shape (2D or 3D); 0 is background. A 3D array
        with a singleton axis is thinned as 3D (Lee), its 2D squeeze with Zhang.
    classes : iterable of int, optional
        Classes to score; default every non-zero label found in ``gt`` or
        ``pred``. A listed class absent from both is scored as perfect (see
        :data:`EMPTY_CONVENTION`) and listed in ``empty_classes``.
    gt_thin : ndarray, optional
        Labelled thin skeleton of ``gt`` (e.g. a store's ``thin``); class ``c``
        uses ``gt_thin == c`` as its ground-truth skeleton instead of
        skeletonizing ``gt == c``. The two agree when the skeleton was made per
        class (or ``gt`` has one class); a joint skeleton restricted to ``c``
        differs where classes touch.
    gt_binary_thin : ndarray, optional
        Skeleton of ``gt > 0`` for the merged binary scores (e.g. a joint-mode
        store's ``thin > 0``); default: skeletonize ``gt > 0``.
    skeleton_method : {"skelprep", "skimage"}
        How skeletons are computed where none is given (see :func:`skeleton`).

    Returns
    -------
    CaseScores
        ``classes`` (class -> metrics), ``mean`` (mean over the scored classes),
        ``binary`` (all labels >= 1 as one foreground), ``empty_classes`` and
        ``blank``. A blank case (no foreground in either map) scored by default
        has no class; its ``mean`` is then its ``binary`` values (perfect).

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((10, 10), np.uint8); gt[2:8, 2:8] = 1; gt[4:6, 4:6] = 0   # a ring
    >>> res = evaluate_case(gt, gt)
    >>> res["mean"]["dice"], res["mean"]["cldice"], res["mean"]["betti1_error"]
    (1.0, 1.0, 0.0)
    >>> blank = evaluate_case(np.zeros((4, 4), int), np.zeros((4, 4), int))
    >>> blank["blank"], blank["classes"], blank["mean"]["dice"], blank["binary"]["betti0_error"]
    (True, {}, 1.0, 0.0)
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _same_shape(pred, gt)
    for given in (gt_thin, gt_binary_thin):
        if given is not None:
            _same_shape(np.asarray(given), gt)
    present = (set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())) - {0}
    wanted = sorted(present) if classes is None else [int(c) for c in classes]
    per_class: dict[int, dict[str, float]] = {}
    for c in wanted:
        thin_c = None if gt_thin is None else np.asarray(gt_thin) == c
        per_class[c] = _scores(pred == c, gt == c, thin_c, skeleton_method)
    binary = _scores(pred > 0, gt > 0, gt_binary_thin, skeleton_method)
    blank = not present
    # A blank case has nothing to average: its class mean is the empty-mask score, which its merged
    # binary values are (both masks empty). Anything else with no class scored has no class mean.
    mean = mean_metrics(per_class.values()) if per_class or not blank else dict(binary)
    return {
        "classes": per_class,
        "mean": mean,
        "binary": binary,
        "empty_classes": [c for c in wanted if c not in present],
        "blank": blank,
    }
