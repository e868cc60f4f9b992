"""Topology targets beside the tube: signed distance maps, the skeleton's radius, connected components.

Pure functions on numpy arrays (no I/O), in the core beside :mod:`skelprep.skeleton`.
They are the ground-truth halves of the topology-aware losses of
:mod:`skelprep.torch.topology`, computed once per case rather than every training step:

- :func:`signed_distance`: per class, the signed Euclidean distance to the class, in
  physical units, negative inside (the boundary loss; cbDice's distance map);
- :func:`skeleton_radius`: along a thin skeleton, the distance to the background
  (cbDice's radius weights);
- :func:`components`: connected-component labels of the foreground (blob and
  Betti-0 losses), with the connectivity used.

Distances come from the ``edt`` package (exact Euclidean distance transform,
anisotropic, multi-label) and components from ``connected-components-3d``
(``cc3d``); both are exact, so they equal ``scipy.ndimage.distance_transform_edt``
with ``sampling`` and ``scipy.ndimage.label`` (float32 rounding aside). Both are
imported on first use: importing this module costs numpy only.

Distances are between voxel centres: a voxel outside the class is at the
distance to the nearest voxel of the class, a voxel inside at minus the distance
to the nearest voxel outside it. The border of the array is not a boundary (what
lies beyond it is unknown). Bad input raises :class:`TargetError` with one line
that says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BUILD_TARGETS",
    "Components",
    "TargetError",
    "build_targets",
    "target_params",
    "components",
    "distance_inside",
    "signed_distance",
    "skeleton_radius",
]

# The targets a build computes beside the tube and the thin skeleton, on request (``--targets``).
BUILD_TARGETS: tuple[str, ...] = ("sdf", "radius", "components")

# Distances are float32: float16 has an 11-bit significand, so above 2048 (voxels or
# physical units) its steps exceed 1 and at 512 they are 0.25 -- a quarter voxel on a
# large volume's distance map -- and it overflows at 65504 (a diagonal in micrometres).
# float32 holds every distance of an image below 2**24 voxels a side to ~1e-7 relative.
DISTANCE_DTYPE = np.dtype(np.float32)

# Connectivities by dimension: voxels that share a face, also an edge, also a corner.
CONNECTIVITIES = {2: (4, 8), 3: (6, 18, 26)}


class TargetError(ValueError):
    """Input a topology target cannot be computed from; the message is one line saying why."""


@dataclass(frozen=True)
class Components:
    """Connected-component labels of one label map.

    Attributes
    ----------
    labels : ndarray
        0 on the background, ``1..count`` on the components (in ``cc3d``'s order:
        deterministic, not always the raster order of their first voxels); unsigned,
        the dtype asked for.
    count : int
        Number of components.
    connectivity : int
        Neighbourhood used: 4 or 8 in 2D, 6, 18 or 26 in 3D.
    per_class : bool
        Whether touching voxels of different classes belong to different components.
    """

    labels: np.ndarray
    count: int
    connectivity: int
    per_class: bool


def _checked_labels(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.dtype == bool:
        return label.view(np.uint8)
    if not np.issubdtype(label.dtype, np.integer):
        raise TargetError(f"labels must be an integer or boolean array, got dtype {label.dtype}")
    if label.ndim not in (2, 3):
        raise TargetError(f"labels must be 2D or 3D, got shape {label.shape}")
    if np.issubdtype(label.dtype, np.signedinteger) and label.size and label.min() < 0:
        raise TargetError(f"labels must be non-negative, found {label.min()}")
    return label


def _checked_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Spacing as floats, one per axis; ``None`` is unit spacing (files without geometry, e.g. PNG)."""
    if spacing is None:
        return (1.0,) * ndim
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise TargetError(f"spacing must be {ndim} numbers, got {spacing!r}") from None
    if len(values) != ndim:
        raise TargetError(f"spacing {list(values)} has {len(values)} values for a {ndim}D label map")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise TargetError(f"spacing must be positive and finite, got {list(values)}")
    return values


def _class_ids(entry: int | Sequence[int], dtype: np.dtype) -> tuple[int, ...]:
    """The label values of one ``classes`` entry, each one that ``dtype`` labels can hold."""
    ids = (entry,) if np.ndim(entry) == 0 else tuple(entry)
    if not ids:
        raise TargetError("a class given as a union of labels must name at least one label")
    top = np.iinfo(dtype).max
    out = []
    for value in ids:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TargetError(f"class ids must be integers, got {value!r}")
        if not 0 <= int(value) <= top:
            raise TargetError(f"class {int(value)} cannot occur in {dtype} labels (0..{top})")
        out.append(int(value))
    return tuple(out)


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the image's diagonal in physical units: more than any distance between two of its voxels.

    The stand-in distance of :func:`signed_distance` (and :func:`skeleton_radius`) where
    there is nothing to measure to.

    Examples
    --------
    >>> image_diagonal((3, 4), (1.0, 1.0))
    5.0
    """
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def _unsigned_distance(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """At every voxel, the distance to the nearest voxel on the other side of ``mask`` (both sides, one pass).

    ``mask`` must hold both values. ``edt``'s multi-label mode measures each voxel to the
    nearest voxel of a different label, so labelling the two sides 1 and 2 (no 0, no
    background) gives the outside's distance to the mask and the inside's to the outside.
    """
    import edt

    sides = np.ascontiguousarray(mask, dtype=np.uint8) + np.uint8(1)
    return edt.edt(sides, anisotropy=spacing, black_border=False, parallel=1).astype(
        DISTANCE_DTYPE, copy=False
    )


def distance_inside(mask: np.ndarray, *, spacing: Sequence[float] | None) -> np.ndarray:
    """Inside a binary mask, the distance to the nearest voxel outside it in physical units; 0 outside.

    ``distance_transform_edt(mask, sampling)`` (float32 rounding aside): the unsigned
    inside half of :func:`signed_distance`, at the cost of the mask's voxels only (``edt``
    skips the outside), e.g. the distance map of a thresholded prediction. A mask without
    outside voxels is the image diagonal everywhere (:func:`image_diagonal`).

    Examples
    --------
    >>> import numpy as np
    >>> distance_inside(np.array([[0, 1, 1, 1, 0]], bool), spacing=(1.0, 2.0))
    array([[0., 2., 4., 2., 0.]], dtype=float32)
    """
    import edt

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim not in (2, 3):
        raise TargetError(f"mask must be 2D or 3D, got shape {mask.shape}")
    sampling = _checked_spacing(spacing, mask.ndim)
    if mask.all():
        return np.full(mask.shape, image_diagonal(mask.shape, sampling), dtype=DISTANCE_DTYPE)
    # As uint8, not bool: edt's bool path takes over twice as long on a 160x320x320 mask.
    labels = np.ascontiguousarray(mask).view(np.uint8)
    distance = edt.edt(labels, anisotropy=sampling, black_border=False, parallel=1)
    return distance.astype(DISTANCE_DTYPE, copy=False)


def signed_distance(
    label: np.ndarray, classes: Sequence[int | Sequence[int]], *, spacing: Sequence[float] | None
) -> np.ndarray:
    """Per class, the signed distance to the class in physical units, negative inside.

    For a class ``C`` (the voxels whose label is the class id, or any of the ids of
    a union) and a voxel ``v`` at position ``x_v`` (index times spacing)::

        sdf_C(v) =  min_{u in C}     |x_v - x_u|    if v is outside C
        sdf_C(v) = -min_{u not in C} |x_v - x_u|    if v is inside C

    so it is never 0 and ``sdf < 0`` is exactly the class. Equal to
    ``distance_transform_edt(~m, sampling) - distance_transform_edt(m, sampling)``
    with ``m`` the class mask (float32 rounding aside).

    Parameters
    ----------
    label : ndarray of int or bool
        2D or 3D label map.
    classes : sequence
        One entry per output channel: a class id, or a sequence of ids whose union
        is measured (``[(1, 2)]``: the foreground of a two-class map, what cbDice
        weighs by; ``[0, 1, 2]``: every class of a one-hot, the boundary loss's).
    spacing : sequence of float or None
        Voxel size along each axis of ``label``; ``None`` is unit spacing, the
        convention for files without geometry (PNG): distances are then in voxels.
        Required, so that a forgotten spacing is never silently unit.

    Returns
    -------
    ndarray of float32
        ``(len(classes), *label.shape)``. float32, not float16: float16's 11-bit
        significand steps by 2 above 2048 and by 0.25 at 512, and it overflows at 65504.

    Notes
    -----
    A class with no voxel in ``label`` has nothing to measure to: its map is
    ``+D`` everywhere, ``D`` the image diagonal in physical units
    (:func:`image_diagonal`), farther than any voxel of the image could be, finite.
    A class covering the whole image is ``-D`` everywhere. No NaN or inf is returned.

    Examples
    --------
    >>> import numpy as np
    >>> label = np.zeros((1, 6), np.uint8)
    >>> label[0, 2:4] = 1
    >>> signed_distance(label, [1], spacing=(1.0, 0.5))[0, 0]
    array([ 1. ,  0.5, -0.5, -0.5,  0.5,  1. ], dtype=float32)
    >>> signed_distance(label, [2], spacing=None)[0, 0, :2]   # no voxel of class 2: +diagonal
    array([6.0827627, 6.0827627], dtype=float32)
    """
    label = _checked_labels(label)
    sampling = _checked_spacing(spacing, label.ndim)
    entries = [_class_ids(entry, label.dtype) for entry in classes]
    if not entries:
        raise TargetError("classes is empty: name at least one class to measure")
    diagonal = image_diagonal(label.shape, sampling)
    out = np.empty((len(entries), *label.shape), dtype=DISTANCE_DTYPE)
    for k, ids in enumerate(entries):
        mask = label == ids[0] if len(ids) == 1 else np.isin(label, ids)
        if not mask.any():
            out[k] = diagonal
        elif mask.all():
            out[k] = -diagonal
        else:
            distance = _unsigned_distance(mask, sampling)
            np.negative(distance, out=distance, where=mask)
            out[k] = distance
    return out


def skeleton_radius(label: np.ndarray, thin: np.ndarray, *, spacing: Sequence[float] | None) -> np.ndarray:
    """Along a thin skeleton, the distance to the background in physical units; zero elsewhere.

    At every voxel ``v`` of the skeleton (``thin > 0``): ``min_{u: label[u] = 0} |x_v - x_u|``,
    the radius of the structure there (the weight of cbDice). Equal to
    ``distance_transform_edt(label > 0, sampling) * (thin > 0)``; every skeleton voxel's
    radius is at least the smallest spacing, so ``radius > 0`` is exactly the skeleton.

    Parameters
    ----------
    label : ndarray of int or bool
        2D or 3D label map; 0 is background.
    thin : ndarray
        Thin skeleton of the same shape, boolean or labelled (e.g.
        :func:`skelprep.skeleton.thin_skeleton`), inside the foreground.
    spacing : sequence of float or None
        As in :func:`signed_distance` (``None``: unit spacing).

    Returns
    -------
    ndarray of float32
        The shape of ``label``. A foreground without background anywhere in the image
        gives its skeleton the image diagonal (:func:`image_diagonal`): finite, farther
        than any voxel could be.

    Examples
    --------
    >>> import numpy as np
    >>> label = np.zeros((7, 9), np.uint8)
    >>> label[1:6, 1:8] = 1
    >>> thin = np.zeros_like(label)
    >>> thin[3, 2:7] = 1
    >>> skeleton_radius(label, thin, spacing=None)[3]
    array([0., 0., 2., 3., 3., 3., 2., 0., 0.], dtype=float32)
    """
    label = _checked_labels(label)
    thin = np.asarray(thin)
    if thin.shape != label.shape:
        raise TargetError(f"thin skeleton shape {thin.shape} differs from labels shape {label.shape}")
    sampling = _checked_spacing(spacing, label.ndim)
    foreground = label > 0
    skeleton = thin > 0
    outside = skeleton & ~foreground
    if outside.any():
        raise TargetError(f"thin skeleton has {int(outside.sum())} voxels on the background")
    out = np.zeros(label.shape, dtype=DISTANCE_DTYPE)
    if skeleton.any():
        out[skeleton] = distance_inside(foreground, spacing=sampling)[skeleton]
    return out


def components(
    label: np.ndarray,
    *,
    connectivity: int | None = None,
    per_class: bool = False,
    dtype: np.dtype | type = np.uint32,
) -> Components:
    """Connected-component labels of the foreground (``label > 0``).

    The components of ``scipy.ndimage.label(label > 0, structure)`` with the structure
    of ``connectivity``, voxel for voxel; the numbering of the components may differ.

    Parameters
    ----------
    label : ndarray of int or bool
        2D or 3D label map; 0 is background.
    connectivity : int, optional
        4 or 8 in 2D, 6, 18 or 26 in 3D. Default the full neighbourhood (8, 26): the
        components whose skeletons :func:`skelprep.skeleton.skeletonize_mask` keeps.
    per_class : bool
        Split touching classes: voxels are connected only to neighbours of the same label.
    dtype : unsigned integer dtype
        Of the returned labels; more components than it holds raise :class:`TargetError`.

    Returns
    -------
    Components

    Examples
    --------
    >>> import numpy as np
    >>> label = np.array([[1, 1, 0, 2],
    ...                   [0, 0, 0, 2],
    ...                   [0, 1, 0, 0]], np.uint8)
    >>> c = components(label, dtype=np.uint8)
    >>> c.labels
    array([[1, 1, 0, 2],
           [0, 0, 0, 2],
           [0, 3, 0, 0]], dtype=uint8)
    >>> c.count, c.connectivity
    (3, 8)
    """
    import cc3d

    label = _checked_labels(label)
    choices = CONNECTIVITIES[label.ndim]
    if connectivity is None:
        connectivity = choices[-1]
    if connectivity not in choices:
        raise TargetError(
            f"connectivity {connectivity!r} is not one of {choices} for a {label.ndim}D label map"
        )
    dtype = np.dtype(dtype)
    if dtype.kind != "u":
        raise TargetError(f"component labels need an unsigned integer dtype, got {dtype}")
    data = np.ascontiguousarray(label) if per_class else np.ascontiguousarray(label > 0)
    out, count = cc3d.connected_components(data, connectivity=connectivity, return_N=True)
    count = int(count)
    if count > np.iinfo(dtype).max:
        raise TargetError(f"{count} components do not fit in {dtype} (at most {np.iinfo(dtype).max})")
    return Components(
        labels=out.astype(dtype, copy=False), count=count, connectivity=int(connectivity), per_class=per_class
    )


def target_params(
    name: str,
    ndim: int,
    *,
    spacing: Sequence[float] | None,
    classes: Sequence[int],
    slice_axis: int | None = None,
) -> dict:
    """What target ``name`` of :data:`BUILD_TARGETS` of a case is computed with (JSON-ready): its stored
    array is current while these are equal.

    ``ndim``: the case's dimensions. With ``slice_axis`` (3D cases only) the target is computed on each 2D
    slice along that axis, ``spacing`` is the slices' in-plane spacing (two values) and the parameters
    are the 2D ones with ``slice_axis`` added.

    >>> target_params("sdf", 2, spacing=None, classes=[1, 2])
    {'classes': [1, 2], 'spacing': [1.0, 1.0]}
    >>> target_params("components", 3, spacing=(2.0, 1.0, 1.0), classes=[1])
    {'connectivity': 26}
    >>> target_params("components", 3, spacing=(1.0, 1.0), classes=[1], slice_axis=0)
    {'connectivity': 8, 'slice_axis': 0}
    """
    if name not in BUILD_TARGETS:
        raise TargetError(f"unknown target {name!r}; the targets are {', '.join(BUILD_TARGETS)}")
    if slice_axis is not None:
        if ndim != 3 or slice_axis not in (0, 1, 2):
            raise TargetError(f"slice_axis {slice_axis!r} needs a 3D label map and an axis 0, 1 or 2")
        return {**target_params(name, 2, spacing=spacing, classes=classes), "slice_axis": slice_axis}
    steps = list(_checked_spacing(spacing, ndim))
    if name == "sdf":
        return {"classes": [int(c) for c in classes], "spacing": steps}
    if name == "radius":
        return {"spacing": steps}
    return {"connectivity": CONNECTIVITIES[ndim][-1]}


def build_targets(
    names: Sequence[str],
    label: np.ndarray,
    thin: np.ndarray,
    *,
    spacing: Sequence[float] | None,
    classes: Sequence[int],
    ignore_label: int | None = None,
    slice_axis: int | None = None,
) -> dict[str, tuple[np.ndarray, dict]]:
    """The stored form of the targets ``names`` of one case: name -> (array, record).

    What a build stores (``skelprep build --targets``), from the case's mask ``label``,
    its stored ``thin`` skeleton and ``spacing``:

    - ``sdf``: :func:`signed_distance` of each of ``classes``, ``(len(classes), *shape)``
      float32 (a class absent from the case is ``+D``, the image diagonal);
    - ``radius``: :func:`skeleton_radius` along ``thin``, float32 of the mask's shape;
    - ``components``: :func:`components` of the foreground at the full connectivity, uint32.

    The ``ignore_label``'s voxels are background for ``radius`` and ``components`` and
    outside every class of ``sdf``. The record holds ``params`` (what the array was
    computed with: a stored array is reused while they are equal) and what the
    computation found (``count`` for components).

    With ``slice_axis`` (a 3D ``label``; ``spacing`` the two in-plane values) each target is
    computed on every 2D slice along that axis on its own, as a thin skeleton made per slice
    is: distances within the slice (``D`` the slice's diagonal), components at 8-connectivity
    within the slice, numbered on through the slices (``1..count`` over the case, each
    component in one slice).

    >>> import numpy as np
    >>> label = np.zeros((5, 6), np.uint8); label[1:4, 1:5] = 1
    >>> thin = np.zeros_like(label); thin[2, 2:4] = 1
    >>> out = build_targets(["sdf", "components"], label, thin, spacing=None, classes=[1])
    >>> out["sdf"][0].shape, out["sdf"][1]["params"]
    ((1, 5, 6), {'classes': [1], 'spacing': [1.0, 1.0]})
    >>> out["components"][1]
    {'params': {'connectivity': 8}, 'count': 1}
    >>> stack = np.stack([label, label])     # two slices, one component in each
    >>> out = build_targets(
    ...     ["components"], stack, np.stack([thin, thin]), spacing=None, classes=[1], slice_axis=0
    ... )
    >>> out["components"][1], out["components"][0].max(axis=(1, 2))
    ({'params': {'connectivity': 8, 'slice_axis': 0}, 'count': 2}, array([1, 2], dtype=uint32))
    """
    label = _checked_labels(label)
    params = {
        n: target_params(n, label.ndim, spacing=spacing, classes=classes, slice_axis=slice_axis)
        for n in names
    }
    top = max((int(c) for c in classes), default=0)
    if top > np.iinfo(label.dtype).max:  # a class the file's dtype cannot hold is absent from the case
        label = label.astype(np.promote_types(label.dtype, np.min_scalar_type(top)))
    if ignore_label is not None:
        label = np.where(label == ignore_label, 0, label).astype(label.dtype, copy=False)
    thin = np.asarray(thin)
    if thin.shape != label.shape:
        raise TargetError(f"thin skeleton shape {thin.shape} differs from labels shape {label.shape}")
    if slice_axis is not None and label.shape[slice_axis] == 0:
        raise TargetError(f"labels of shape {label.shape} have no slice along axis {slice_axis}")
    out: dict[str, tuple[np.ndarray, dict]] = {}
    for name in names:
        if slice_axis is None:
            data, found = _build_target(name, params[name], label, thin)
        else:
            data, found = _build_per_slice(name, params[name], label, thin, slice_axis)
        out[name] = (data, {"params": params[name], **found})
    return out


def _build_target(name: str, p: dict, label: np.ndarray, thin: np.ndarray) -> tuple[np.ndarray, dict]:
    """One target of a whole label map, with its parameters ``p``: (array, what it found)."""
    if name == "sdf":
        return signed_distance(label, p["classes"], spacing=p["spacing"]), {}
    if name == "radius":
        return skeleton_radius(label, thin, spacing=p["spacing"]), {}
    found = components(label, connectivity=p["connectivity"])
    return found.labels, {"count": found.count}


def _build_per_slice(
    name: str, p: dict, label: np.ndarray, thin: np.ndarray, axis: int
) -> tuple[np.ndarray, dict]:
    """One target computed on each slice along ``axis`` and stacked back (components numbered on)."""
    parts = [
        _build_target(name, p, np.take(label, k, axis=axis), np.take(thin, k, axis=axis))
        for k in range(label.shape[axis])
    ]
    if name != "components":  # the sdf's channels come first: its slices stack one axis later
        return np.stack([data for data, _ in parts], axis=axis + (name == "sdf")), {}
    count = sum(found["count"] for _, found in parts)
    dtype = parts[0][0].dtype
    if count > np.iinfo(dtype).max:
        raise TargetError(f"{count} components do not fit in {dtype} (at most {np.iinfo(dtype).max})")
    offsets = np.cumsum([0] + [found["count"] for _, found in parts[:-1]])
    numbered = [
        np.where(data > 0, data + dtype.type(first), 0).astype(dtype)
        for (data, _), first in zip(parts, offsets, strict=True)
    ]
    return np.stack(numbered, axis=axis), {"count": int(count)}
