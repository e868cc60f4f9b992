"""Topology-aware losses that take the ground truth's targets as stored, not recomputed every step.

Each loss here is the published one, equal to its authors' reference code on the
same inputs, with the ground-truth side read from targets of :mod:`skelprep.targets`
and :mod:`skelprep.skeleton` (computed once per case, offline) where the reference
derives it from the mask on every call:

- :class:`ClDiceLoss`: clDice (Shit et al., CVPR 2021) with the ground truth's
  skeleton given (the stored ``thin``); only the prediction's soft skeleton is computed.
- :class:`CbDiceLoss`: cbDice (Shi et al., MICCAI 2024) with the ground truth's
  distance map and skeleton radius given (stored ``sdf`` of the foreground, ``radius``).
- :class:`BoundaryLoss`: the boundary loss (Kervadec et al., MIDL 2019 / MedIA 2021)
  with the signed distance maps given (stored ``sdf``);
- :class:`HausdorffDTLoss`: the distance-transform Hausdorff loss (Karimi and
  Salcudean, TMI 2020; MONAI's ``HausdorffDTLoss``) with the ground truth's distance
  fields given (stored ``sdf``).

What the prediction needs is still computed per step: its soft skeleton (soft morphology
on the prediction's device) and, for cbDice and the Hausdorff loss, the distance map of
its thresholded mask (an exact EDT on the CPU, under no gradient, as in the reference).

Stored targets of a whole case cropped to a patch are the case's: a distance measured
to a boundary outside the patch is kept, where the references, run on the patch,
see only the patch. The numbers are equal where the two coincide (the whole image as
the patch, every class present).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skelprep.torch.loss import _as_index, _check_classes, _upcast

__all__ = ["BoundaryLoss", "CbDiceLoss", "ClDiceLoss", "HausdorffDTLoss", "soft_skeleton"]


def _tracked(x: torch.Tensor) -> bool:
    return x.requires_grad and torch.is_grad_enabled()


def _line_extreme(x: torch.Tensor, axis: int, op) -> torch.Tensor:
    """``op`` (``torch.minimum`` or ``torch.maximum``) of each voxel and its two neighbours along ``axis``.

    For untracked inputs (a ground truth, a thresholded prediction): in place on shifted
    views of a copy; at the border the missing neighbour is left out, as pooling's
    padding does. On the CPU, pooling with a 3-voxel window spends over ten times as
    long in its window loop, and the untracked soft skeleton of a 2D 512² or 3D 128³
    batch runs about ten times faster through these views than through pooling.
    Tracked inputs go through pooling (:func:`_soft_erode`, :func:`_soft_dilate`): the
    values are the same, but ``torch.minimum``'s backward is slower than pooling's and
    splits the gradient where inputs tie, where pooling, as the reference, gives it to one.
    """
    out = x.clone()
    n = x.shape[axis]
    if n > 1:
        op(out.narrow(axis, 1, n - 1), x.narrow(axis, 0, n - 1), out=out.narrow(axis, 1, n - 1))
        op(out.narrow(axis, 0, n - 1), x.narrow(axis, 1, n - 1), out=out.narrow(axis, 0, n - 1))
    return out


def _soft_erode(x: torch.Tensor) -> torch.Tensor:
    """Soft erosion by the connectivity-1 cross: the minimum of 3-voxel minima along each axis."""
    spatial = x.ndim - 2
    pool = F.max_pool2d if spatial == 2 else F.max_pool3d
    tracked, out = _tracked(x), None
    for axis in range(spatial):
        if tracked:
            kernel, padding = [1] * spatial, [0] * spatial
            kernel[axis], padding[axis] = 3, 1
            eroded = -pool(-x, tuple(kernel), 1, tuple(padding))
        else:
            eroded = _line_extreme(x, axis + 2, torch.minimum)
        out = eroded if out is None else torch.minimum(out, eroded)
    return out


def _soft_dilate(x: torch.Tensor) -> torch.Tensor:
    """Soft dilation by the full 3x3(x3) square: a maximum filter (separable, untracked)."""
    if _tracked(x):
        return (F.max_pool2d if x.ndim == 4 else F.max_pool3d)(x, 3, 1, 1)
    for axis in range(2, x.ndim):
        x = _line_extreme(x, axis, torch.maximum)
    return x


def soft_skeleton(x: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Soft skeleton of probabilities ``x`` ``(B, C, *spatial)``, 2D or 3D (Shit et al., CVPR 2021).

    Iterated soft morphology (Algorithm 1 of the paper, with the update of its authors'
    repository jocpae/clDice): with ``open(x) = dilate(erode(x))``,
    ``skel = relu(x - open(x))``, then ``iterations`` times ``x = erode(x)``,
    ``delta = relu(x - open(x))``, ``skel = skel + relu(delta - skel · delta)``.
    Erosion is the minimum over the connectivity-1 cross (per-axis 3-voxel minima),
    dilation the maximum over the full 3×3(×3) square. On a binary mask the result is
    binary (a morphological skeleton, not a topology-preserving one).

    Examples
    --------
    >>> import torch
    >>> bar = torch.zeros(1, 1, 5, 9)
    >>> bar[0, 0, 1:4, 1:8] = 1.0
    >>> soft_skeleton(bar)[0, 0, 2]
    tensor([0., 0., 1., 1., 1., 1., 1., 0., 0.])
    """
    if x.ndim not in (4, 5):
        raise ValueError(
            f"soft_skeleton needs (B, C, *spatial) with 2 or 3 spatial axes, got shape {tuple(x.shape)}"
        )
    # The erosion inside one iteration's opening is the next iteration's image: computed once.
    eroded = _soft_erode(x)
    skel = F.relu(x - _soft_dilate(eroded))
    for _ in range(iterations):
        x, eroded = eroded, _soft_erode(eroded)
        delta = F.relu(x - _soft_dilate(eroded))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def _as_map(target: torch.Tensor, like: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    """A float target map as ``(B, channels, *spatial)`` matching the prediction ``like``, in float32 or wider."""
    if target.ndim == like.ndim - 1 and channels == 1:
        target = target.unsqueeze(1)
    if target.ndim != like.ndim or target.shape[0] != like.shape[0] or target.shape[1] != channels:
        raise ValueError(
            f"{name} shape {tuple(target.shape)} does not match prediction {tuple(like.shape)}; "
            f"expected (B, {channels}, *spatial)"
        )
    if target.shape[2:] != like.shape[2:]:
        raise ValueError(
            f"{name} spatial shape {tuple(target.shape[2:])} differs from {tuple(like.shape[2:])}"
        )
    return target.to(torch.promote_types(target.dtype, torch.float32))


def _class_probs(
    input: torch.Tensor, sdf: torch.Tensor, classes: list[int] | None, apply_softmax: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities of the sdf's classes, the sdf checked against them); classes default to all but 0."""
    classes = classes if classes is not None else list(range(1, input.shape[1]))
    if not classes or not all(0 <= c < input.shape[1] for c in classes):
        raise ValueError(f"classes {classes} must name channels of the input's {input.shape[1]}")
    sdf = _as_map(sdf, input, len(classes), "sdf")
    probs = torch.softmax(_upcast(input), 1) if apply_softmax else _upcast(input)
    return probs[:, classes], sdf


class ClDiceLoss(nn.Module):
    """clDice with the ground truth's skeleton given: ``1 - 2·Tprec·Tsens / (Tprec + Tsens)``.

    Shit et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular
    Structure Segmentation", CVPR 2021; reference code github.com/jocpae/clDice
    (``soft_cldice`` with ``exclude_background=True``). Over the foreground classes
    ``c >= 1``, with ``P`` the probabilities, ``S_P = soft_skeleton(P)``, ``V_c = (label == c)``
    and ``S_c = (thin == c)`` the ground truth's hard skeleton::

        Tprec = (sum_{c,v} S_P[c,v] · V_c[v] + smooth) / (sum_{c,v} S_P[c,v] + smooth)
        Tsens = (sum_{c,v} S_c[v] · P[c,v] + smooth) / (sum_{c,v} S_c[v] + smooth)

    the sums running over batch, classes and voxels. The reference computes the soft
    skeleton of the one-hot ground truth every step (a binary morphological skeleton);
    here ``thin`` is the stored exact skeleton (:func:`skelprep.skeleton.thin_skeleton`),
    which keeps the structure's topology where the morphological one breaks it. Given the
    reference's ground-truth skeleton as ``thin``, the two are equal. No one-hot is built.

    Parameters
    ----------
    iterations : int
        Of the prediction's soft skeleton (the reference uses 10, whatever its ``iter_``).
    smooth : float
        Added to both ratios' numerator and denominator (the reference's 1).
    apply_softmax : bool
        Softmax the input over channels; ``False`` takes probabilities.

    Examples
    --------
    >>> import torch
    >>> label = torch.zeros(1, 1, 7, 9, dtype=torch.long)
    >>> label[..., 2:5, 1:8] = 1
    >>> thin = torch.zeros_like(label)
    >>> thin[..., 3, 2:7] = 1
    >>> probs = torch.cat([1.0 - label.float(), label.float()], 1)   # a perfect prediction
    >>> round(ClDiceLoss(apply_softmax=False)(probs, label, thin).item(), 6)
    0.0
    """

    def __init__(self, iterations: int = 10, smooth: float = 1.0, apply_softmax: bool = True) -> None:
        super().__init__()
        self.iterations = iterations
        self.smooth = smooth
        self.apply_softmax = apply_softmax

    def forward(self, input: torch.Tensor, label: torch.Tensor, thin: torch.Tensor) -> torch.Tensor:
        """Loss of ``input`` ``(B, C, *spatial)`` against class ids ``label`` and skeleton ``thin`` ``(B, 1, *spatial)``."""
        label, thin = _as_index(label, input), _as_index(thin, input)
        _check_classes(label, input.shape[1])
        _check_classes(thin, input.shape[1])
        probs = torch.softmax(_upcast(input), 1) if self.apply_softmax else _upcast(input)
        skel = soft_skeleton(probs[:, 1:], self.iterations)  # (B, C-1, *spatial)
        # sum_c S_P[c] · V_c: the soft skeleton at the label's class, on the foreground
        at_label = skel.gather(1, (label - 1).clamp(min=0)) * (label > 0)
        tprec = (at_label.sum() + self.smooth) / (skel.sum() + self.smooth)
        on_skeleton = thin > 0
        at_thin = probs.gather(1, thin) * on_skeleton
        tsens = (at_thin.sum() + self.smooth) / (on_skeleton.sum() + self.smooth)
        return 1.0 - 2.0 * tprec * tsens / (tprec + tsens)


def _prediction_distance(hard: torch.Tensor, spacing: Sequence[float] | None) -> torch.Tensor:
    """Distance to the background inside each sample's binary mask ``hard`` ``(B, *spatial)``; 0 outside.

    :func:`skelprep.targets.distance_inside`, an exact EDT on the CPU (the mask is the
    prediction's, new every step); a mask without background gets the image diagonal.
    """
    from skelprep.targets import distance_inside

    masks = hard.detach().to("cpu", torch.bool).numpy()
    out = np.stack([distance_inside(m, spacing=spacing) for m in masks])
    return torch.from_numpy(out).to(hard.device)


def _cb_weights(distance: torch.Tensor, skeleton: torch.Tensor, ndim: int):
    """cbDice's normalized distance map, skeleton radius and inverse-radius weights, per sample.

    ``distance`` ``(B, *spatial)``: distance to the background inside the mask (0 outside);
    ``skeleton``: bool, the skeleton. With ``R`` the radius on the skeleton (0 elsewhere),
    ``r_max = max(max R, 1)`` and ``r_min = max(min R, 1)`` per sample (the minimum runs over
    every voxel, as in the reference, so it is 1 unless the skeleton fills the sample):
    ``(min(distance, r_max) / r_max, R / r_max, ((r_max - R + r_min) / r_max)^k on the skeleton)``
    with ``k = 1`` in 2D and 2 in 3D.
    """
    radius = distance * skeleton
    flat = radius.flatten(1)
    shape = (-1,) + (1,) * (radius.ndim - 1)
    r_max = flat.amax(1).clamp(min=1).view(shape)
    r_min = flat.amin(1).clamp(min=1).view(shape)
    inverse = (r_max - radius + r_min) / r_max
    if ndim == 3:
        inverse = inverse**2
    return torch.minimum(distance, r_max) / r_max, radius / r_max, inverse * skeleton


def _combine(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """cbDice's denominator weights: ``a · c`` where ``a`` is non-zero and ``b`` zero, ``b · c`` elsewhere."""
    return torch.where((a != 0) & (b == 0), a * c, b * c)


class CbDiceLoss(nn.Module):
    """cbDice (centerline boundary Dice), negated, with the ground truth's distance map and radius given.

    Shi et al., "Centerline Boundary Dice Loss for Vascular Segmentation", MICCAI 2024;
    reference code github.com/PengchengShi1220/cbDice (``SoftcbDiceLoss``). The
    foreground is binary: ``p`` = softmax of (background logit, maximum foreground
    logit), taken at the foreground. Per sample, distances ``D`` inside a mask,
    its skeleton ``S`` and :func:`_cb_weights`' normalized map ``Q_V``, radius ``Q_R`` and
    inverse-radius weight ``Q_S`` give, for the ground truth (subscript ``l``, weighted by
    its mask) and the prediction (``p``: its thresholded mask ``p > 0.5``, that mask's
    soft skeleton times ``p``, weighted by ``p``)::

        Tprec = (sum Q_Sp · Q_Vl + smooth) / (sum combine(Q_Rp·p, Q_Rl·l, Q_Sp) + smooth)
        Tsens = (sum Q_Sl · Q_Vp + smooth) / (sum combine(Q_Rl·l, Q_Rp·p, Q_Sl) + smooth)
        loss  = -2 · Tprec · Tsens / (Tprec + Tsens)

    sums over the batch and voxels. The reference derives the ground truth's mask,
    skeleton (morphological, or the exact topology-preserving one at several times the
    cost) and distance transform every step; here they are the stored targets:
    ``sdf`` of the foreground union (:func:`skelprep.targets.signed_distance` with
    ``classes=[(1, ..., K)]``: the mask is ``sdf < 0``, ``D = -sdf`` inside) and
    ``radius`` (:func:`skelprep.targets.skeleton_radius` of the stored thin skeleton:
    the skeleton is ``radius > 0``). The prediction's distance map is still an exact EDT
    per step, on the CPU (as the reference's MONAI ``distance_transform_edt`` without
    cuCIM). Given the reference's own ground-truth skeleton, the two are equal.

    Parameters
    ----------
    iterations : int
        Of the soft skeleton of the thresholded prediction (the reference's 10).
    smooth : float
        The reference's 1.
    spacing : sequence of float, optional
        Voxel size of the prediction's distance map: that of the stored targets
        (``None``: voxels, as the reference, whose clamps at 1 assume voxel units).

    Examples
    --------
    >>> import torch
    >>> from skelprep.targets import signed_distance, skeleton_radius
    >>> label = torch.zeros(1, 1, 9, 12, dtype=torch.long)
    >>> label[..., 2:7, 1:11] = 1
    >>> thin = torch.zeros_like(label)
    >>> thin[..., 4, 3:9] = 1
    >>> sdf = torch.from_numpy(signed_distance(label[0, 0].numpy(), [1], spacing=None))[None]
    >>> radius = torch.from_numpy(skeleton_radius(label[0, 0].numpy(), thin[0, 0].numpy(), spacing=None))
    >>> logits = torch.cat([-5.0 * label.float(), 5.0 * label.float()], 1)
    >>> float(CbDiceLoss()(logits, sdf, radius[None, None])) < -0.5
    True
    """

    def __init__(
        self, iterations: int = 10, smooth: float = 1.0, spacing: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.iterations = iterations
        self.smooth = smooth
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def forward(self, input: torch.Tensor, sdf: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``input`` ``(B, C, *spatial)`` against the foreground's ``sdf`` and ``radius`` ``(B, 1, *spatial)``."""
        if input.ndim not in (4, 5) or input.shape[1] < 2:
            raise ValueError(
                f"cbDice needs logits (B, C >= 2, *spatial) in 2D or 3D, got {tuple(input.shape)}"
            )
        ndim = input.ndim - 2
        sdf = _as_map(sdf, input, 1, "sdf")[:, 0]
        radius = _as_map(radius, input, 1, "radius")[:, 0]
        logits = _upcast(input)
        binary = torch.cat([logits[:, :1], logits[:, 1:].amax(1, keepdim=True)], 1)
        prob = torch.softmax(binary, 1)[:, 1]  # (B, *spatial): the foreground's probability
        with torch.no_grad():
            hard = (prob > 0.5).to(prob.dtype)
            skel_hard = soft_skeleton(hard.unsqueeze(1), self.iterations).squeeze(1)
            distance_pred = _prediction_distance(hard > 0, self.spacing).to(prob.dtype)
        skel_prob = skel_hard * prob

        mask_true = (sdf < 0).to(prob.dtype)
        skel_true = (radius > 0).to(prob.dtype)
        v_l, r_l, s_l = _cb_weights(torch.relu(-sdf).to(prob.dtype), skel_true, ndim)
        q_vl, q_slvl, q_sl = v_l * mask_true, r_l * mask_true, s_l * skel_true
        v_p, r_p, s_p = _cb_weights(distance_pred, (skel_prob > 0.5).to(prob.dtype), ndim)
        q_vp, q_spvp, q_sp = v_p * prob, r_p * prob, s_p * skel_prob

        tprec = ((q_sp * q_vl).sum() + self.smooth) / (_combine(q_spvp, q_slvl, q_sp).sum() + self.smooth)
        tsens = ((q_sl * q_vp).sum() + self.smooth) / (_combine(q_slvl, q_spvp, q_sl).sum() + self.smooth)
        return -2.0 * tprec * tsens / (tprec + tsens)


class BoundaryLoss(nn.Module):
    """The boundary loss: the mean of the probabilities weighted by the signed distance maps.

    Kervadec et al., "Boundary loss for highly unbalanced segmentation", MIDL 2019 and
    Medical Image Analysis 67 (2021); reference code github.com/LIVIAETS/boundary-loss
    (``SurfaceLoss`` on ``one_hot2dist``). For the channels ``classes`` of the
    probabilities ``P`` and their signed distance maps ``phi``::

        loss = mean_{b, k, v} P[b, classes[k], v] · phi[b, k, v]

    ``phi`` is the stored ``sdf`` (:func:`skelprep.targets.signed_distance` of those
    classes: outside, the distance to the class; inside, minus the distance to the
    outside), shifted inside by ``inside_offset``: the reference's map is
    ``-(d - 1)`` inside, 1 subtracted whatever the resolution, so that a class's
    boundary voxels weigh 0. ``inside_offset=0`` takes the sdf as stored.

    A class absent from a case is stored as ``+D`` everywhere (the image diagonal): any
    probability of it costs, where the reference's map for an absent class is 0.

    Parameters
    ----------
    classes : sequence of int, optional
        Channels of the input that ``sdf``'s channels belong to, in order; default every
        foreground channel ``1..C-1`` (the reference's ``idc`` without the background).
    inside_offset : float
        Added to the sdf where it is negative (the reference's 1).
    apply_softmax : bool
        Softmax the input over channels; ``False`` takes probabilities.

    Examples
    --------
    >>> import torch
    >>> sdf = torch.tensor([[[[2.0, 1.0, -1.0, -2.0]]]])        # (B=1, K=1, 1, 4)
    >>> probs = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 1.0]]]])
    >>> BoundaryLoss(apply_softmax=False)(probs, sdf).item()    # (0 + 0 + 0 - 1) / 4
    -0.25
    """

    def __init__(
        self, classes: Sequence[int] | None = None, inside_offset: float = 1.0, apply_softmax: bool = True
    ) -> None:
        super().__init__()
        self.classes = None if classes is None else [int(c) for c in classes]
        self.inside_offset = float(inside_offset)
        self.apply_softmax = apply_softmax

    def forward(self, input: torch.Tensor, sdf: torch.Tensor) -> torch.Tensor:
        """Loss of ``input`` ``(B, C, *spatial)`` against ``sdf`` ``(B, len(classes), *spatial)``."""
        probs, sdf = _class_probs(input, sdf, self.classes, self.apply_softmax)
        phi = torch.where(sdf < 0, sdf + self.inside_offset, sdf) if self.inside_offset else sdf
        return (probs * phi).mean()


def _distance_field(hard: torch.Tensor, spacing: Sequence[float] | None) -> torch.Tensor:
    """Per sample of binary masks ``hard`` ``(B, *spatial)``: the distance to the other side of the mask's
    boundary everywhere (inside to the background, outside to the mask); 0 in a sample whose mask is empty
    or full (no boundary), as MONAI's ``HausdorffDTLoss.distance_field``. An exact EDT on the CPU."""
    from skelprep.targets import distance_inside

    masks = hard.detach().to("cpu", torch.bool).numpy()
    out = np.zeros(masks.shape, np.float32)
    for i, m in enumerate(masks):
        if m.any() and not m.all():
            out[i] = distance_inside(m, spacing=spacing) + distance_inside(~m, spacing=spacing)
    return torch.from_numpy(out).to(hard.device)


class HausdorffDTLoss(nn.Module):
    """The Hausdorff-distance loss from distance transforms, with the ground truth's distances given.

    Karimi and Salcudean, "Reducing the Hausdorff Distance in Medical Image Segmentation
    with Convolutional Neural Networks", IEEE TMI 39 (2020), as MONAI implements it
    (``monai.losses.HausdorffDTLoss``). Per channel ``c`` of ``classes``, with ``p`` its
    probability, ``t`` its ground-truth mask and ``d_p``, ``d_t`` the distance fields of
    the thresholded prediction ``p > 0.5`` and of ``t``::

        loss = mean_{b, c} mean_v (p - t)^2 · (d_p^alpha + d_t^alpha)

    (``batch=True``: the inner mean also over the batch, as MONAI's ``batch``). MONAI runs
    an EDT of both masks every call; here the ground truth's side is the stored ``sdf`` of
    those classes (:func:`skelprep.targets.signed_distance`): ``t = sdf < 0`` and
    ``d_t = |sdf|``, 0 in a sample whose patch holds no boundary of the class (MONAI's
    rule). Only the prediction's field is computed per step (an exact EDT on the CPU,
    under no gradient, as MONAI's). On the whole image, in voxels (``spacing=None``), the
    two are equal; on a patch the stored distances are the case's.

    Parameters
    ----------
    classes : sequence of int, optional
        Channels of the input that ``sdf``'s channels belong to, in order; default every
        foreground channel ``1..C-1`` (MONAI's ``include_background=False``).
    alpha : float
        The distances' exponent (MONAI's default 2).
    apply_softmax : bool
        Softmax the input over channels; ``False`` takes probabilities.
    batch : bool
        Average over the batch before the channels, as MONAI's ``batch=True``.
    spacing : sequence of float, optional
        Voxel size for the prediction's distances: the stored sdf's units (``None``:
        voxels, as MONAI).

    Examples
    --------
    >>> import torch
    >>> sdf = torch.tensor([[[[2.0, 1.0, -1.0, -2.0]]]])        # (B=1, K=1, 1, 4)
    >>> probs = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 1.0]]]])
    >>> HausdorffDTLoss(apply_softmax=False)(probs, sdf).item()  # a perfect prediction
    0.0
    """

    def __init__(
        self,
        classes: Sequence[int] | None = None,
        alpha: float = 2.0,
        apply_softmax: bool = True,
        batch: bool = False,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.classes = None if classes is None else [int(c) for c in classes]
        self.alpha = float(alpha)
        self.apply_softmax = apply_softmax
        self.batch = batch
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def forward(self, input: torch.Tensor, sdf: torch.Tensor) -> torch.Tensor:
        """Loss of ``input`` ``(B, C, *spatial)`` against ``sdf`` ``(B, len(classes), *spatial)``."""
        probs, sdf = _class_probs(input, sdf, self.classes, self.apply_softmax)
        target = (sdf < 0).to(probs.dtype)
        spatial = tuple(range(2, input.ndim))
        inside = target.amax(spatial, keepdim=True) > 0
        outside = target.amin(spatial, keepdim=True) < 1
        d_true = torch.where(inside & outside, sdf.abs(), torch.zeros_like(sdf)).to(probs.dtype)
        with torch.no_grad():
            hard = (probs > 0.5).flatten(0, 1)
            d_pred = _distance_field(hard, self.spacing).view_as(probs).to(probs.dtype)
        weighted = (probs - target) ** 2 * (d_pred**self.alpha + d_true**self.alpha)
        return weighted.mean(dim=(0, *spatial) if self.batch else spatial).mean()
