"""Tube a (labelled) thin skeleton with torch, on any device.

Equal voxel for voxel to :func:`skelprep.skeleton.tube_from_thin` (numpy), so a
training pipeline can augment the *thin* skeleton (spatial transforms keep a
one-voxel line a line far better than they keep a tube's labels) and tube it on
the GPU afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["tube", "cross_max"]


def cross_max(x: torch.Tensor) -> torch.Tensor:
    """Grey dilation with the connectivity-1 cross, zero outside the array.

    Parameters
    ----------
    x : Tensor
        Float tensor ``(N, C, *spatial)`` with 2 or 3 spatial axes, values >= 0.

    Returns
    -------
    Tensor
        ``out[v] = max(x[v], x[v ± e_k] for every axis k)``.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(1, 1, 3, 3)
    >>> x[0, 0, 1, 1] = 2.0
    >>> cross_max(x)[0, 0]
    tensor([[0., 2., 0.],
            [2., 2., 2.],
            [0., 2., 0.]])
    """
    spatial = x.ndim - 2
    pool = {2: F.max_pool2d, 3: F.max_pool3d}[spatial]
    out = x
    for axis in range(spatial):
        # A 3-long window along one axis is the max over the centre and its two
        # neighbours on that axis; the max of these over all axes is the cross.
        # max-pool pads with -inf, and x >= 0, so the outside acts as zero.
        kernel = [1] * spatial
        kernel[axis] = 3
        padding = [0] * spatial
        padding[axis] = 1
        out = torch.maximum(out, pool(x, kernel_size=kernel, stride=1, padding=padding))
    return out


def tube(
    thin_labels: torch.Tensor,
    radius: int = 2,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dilate a (labelled) thin skeleton into a tube by an L1 ball of ``radius``.

    Same semantics as :func:`skelprep.skeleton.tube_from_thin`: with ``labels``
    the tube is ``dilate(thin > 0) * labels`` (the reference recipe); without,
    each tube voxel takes the largest skeleton label within ``radius``.

    Parameters
    ----------
    thin_labels : Tensor
        Thin skeleton, bool or integer (or float with whole values). Unbatched
        ``(H, W)`` / ``(D, H, W)`` or batched ``(B, C, H, W)`` / ``(B, C, D, H, W)``
        (each channel is tubed on its own).
    radius : int
        Radius of the L1 ball: ``radius`` dilations with the connectivity-1 cross
        (2 in the reference).
    labels : Tensor, optional
        Label map of the same shape to multiply the tube by.

    Returns
    -------
    Tensor
        The tube, with the dtype of ``labels`` (or of ``thin_labels``) and on
        the same device.

    Examples
    --------
    >>> import torch
    >>> thin = torch.zeros(5, 5, dtype=torch.uint8)
    >>> thin[2, 2] = 3
    >>> tube(thin, radius=1)
    tensor([[0, 0, 0, 0, 0],
            [0, 0, 3, 0, 0],
            [0, 3, 3, 3, 0],
            [0, 0, 3, 0, 0],
            [0, 0, 0, 0, 0]], dtype=torch.uint8)
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if thin_labels.ndim not in (2, 3, 4, 5):
        raise ValueError(
            f"thin_labels must be (H, W), (D, H, W), (B, C, H, W) or (B, C, D, H, W), got {tuple(thin_labels.shape)}"
        )
    if labels is not None and labels.shape != thin_labels.shape:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} differs from thin shape {tuple(thin_labels.shape)}"
        )
    unbatched = thin_labels.ndim in (2, 3)
    x = thin_labels[None, None] if unbatched else thin_labels
    # Pooling needs floating point; float32 holds every uint16 label exactly.
    # With labels only the skeleton's support matters, so dilate a 0/1 map.
    work = (x > 0).float() if labels is not None else x.float()
    for _ in range(radius):
        work = cross_max(work)
    if unbatched:
        work = work[0, 0]
    if labels is not None:
        return (work > 0).to(labels.dtype) * labels
    return work.to(thin_labels.dtype)
