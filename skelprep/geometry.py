"""Voxel order and affine of a stored case as MONAI and TorchIO see its image.

The store keeps every array in the voxel order of the mask as skelprep read it
(``attrs["axes"]``): NIfTI in nibabel's ``(i, j, k)``, PNG ``(row, column)``,
TIFF stacks ``(z, y, x)``. MONAI and TorchIO read the *image* of the same case
with their own readers, which order the voxels differently for PNG and TIFF
and invent an affine where the file has none. A target handed to a framework
must have exactly the image's voxel order and affine, or every spatial
transform (``Orientationd``, ``Spacingd``, ``RandAffined``, TorchIO's
``RandomAffine``, ``Resample``) moves it away from the label without an error.

What the frameworks' readers give (checked against monai 1.6.0 and torchio
1.2.1; ``s*`` is the stored spacing, ``A`` the stored NIfTI affine):

=============  ==============================  ==================================  ==============================
stored axes    MONAI ``LoadImage``             TorchIO                             transpose of the stored array
=============  ==============================  ==================================  ==============================
NIfTI ijk/ij   NibabelReader: ``(i, j, k)``,   SimpleITK: ``(1, i, j, k)``;        none
               affine ``A``                    2D ``(1, i, j, 1)``; affine ``A``
PNG yx         PILReader: ``(x, y)`` =         ``(1, x, y, 1)``,                   ``(1, 0)``
               (column, row), identity         ``diag(-1, -1, 1, 1)``
               (``reverse_indexing=False``:
               ``(y, x)``, no transpose)
TIFF zyx       ITKReader (needs ``itk``):      ``(1, x, y, z)``,                   ``(2, 1, 0)``
               ``(x, y, z)``,                  ``diag(-sx, -sy, sz, 1)``
               ``diag(-sx, -sy, sz, 1)``
TIFF yx        ITKReader: ``(x, y)``,          ``(1, x, y, 1)``,                   ``(1, 0)``
               ``diag(-1, -1, 1, 1)``          ``diag(-1, -1, 1, 1)``
=============  ==============================  ==================================  ==============================

The negative diagonals are ITK's LPS-to-RAS conversion of an image without
orientation. ITK reads a TIFF's resolution tags as spacing while skelprep
stores 1.0: for such files take the affine from the image as the framework read
it (the adapters do when they can). MONAI without ``itk`` has no TIFF reader.

Pure numpy; imports neither MONAI nor TorchIO.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["Framework", "GeometryError", "VoxelGeometry", "framework_geometry", "same_affine", "to_framework"]

Framework = Literal["monai", "torchio"]
_TIFF = (".tif", ".tiff")


class GeometryError(ValueError):
    """A stored array whose voxel grid or affine does not match the framework's image of the case."""


@dataclass(frozen=True)
class VoxelGeometry:
    """How to hand a stored array to a framework.

    Attributes
    ----------
    order : tuple of int
        ``np.transpose`` axes that turn the stored spatial axes into the
        framework's.
    affine : ndarray
        4x4 voxel-to-world matrix (RAS) of the framework's image.
    spatial_ndim : int
        Spatial axes the framework uses (TorchIO: always 3, 2D images get a
        trailing axis of length 1).
    stored_affine : bool
        True when the affine comes from the store (NIfTI); False when it is the
        one the framework's reader invents for a file without geometry.
    """

    order: tuple[int, ...]
    affine: np.ndarray
    spatial_ndim: int
    stored_affine: bool


def _diag(*diagonal: float) -> np.ndarray:
    return np.diag([*diagonal, 1.0]).astype(np.float64)


def framework_geometry(
    attrs: Mapping[str, Any], framework: Framework, *, reverse_indexing: bool = True
) -> VoxelGeometry:
    """The voxel order and affine a framework gives the image of a stored case.

    Parameters
    ----------
    attrs : mapping
        The case's store attributes (``axes``, ``affine``, ``spacing``,
        ``source``, ``shape``).
    framework : {"monai", "torchio"}
    reverse_indexing : bool
        MONAI's PILReader option (its default, True, transposes PNGs to
        ``(column, row)``). Ignored for other formats and for TorchIO.

    Returns
    -------
    VoxelGeometry

    Examples
    --------
    >>> png = {"axes": "yx", "affine": None, "spacing": [1.0, 1.0], "source": "labels/a.png"}
    >>> framework_geometry(png, "monai").order
    (1, 0)
    >>> g = framework_geometry(png, "torchio")
    >>> g.order, g.spatial_ndim, np.diag(g.affine).tolist()
    ((1, 0), 3, [-1.0, -1.0, 1.0, 1.0])
    >>> nii = {"axes": "ijk", "affine": np.diag([0.5, 2.0, 1.0, 1.0]).tolist(), "source": "a.nii.gz"}
    >>> g = framework_geometry(nii, "monai")
    >>> g.order, g.stored_affine, np.diag(g.affine).tolist()
    ((0, 1, 2), True, [0.5, 2.0, 1.0, 1.0])
    """
    if framework not in ("monai", "torchio"):
        raise ValueError(f"framework must be 'monai' or 'torchio', not {framework!r}")
    axes = str(attrs.get("axes", ""))
    ndim = len(axes)
    if ndim not in (2, 3):
        raise ValueError(f"case axes {axes!r}: expected 2 or 3 spatial axes")
    spatial_ndim = 3 if framework == "torchio" else ndim
    spacing = [float(s) for s in (attrs.get("spacing") or [1.0] * ndim)]
    if axes.startswith("ij"):  # NIfTI: nibabel's order, which both frameworks keep
        affine = attrs.get("affine")
        if affine is None:
            raise ValueError("NIfTI case without a stored affine")
        return VoxelGeometry(tuple(range(ndim)), np.asarray(affine, np.float64), spatial_ndim, True)
    reverse = tuple(range(ndim))[::-1]
    if ndim == 3:  # TIFF stack (z, y, x): ITK gives (x, y, z) and flips x, y to RAS
        sz, sy, sx = spacing
        return VoxelGeometry(reverse, _diag(-sx, -sy, sz), spatial_ndim, False)
    is_tiff = str(attrs.get("source", "")).lower().endswith(_TIFF)
    if framework == "monai" and not is_tiff:  # PILReader: identity affine, transposed by default
        return VoxelGeometry(reverse if reverse_indexing else (0, 1), np.eye(4), 2, False)
    return VoxelGeometry(reverse, _diag(-1.0, -1.0, 1.0), spatial_ndim, False)  # ITK / SimpleITK


def to_framework(array: np.ndarray, geometry: VoxelGeometry, *, channel_first: bool = False) -> np.ndarray:
    """A stored array in the framework's layout: ``(C, *spatial)``.

    Parameters
    ----------
    array : ndarray
        Stored spatial array, or a channel-first one (``channel_first=True``,
        e.g. a stored ``image``).
    geometry : VoxelGeometry
        From :func:`framework_geometry`.
    channel_first : bool
        The array already has a leading channel axis.

    Examples
    --------
    >>> png = {"axes": "yx", "affine": None, "source": "a.png"}
    >>> tube = np.zeros((5, 7), np.uint8); tube[1, 2] = 1       # row 1, column 2
    >>> out = to_framework(tube, framework_geometry(png, "torchio"))
    >>> out.shape, np.argwhere(out).tolist()
    ((1, 7, 5, 1), [[0, 2, 1, 0]])
    """
    if not channel_first:
        array = array[np.newaxis]
    out = np.transpose(array, (0, *(1 + a for a in geometry.order)))
    missing = geometry.spatial_ndim - (out.ndim - 1)
    return out.reshape(out.shape + (1,) * missing) if missing > 0 else out


def same_affine(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two 4x4 affines place every voxel within 1e-4 voxel sizes of each other.

    NIfTI headers hold float32; nibabel and ITK turn them into float64
    differently (5e-8 apart for a rotated, anisotropic affine), so equality
    is too strict, while any real misplacement is at least a fraction of a voxel.

    Examples
    --------
    >>> a = np.diag([0.7, 1.3, 2.1, 1.0])
    >>> same_affine(a, a + 1e-7), same_affine(a, a @ np.diag([-1.0, 1, 1, 1]))
    (True, False)
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.abs(a[:3, :3]).max()), 1.0)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0, atol=1e-4 * scale))
