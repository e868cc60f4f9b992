"""Segmentation metrics for thin structures: Dice, clDice, Betti number errors (2D and 3D, per class).

numpy, scipy and scikit-image only. Conventions:

- **clDice** (Shit et al., CVPR 2021) with hard skeletons from
  scikit-image's thinning (Zhang in 2D, Lee in 3D) through
  :func:`skelprep.skeletonize_mask`, which keeps every component: topology
  precision ``|skel(pred) ∩ gt| / |skel(pred)|``, topology sensitivity
  ``|skel(gt) ∩ pred| / |skel(gt)|``, clDice their harmonic mean.
- **Betti numbers**: 2D ``b0`` = 8-connected foreground components, ``b1`` =
  holes = 4-connected background components not touching the border. 3D ``b0``
  = 26-connected components, ``b2`` = 6-connected background cavities, ``b1 =
  b0 + b2 - chi`` with ``chi = skimage.measure.euler_number(mask,
  connectivity=3)``. Betti errors are ``|b_k(pred) - b_k(gt)|``.
- Empty cases: a ratio whose denominator is empty is 1 when the other mask is
  empty too (nothing to find, nothing found) and 0 otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import euler_number

from skelprep.skeleton import skeletonize_mask

__all__ = [
    "METRIC_NAMES",
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


def _binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} differs from ground truth shape {b.shape}")


def _ratio(num: int, den: int, other_empty: bool) -> float:
    if den == 0:
        return 1.0 if other_empty else 0.0
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
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def skeleton(mask: np.ndarray) -> np.ndarray:
    """Hard skeleton of a binary mask: scikit-image's (Zhang 2D, Lee 3D) via :func:`skelprep.skeletonize_mask`.

    Components that Lee thinning would delete whole keep a fallback skeleton, so a
    small vessel still counts in clDice, and the skeleton equals the ``thin``
    array of a store built in the same mode.

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
    """
    mask = _binary(mask)
    if not mask.any():
        return np.zeros(mask.shape, bool)
    return skeletonize_mask(mask)[0]


def cldice(
    pred: np.ndarray, gt: np.ndarray, gt_skeleton: np.ndarray | None = None
) -> tuple[float, float, float]:
    """clDice with its topology precision and sensitivity.

    Parameters
    ----------
    pred, gt : ndarray
        Binary masks of the same shape.
    gt_skeleton : ndarray, optional
        Precomputed skeleton of ``gt`` (e.g. a store's ``thin == c``).

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
    skel_gt = skeleton(gt) if gt_skeleton is None else _binary(gt_skeleton)
    _same_shape(skel_gt, gt)
    skel_pred = skeleton(pred)
    tprec = _ratio(int(np.logical_and(skel_pred, gt).sum()), int(skel_pred.sum()), not gt.any())
    tsens = _ratio(int(np.logical_and(skel_gt, pred).sum()), int(skel_gt.sum()), not pred.any())
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
    """Mean of each metric over a sequence of metric dicts (NaN-free; empty gives NaN).

    Examples
    --------
    >>> mean_metrics([{"dice": 1.0}, {"dice": 0.5}])
    {'dice': 0.75}
    """
    results = list(results)
    keys = [k for k in METRIC_NAMES if any(k in r for r in results)]
    return {k: float(np.mean([r[k] for r in results if k in r])) if results else math.nan for k in keys}


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    classes: Iterable[int] | None = None,
    gt_thin: np.ndarray | None = None,
) -> dict[str, Any]:
    """Dice, clDice (with topology precision/sensitivity) and Betti errors per class and class-averaged.

    Parameters
    ----------
    pred, gt : ndarray of int
        Label maps of the same shape (2D or 3D); 0 is background.
    classes : iterable of int, optional
        Classes to score; default every non-zero label found in ``gt`` or ``pred``.
    gt_thin : ndarray, optional
        Labelled thin skeleton of ``gt`` (e.g. a store's ``thin``); class ``c``
        uses ``gt_thin == c`` as its ground-truth skeleton instead of
        skeletonizing ``gt == c``. The two agree when the skeleton was made per
        class (or ``gt`` has one class); a joint skeleton restricted to ``c``
        differs where classes touch.

    Returns
    -------
    dict
        ``{"classes": {c: {metric: value}}, "mean": {metric: value}}`` with the
        metrics of :data:`METRIC_NAMES`; ``mean`` averages over the classes.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((10, 10), np.uint8); gt[2:8, 2:8] = 1; gt[4:6, 4:6] = 0   # a ring
    >>> res = evaluate_case(gt, gt)
    >>> res["mean"]["dice"], res["mean"]["cldice"], res["mean"]["betti1_error"]
    (1.0, 1.0, 0.0)
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _same_shape(pred, gt)
    if gt_thin is not None:
        _same_shape(np.asarray(gt_thin), gt)
    if classes is None:
        classes = sorted((set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())) - {0})
    per_class: dict[int, dict[str, float]] = {}
    for c in classes:
        p, g = pred == c, gt == c
        cl, tprec, tsens = cldice(p, g, None if gt_thin is None else np.asarray(gt_thin) == c)
        e0, e1 = betti_errors(p, g)
        per_class[int(c)] = {
            "dice": dice(p, g),
            "cldice": cl,
            "topology_precision": tprec,
            "topology_sensitivity": tsens,
            "betti0_error": float(e0),
            "betti1_error": float(e1),
        }
    return {"classes": per_class, "mean": mean_metrics(per_class.values())}
