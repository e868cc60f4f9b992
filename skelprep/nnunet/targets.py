"""Skeleton Recall targets of nnU-Net's preprocessed segmentations (pure numpy, no nnU-Net import).

nnU-Net stores a preprocessed case's segmentation as ``(1, *spatial)`` int16 with ``-1`` outside the
nonzero crop of the image (``crop_to_nonzero``); its 2D configurations train on slices along axis 0 of
that array. :func:`preprocessed_targets` maps ``-1`` to background and computes thin and tube with
:func:`skelprep.skeleton.skeleton_targets`, per slice along axis 0 for 2D configurations.

:func:`official_patch_tube` restates the official Skeleton Recall ``SkeletonTransform`` (nnU-Net fork of
Kirchhoff et al.), which recomputes the tube on every augmented patch; it is here only to measure how close
the precomputed, augmented tube comes to it (``pipelines/nnunet_equivalence.py``).
"""

from __future__ import annotations

import numpy as np
from skimage.morphology import dilation, skeletonize

from skelprep.skeleton import SkeletonTargets, skeleton_targets

__all__ = ["preprocessed_labels", "preprocessed_targets", "official_patch_tube"]


def preprocessed_labels(seg: np.ndarray) -> np.ndarray:
    """The label map of a preprocessed segmentation: channel 0, ``-1`` (outside the crop) set to 0.

    Parameters
    ----------
    seg : ndarray of int
        ``(1, *spatial)`` as stored in ``<id>_seg.b2nd``.

    Returns
    -------
    ndarray
        ``spatial``-shaped, uint8 (uint16 when a label exceeds 255).

    Examples
    --------
    >>> import numpy as np
    >>> preprocessed_labels(np.array([[[-1, 0, 2]]], np.int16))
    array([[0, 0, 2]], dtype=uint8)
    """
    seg = np.asarray(seg)
    if seg.ndim not in (3, 4) or seg.shape[0] != 1:
        raise ValueError(f"expected a (1, *spatial) segmentation with 2 or 3 spatial axes, got {seg.shape}")
    if not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"expected an integer segmentation, got dtype {seg.dtype}")
    labels = seg[0]
    high = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < -1:
        raise ValueError(f"labels below -1 ({int(labels.min())}) in a preprocessed segmentation")
    dtype = np.uint8 if high <= 255 else np.uint16
    return np.where(labels < 0, 0, labels).astype(dtype)


def preprocessed_targets(
    seg: np.ndarray, *, two_d: bool, ignore_label: int | None = None, radius: int = 2
) -> SkeletonTargets:
    """Thin and tube of a preprocessed segmentation, in its voxel order and shape (without the channel).

    Parameters
    ----------
    seg : ndarray of int
        ``(1, *spatial)`` preprocessed segmentation (``-1`` outside the nonzero crop).
    two_d : bool
        A 2D configuration: skeletonize each slice along axis 0 (Zhang thinning, in-plane tube), the
        slices nnU-Net's 2D patches are cut from. Otherwise one 3D skeleton (Lee).
    ignore_label : int, optional
        nnU-Net's ignore label: not skeletonized, zero in the outputs.
    radius : int
        L1 radius of the tube (2 in the official recipe).

    Returns
    -------
    SkeletonTargets
        ``thin`` and ``tube`` of shape ``seg.shape[1:]``.

    Examples
    --------
    >>> import numpy as np
    >>> seg = np.full((1, 1, 7, 9), -1, np.int16)
    >>> seg[0, 0, 1:6, 1:8] = 0
    >>> seg[0, 0, 2:5, 2:7] = 1
    >>> t = preprocessed_targets(seg, two_d=True, radius=1)
    >>> t.tube.shape
    (1, 7, 9)
    >>> t.thin[0, 3]
    array([0, 0, 1, 1, 1, 0, 0, 0, 0], dtype=uint8)
    """
    labels = preprocessed_labels(seg)
    slice_axis = 0 if two_d and labels.ndim == 3 else None
    return skeleton_targets(labels, radius=radius, ignore_label=ignore_label, slice_axis=slice_axis)


def official_patch_tube(seg: np.ndarray) -> np.ndarray:
    """The official ``SkeletonTransform`` on one augmented patch: ``dilation²(skeletonize(seg > 0)) · seg``.

    Parameters
    ----------
    seg : ndarray of int
        ``(C, *spatial)`` augmented segmentation patch (after nnU-Net's ``RemoveLabel(-1 -> 0)``); only
        channel 0 is used, as in the official transform.

    Returns
    -------
    ndarray
        ``spatial``-shaped int16 tube (Zhang skeleton for 2D patches, Lee for 3D; scikit-image's default
        footprint, the connectivity-1 cross, for both dilations).

    Examples
    --------
    >>> import numpy as np
    >>> seg = np.zeros((1, 5, 9), np.int16)
    >>> seg[0, 1:4, 1:8] = 3
    >>> official_patch_tube(seg)[2]
    array([0, 3, 3, 3, 3, 3, 3, 3, 0], dtype=int16)
    """
    labels = np.asarray(seg)[0].astype(np.int16)
    fg = labels > 0
    if not fg.any():
        return np.zeros(labels.shape, np.int16)
    skel = skeletonize(fg).astype(np.int16)
    return dilation(dilation(skel)) * labels
