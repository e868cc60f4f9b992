"""Tubed skeletons of label maps: the target of the Skeleton Recall loss.

Pure functions on numpy arrays (numpy, scipy and numba: the kernels of
:mod:`skelprep._thinning` and :mod:`skelprep._flood`, and the tube's scatter here;
no I/O). Internally a skeleton travels as the ascending flat indices of its voxels:
a vessel's skeleton is ~1-2 % of the array, so scattering the targets from its
indices costs a fraction of passes over whole arrays.

The default recipe reproduces the reference implementation of Kirchhoff et al.
(ECCV 2024) voxel for voxel:

1. ``fg = labels > 0``
2. ``thin = skimage.morphology.skeletonize(fg)`` (Zhang in 2D, Lee in 3D)
3. ``tube = dilate(thin, L1 ball of radius 2)`` (two connectivity-1 dilations)
4. ``tube_labels = tube * labels``

and adds what the reference lacks: an ignore label that is not skeletonized,
per-class skeletons, per-slice (2D) skeletons of volumes, and a guarantee that
no connected foreground component loses its skeleton entirely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numba import njit

from skelprep._flood import unreached
from skelprep._thinning import foreground_box, thin_2d, thin_3d_flagged, zhang_points

__all__ = [
    "SkeletonTargets",
    "skeleton_targets",
    "thin_skeleton",
    "tubed_skeleton",
    "tube_from_thin",
    "skeletonize_mask",
]

Mode = Literal["joint", "per-class"]
MODES: tuple[str, ...] = ("joint", "per-class")


@dataclass(frozen=True)
class SkeletonTargets:
    """Thin and tubed skeletons of one label map.

    Attributes
    ----------
    thin : ndarray
        Thin skeleton, each voxel carrying the label of the mask there.
    tube : ndarray
        The thin skeleton dilated by an L1 ball of ``radius``, multiplied by the labels.
    fallback_components : int
        Connected foreground components whose skeleton scikit-image returned
        empty and that were given one by :func:`skeletonize_mask`'s fallback.
    """

    thin: np.ndarray
    tube: np.ndarray
    fallback_components: int


def _ndi():
    """scipy.ndimage, imported on first use: an import that the numba paths never need."""
    from scipy import ndimage

    return ndimage


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer or boolean array, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError(f"labels must be non-negative, found {labels.min()}")
    return labels


def _skeletonize_raw(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """scikit-image's skeleton of a binary mask (Zhang 2D, Lee 3D), and whether a component may be deleted whole.

    The flag is False only where Lee thinning tells that none was (see
    :func:`skelprep._thinning.thin_3d_flagged`).
    """
    if mask.ndim == 3:
        return thin_3d_flagged(mask)
    return thin_2d(mask), True


def _fallback_skeleton(component: np.ndarray) -> np.ndarray:
    """Skeleton for a component that thinning deleted whole.

    Lee's (and Zhang's) thinning deletes some perfectly symmetric shapes entirely,
    e.g. straight bars of even width (scikit-image#3757): every voxel is a
    deletable border voxel and no ordering keeps one. We break the symmetry with an
    asymmetric one-voxel erosion (keep a voxel only if its successor along every
    axis is foreground too), which turns even widths odd, and thin again. If that
    still gives nothing, the component keeps its single deepest voxel (largest
    distance to the background), the one nearest the centroid.
    """
    current = component
    for _ in range(3):
        eroded = current.copy()
        for axis in range(current.ndim):
            successor = np.zeros_like(current)
            src = [slice(None)] * current.ndim
            dst = [slice(None)] * current.ndim
            src[axis], dst[axis] = slice(1, None), slice(None, -1)
            successor[tuple(dst)] = current[tuple(src)]
            eroded &= successor
        if not eroded.any():
            break
        thin = _skeletonize_raw(eroded)[0]
        if thin.any():
            return thin
        current = eroded
    depth = _ndi().distance_transform_edt(np.pad(component, 1))[(slice(1, -1),) * component.ndim]
    deepest = np.argwhere(depth == depth.max())
    centroid = np.argwhere(component).mean(axis=0)
    pick = deepest[np.argmin(((deepest - centroid) ** 2).sum(axis=1))]
    out = np.zeros_like(component)
    out[tuple(pick)] = True
    return out


def skeletonize_mask(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Skeleton of a binary mask in which every connected component keeps a skeleton.

    Equal to ``skimage.morphology.skeletonize(mask)`` (Zhang in 2D, Lee in 3D)
    wherever that keeps at least one voxel of every connected component
    (8-connected in 2D, 26-connected in 3D). A component it deletes entirely is
    given a fallback skeleton inside it (see Notes).

    Parameters
    ----------
    mask : ndarray of bool
        2D or 3D binary mask.

    Returns
    -------
    thin : ndarray of bool
        The skeleton.
    fallback_components : int
        How many components needed the fallback.

    Notes
    -----
    Fallback: an asymmetric one-voxel erosion (keep a voxel only if its successor
    along every axis is foreground), which makes even widths odd, then thinning
    again (up to three times); failing that, the component's deepest voxel
    nearest its centroid.

    Examples
    --------
    >>> import numpy as np
    >>> bar = np.zeros((8, 8, 36), bool)
    >>> bar[2:4, 2:4, 3:33] = True          # scikit-image's Lee deletes this bar whole
    >>> thin, n_fallback = skeletonize_mask(bar)
    >>> n_fallback, bool(thin.any()), bool((thin <= bar).all())
    (1, True, True)
    """
    mask = np.asarray(mask, dtype=bool)
    points, n_fallback = _skeleton_points(mask)
    return _points_mask(points, mask.shape), n_fallback


def _points_mask(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The boolean array of ``shape`` that is True at the flat (C-order) indices ``points``."""
    out = np.zeros(shape, dtype=bool)
    out.reshape(-1)[points] = True
    return out


def _skeleton_points(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`skeletonize_mask` as (ascending flat indices of the skeleton, fallback count)."""
    if mask.ndim == 2:
        # One kernel thins and floods from the skeleton: no numpy pass over the image between
        # the two, which as two passes cost nearly twice as much.
        skeleton, orphans = zhang_points(mask)
        if orphans.size == 0:
            return skeleton, 0
        thin = _points_mask(skeleton, mask.shape)
        n_fallback = _add_fallbacks(thin, _points_mask(orphans, mask.shape))
        return np.flatnonzero(thin), n_fallback
    thin, n_fallback = _skeletonize_checked(mask)
    return np.flatnonzero(thin), n_fallback


def _skeletonize_checked(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`skeletonize_mask` of a 3D mask: thinning to an array, then the components it deleted whole."""
    thin, maybe_deleted = _skeletonize_raw(mask)
    box = foreground_box(mask, margin=0)
    if box is None or not maybe_deleted:  # no component was deleted whole: nothing to check
        return thin, 0
    thin_box = thin[box]  # a view: writes land in ``thin``
    orphans = unreached(mask[box], thin_box)  # flood fill from the skeleton, O(foreground)
    if orphans[0].size == 0:  # the usual case: every voxel is reached from the skeleton
        return thin, 0
    candidates = np.zeros(thin_box.shape, dtype=bool)  # exactly the components without a skeleton
    candidates[orphans] = True
    return thin, _add_fallbacks(thin_box, candidates)


def _add_fallbacks(thin: np.ndarray, candidates: np.ndarray) -> int:
    """Give each component of ``candidates`` without a ``thin`` voxel a fallback skeleton, in place.

    ``candidates``: the foreground voxels no skeleton voxel reaches.
    Returns how many components needed it.
    """
    missing = _components_without(candidates, thin)
    for component_box, component in missing:
        thin[component_box] |= _fallback_skeleton(component)
    return len(missing)


def _components_without(mask: np.ndarray, thin: np.ndarray) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """(box, component mask) of every connected component of ``mask`` without a ``thin`` voxel."""
    box = foreground_box(mask, margin=0)
    if box is None:
        return []
    components, n = _ndi().label(mask[box], structure=np.ones((3,) * mask.ndim, bool))
    kept = np.zeros(n + 1, dtype=bool)
    kept[components[thin[box]]] = True
    slices = _ndi().find_objects(components)
    out = []
    for index in np.flatnonzero(~kept[1:]) + 1:
        sl = slices[index - 1]
        global_sl = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, sl, strict=True))
        out.append((global_sl, components[sl] == index))
    return out


def _cross(ndim: int, slice_axis: int | None) -> np.ndarray:
    """Connectivity-1 cross; flat (no neighbours along ``slice_axis``) for per-slice work."""
    cross = _ndi().generate_binary_structure(ndim, 1)
    if slice_axis is not None:
        keep = [slice(None)] * ndim
        keep[slice_axis] = 1
        flat = np.zeros_like(cross)
        flat[tuple(keep)] = cross[tuple(keep)]
        cross = flat
    return cross


def _l1_offsets(ndim: int, radius: int, slice_axis: int | None) -> np.ndarray:
    """Integer offsets ``(k, ndim)`` of the L1 ball of ``radius`` (flat along ``slice_axis``)."""
    grid = np.indices((2 * radius + 1,) * ndim).reshape(ndim, -1).T - radius
    keep = np.abs(grid).sum(axis=1) <= radius
    if slice_axis is not None:
        keep &= grid[:, slice_axis] == 0
    return grid[keep]


def _dilated_coords(
    coords: tuple[np.ndarray, ...], shape: tuple[int, ...], radius: int, slice_axis: int | None
) -> tuple[np.ndarray, ...]:
    """Coordinates (with repeats) of the L1-ball dilation of the voxels ``coords``, clipped to ``shape``.

    Equal to ``radius`` binary dilations with the connectivity-1 cross and a
    background border: a voxel within L1 distance ``radius`` of a seed is reached
    by an axis-aligned path inside the bounding box of the two, hence inside the array.
    """
    offsets = _l1_offsets(len(shape), radius, slice_axis)
    out = []
    inside = np.ones((coords[0].size, len(offsets)), dtype=bool)
    for axis, c in enumerate(coords):
        moved = c.astype(np.intp)[:, None] + offsets[:, axis]
        inside &= (moved >= 0) & (moved < shape[axis])
        out.append(moved)
    return tuple(m[inside] for m in out)


# Dilate by scattering ball offsets around the skeleton voxels when that touches
# fewer voxels than the dense dilation of their box: a skeleton is ~1 % of a
# vessel mask, and the L1 ball of radius 2 has 25 voxels (3D), so the scatter
# costs a small fraction of scipy's two passes over the box.
_SPARSE_DILATE_FACTOR = 4


def _sparse_enough(n_seeds: int, radius: int, ndim: int, slice_axis: int | None, box_size: int) -> bool:
    """Whether scattering ball offsets around ``n_seeds`` voxels beats dilating a box of ``box_size``."""
    n_offsets = len(_l1_offsets(ndim, radius, slice_axis))
    return n_seeds * n_offsets * _SPARSE_DILATE_FACTOR < box_size


def _dilate_l1(mask: np.ndarray, radius: int, slice_axis: int | None) -> np.ndarray:
    """Binary dilation by the L1 ball of ``radius`` (``radius`` connectivity-1 dilations)."""
    if radius == 0:
        return mask.copy()
    out = np.zeros_like(mask)
    seeds = np.flatnonzero(mask)  # flatnonzero: far cheaper than np.nonzero on a large volume
    if seeds.size == 0:
        return out
    if _sparse_enough(seeds.size, radius, mask.ndim, slice_axis, mask.size):
        out[_dilated_coords(np.unravel_index(seeds, mask.shape), mask.shape, radius, slice_axis)] = True
        return out
    box = foreground_box(mask, margin=radius)  # dilate only around the skeleton
    out[box] = _ndi().binary_dilation(mask[box], structure=_cross(mask.ndim, slice_axis), iterations=radius)
    return out


def _labelled_flat(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``mask * labels`` for the mask with flat (C-order) indices ``points``, touching only those voxels."""
    out = np.zeros(labels.shape, dtype=labels.dtype)
    out.reshape(-1)[points] = labels.take(points)  # take: flat C-order indices, any memory layout
    return out


@njit(cache=True, nogil=True)
def _ball_points(points: np.ndarray, shape: np.ndarray, offsets: np.ndarray, mark: np.ndarray) -> np.ndarray:
    """Flat indices, each once, of the voxels at ``offsets`` from ``points``, clipped to ``shape``.

    ``mark``: zeros, one byte per voxel (work space, left marked).
    """
    ndim = shape.shape[0]
    out = np.empty(min(points.shape[0] * offsets.shape[0], mark.shape[0]), dtype=np.int64)
    coord = np.empty(ndim, dtype=np.int64)
    n = 0
    for p in points:
        rest = p
        for a in range(ndim - 1, -1, -1):
            coord[a] = rest % shape[a]
            rest //= shape[a]
        for o in range(offsets.shape[0]):
            q = 0
            for a in range(ndim):
                x = coord[a] + offsets[o, a]
                if x < 0 or x >= shape[a]:
                    q = -1
                    break
                q = q * shape[a] + x
            if q >= 0 and mark[q] == 0:
                mark[q] = 1
                out[n] = q
                n += 1
    return out[:n]


def _targets_from_points(
    points: np.ndarray, labels: np.ndarray, radius: int, slice_axis: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(thin, tube) label maps: ``thin_mask * labels`` and ``dilate(thin_mask) * labels``.

    ``points``: flat indices of the voxels of ``thin_mask``. A skeleton is sparse,
    so both are scattered from its voxels rather than computed as products of
    whole volumes (same values and dtype).
    """
    thin = _labelled_flat(points, labels)
    if radius == 0:
        return thin, thin.copy()
    # The L1 ball around every skeleton voxel, clipped, each voxel once: the work grows with
    # the skeleton, not the image, as it would with scipy's dense dilation, and needs none of
    # the index arrays a numpy version would build.
    offsets = _l1_offsets(labels.ndim, radius, slice_axis).astype(np.int64)
    mark = np.zeros(labels.size, dtype=np.uint8)
    tube_points = _ball_points(points, np.array(labels.shape, dtype=np.int64), offsets, mark)
    return thin, _labelled_flat(tube_points, labels)


def tube_from_thin(
    thin: np.ndarray,
    radius: int = 2,
    labels: np.ndarray | None = None,
    *,
    slice_axis: int | None = None,
) -> np.ndarray:
    """Dilate a (labelled) thin skeleton into a tube.

    Parameters
    ----------
    thin : ndarray
        Thin skeleton, boolean or labelled (e.g. the ``thin`` array of a store).
    radius : int
        Radius of the L1 ball; ``radius`` dilations with the connectivity-1 cross.
    labels : ndarray, optional
        Label map to multiply the tube by (the recipe). Without it, each tube voxel
        takes the largest skeleton label within ``radius``.
    slice_axis : int, optional
        Dilate within the slices normal to this axis only.

    Returns
    -------
    ndarray
        The tube, with the dtype of ``labels`` (or of ``thin``).

    Examples
    --------
    >>> import numpy as np
    >>> thin = np.zeros((5, 5), np.uint8)
    >>> thin[2, 2] = 3
    >>> tube_from_thin(thin, radius=1)
    array([[0, 0, 0, 0, 0],
           [0, 0, 3, 0, 0],
           [0, 3, 3, 3, 0],
           [0, 0, 3, 0, 0],
           [0, 0, 0, 0, 0]], dtype=uint8)
    """
    thin = np.asarray(thin)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != thin.shape:
            raise ValueError(f"labels shape {labels.shape} differs from thin shape {thin.shape}")
        return _dilate_l1(thin > 0, radius, slice_axis) * labels
    if thin.dtype == bool:
        return _dilate_l1(thin, radius, slice_axis)
    out = thin.copy()
    cross = _cross(thin.ndim, slice_axis)
    for _ in range(radius):
        out = _ndi().grey_dilation(out, footprint=cross, mode="constant", cval=0)
    return out


def _thin_mask(labels: np.ndarray, mode: str, slice_axis: int | None) -> tuple[np.ndarray, int]:
    """Binary thin skeleton of the foreground of ``labels`` (ignore label already removed)."""
    if slice_axis is not None:
        if labels.ndim != 3:
            raise ValueError(f"slice_axis needs a 3D label map, got {labels.ndim}D")
        if not -3 <= slice_axis < 3:
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
        thin = np.zeros(labels.shape, dtype=bool)
        total = 0
        for k in range(labels.shape[slice_axis]):
            index = [slice(None)] * 3
            index[slice_axis] = k
            thin[tuple(index)], n = _thin_mask(labels[tuple(index)], mode, None)
            total += n
        return thin, total
    if mode == "joint":
        return skeletonize_mask(labels > 0)
    thin = np.zeros(labels.shape, dtype=bool)
    total = 0
    for value in np.unique(labels):
        if value == 0:
            continue
        class_mask = labels == value
        box = foreground_box(class_mask, margin=1)
        class_thin, n = skeletonize_mask(class_mask[box])
        thin[box] |= class_thin
        total += n
    return thin, total


def skeleton_targets(
    labels: np.ndarray,
    *,
    radius: int = 2,
    mode: Mode = "joint",
    ignore_label: int | None = None,
    slice_axis: int | None = None,
) -> SkeletonTargets:
    """Thin and tubed skeletons of a 2D or 3D label map.

    Parameters
    ----------
    labels : ndarray of int or bool
        Label map; 0 is background, every other value a class.
    radius : int
        Radius of the L1 ball that dilates the thin skeleton into the tube
        (2 in the reference: two dilations with the connectivity-1 cross).
    mode : {"joint", "per-class"}
        ``"joint"`` skeletonizes the union of all classes (the reference);
        ``"per-class"`` skeletonizes each class on its own, so touching classes
        keep their own centrelines.
    ignore_label : int, optional
        Voxels with this value are neither skeletonized nor part of the outputs
        (the reference wrongly treats them as foreground).
    slice_axis : int, optional
        For 3D maps: apply the 2D recipe (Zhang thinning, in-plane dilation) to
        each slice normal to this axis, as a 2D network sees the data.

    Returns
    -------
    SkeletonTargets
        ``thin`` and ``tube`` label maps with the shape and dtype of ``labels``,
        and the number of components that needed the empty-skeleton fallback.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((9, 9), np.uint8)
    >>> labels[3:6, 1:8] = 2
    >>> t = skeleton_targets(labels, radius=1)
    >>> t.thin[4]
    array([0, 2, 2, 2, 2, 2, 0, 0, 0], dtype=uint8)
    >>> int(t.tube.sum() // 2), t.fallback_components
    (18, 0)
    """
    labels = _check_labels(labels)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if ignore_label is not None:
        if ignore_label == 0:
            raise ValueError("ignore_label must not be 0 (the background)")
        labels = np.where(labels == ignore_label, 0, labels).astype(labels.dtype, copy=False)
    if mode == "joint" and slice_axis is None:
        points, n_fallback = _skeleton_points(labels > 0)
    else:
        thin_mask, n_fallback = _thin_mask(labels, mode, slice_axis)
        points = np.flatnonzero(thin_mask)
    thin, tube = _targets_from_points(points, labels, radius, slice_axis)
    return SkeletonTargets(thin=thin, tube=tube, fallback_components=n_fallback)


def thin_skeleton(
    labels: np.ndarray,
    *,
    mode: Mode = "joint",
    ignore_label: int | None = None,
    slice_axis: int | None = None,
) -> np.ndarray:
    """Labelled thin skeleton of a label map (``skeleton_targets(...).thin``).

    See :func:`skeleton_targets` for the parameters.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((7, 7), np.uint8)
    >>> labels[2:5, 1:6] = 1
    >>> thin_skeleton(labels)[3]
    array([0, 1, 1, 1, 0, 0, 0], dtype=uint8)
    """
    return skeleton_targets(
        labels, radius=0, mode=mode, ignore_label=ignore_label, slice_axis=slice_axis
    ).thin


def tubed_skeleton(
    labels: np.ndarray,
    *,
    radius: int = 2,
    mode: Mode = "joint",
    ignore_label: int | None = None,
    slice_axis: int | None = None,
) -> np.ndarray:
    """Labelled tubed skeleton of a label map: the Skeleton Recall target.

    See :func:`skeleton_targets` for the parameters. With the defaults this equals
    the reference recipe ``dilation(dilation(skeletonize(labels > 0))) * labels``
    voxel for voxel (where every component keeps a skeleton).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((7, 9), np.uint8)
    >>> labels[3, 1:8] = 1
    >>> tubed_skeleton(labels, radius=1).sum()  # tube * labels keeps only the line itself
    np.uint64(7)
    """
    return skeleton_targets(
        labels, radius=radius, mode=mode, ignore_label=ignore_label, slice_axis=slice_axis
    ).tube
