"""Skeleton Recall loss (Kirchhoff et al., ECCV 2024), its compound with Dice + CE, and deep supervision.

All losses take class-id targets ``(B, 1, *spatial)`` (or ``(B, *spatial)``) and
never build a one-hot of the batch: the probability at the target class is
gathered (``p.gather(1, t)``) and the per-class sums are scatter-added into a
``(B, C)`` table, so the extra memory is O(B·N), not O(B·C·N).

:class:`SkeletonRecallLoss` on logits (``apply_softmax=True``, the default)
goes further: a fused autograd function (:class:`_FusedRecallSums`) keeps no
softmax at all. Its forward needs the per-voxel log-sum-exp over the channels
(computed chunk by chunk) and the logit at the target class; its backward
recomputes the softmax straight into the returned gradient. Training memory is
then the gradient of the logits (one ``B·C·N`` buffer, which autograd needs
anyway) plus ``O(B·N)``, against ~3 ``B·C·N`` buffers (saved softmax, grad of
the probabilities, grad of the logits) for ``softmax`` followed by the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SkeletonRecallLoss",
    "SoftDiceLoss",
    "CompoundLoss",
    "DeepSupervisionLoss",
    "class_sums",
    "deep_supervision_weights",
    "downsample_targets",
    "downsample_tube",
]


def _as_index(target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Targets as int64 ``(B, 1, *spatial)`` matching the prediction ``like`` ``(B, C, *spatial)``."""
    if target.ndim == like.ndim - 1:
        target = target.unsqueeze(1)
    if (
        target.ndim != like.ndim
        or target.shape[1] != 1
        or target.shape[2:] != like.shape[2:]
        or target.shape[0] != like.shape[0]
    ):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match prediction {tuple(like.shape)}; "
            "expected class ids (B, 1, *spatial) or (B, *spatial)"
        )
    return target.long()


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32 (softmax and sums in float32 also under autocast); float64 stays."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _valid_mask(
    target: torch.Tensor, ignore_index: int | None, loss_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(target with ignored voxels set to 0, per-voxel weight or None)."""
    weight = None
    if ignore_index is not None:
        keep = target != ignore_index
        target = torch.where(keep, target, torch.zeros_like(target))
        weight = keep
    if loss_mask is not None:
        if loss_mask.ndim == target.ndim - 1:
            loss_mask = loss_mask.unsqueeze(1)
        weight = loss_mask if weight is None else weight * loss_mask
    return target, weight


def class_sums(
    probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums ``sum_v p_c[v]·[t[v] = c]·w[v]`` and ``sum_v [t[v] = c]·w[v]``, without a one-hot.

    Parameters
    ----------
    probs : Tensor
        ``(B, C, *spatial)`` probabilities.
    target : Tensor
        ``(B, 1, *spatial)`` int64 class ids in ``[0, C)``.
    weight : Tensor, optional
        ``(B, 1, *spatial)`` voxel weights (a 0/1 mask excludes voxels).

    Returns
    -------
    intersection, count : Tensor
        Both ``(B, C)``, float32 (or the dtype of ``probs`` if wider).

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([[[0.8, 0.3], [0.2, 0.7]]])       # (B=1, C=2, N=2)
    >>> t = torch.tensor([[[0, 1]]])
    >>> inter, count = class_sums(p, t)
    >>> inter, count
    (tensor([[0.8000, 0.7000]]), tensor([[1., 1.]]))
    """
    _check_classes(target, probs.shape[1])
    dtype = torch.promote_types(probs.dtype, torch.float32)
    picked = probs.gather(1, target).to(dtype)  # p at the target class: (B, 1, *spatial)
    return _sums_at_target(picked, target, weight, probs.shape[1])


def _check_classes(target: torch.Tensor, n_classes: int) -> None:
    if target.numel():
        low, high = (int(v) for v in torch.aminmax(target))  # one pass over the targets
        if low < 0 or high >= n_classes:
            raise ValueError(
                f"target class ids must lie in [0, {n_classes}); found {low}..{high} "
                "(set ignore_index for an ignore label)"
            )


def _sums_at_target(
    picked: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`class_sums` given ``picked`` = the probability at the target class, ``(B, 1, *spatial)``."""
    batch, dtype = picked.shape[0], picked.dtype
    flat_w = None
    if weight is not None:
        weight = weight.to(dtype)
        picked = picked * weight
        flat_w = weight.flatten()
    flat_t = target.flatten(1)
    zeros = torch.zeros(batch, n_classes, dtype=dtype, device=picked.device)
    intersection = zeros.scatter_add(1, flat_t, picked.flatten(1))
    # The counts need no gradient: one bincount over (sample, class) ids.
    ids = (flat_t + n_classes * torch.arange(batch, device=flat_t.device)[:, None]).flatten()
    count = torch.bincount(ids, weights=flat_w, minlength=batch * n_classes).view(batch, n_classes).to(dtype)
    return intersection, count


# Elements (B·C·voxels) per chunk in the fused recall's passes over the logits: a chunk's
# temporaries (float32 for half-precision logits) stay small and cache-resident on CPU (~2^20,
# i.e. 2^15 voxels of (2, 13, *), was fastest on (2, 13, 96^3) with 2 cores), while few classes
# get long chunks (fewer ops). On a GPU larger chunks save kernel launches.
_CHUNK_ELEMENTS = 1 << 20
_CHUNK_ELEMENTS_GPU = 1 << 25


def _chunks(n: int, rows: int, device: torch.device) -> list[slice]:
    """Slices of ``n`` voxels, each covering about ``_CHUNK_ELEMENTS`` elements of ``rows`` (B·C) rows."""
    budget = _CHUNK_ELEMENTS if device.type == "cpu" else max(_CHUNK_ELEMENTS, _CHUNK_ELEMENTS_GPU)
    step = max(1, int(budget) // max(1, rows))
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def _flat_view(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as ``(B, C, N)`` sharing its memory (contiguous or channels-last), or None if impossible."""
    try:
        return t.view(t.shape[0], t.shape[1], -1)
    except RuntimeError:
        return None


class _FusedRecallSums(torch.autograd.Function):
    """Per-class sums of the softmax at the target class, from logits, without keeping the softmax.

    ``inter[b, c] = sum_v [t_v = c] · w_v · p_c[v]`` with ``p = softmax(logits, 1)``, and
    ``count[b, c] = sum_v [t_v = c] · w_v`` (no gradient).

    Forward walks the voxels in chunks: per chunk a log-softmax (a chunk-sized temporary)
    gives ``log p_t`` at the target class, hence the log-sum-exp over the channels
    ``lse = x_t - log p_t`` and ``p_t`` (both ``(B, 1, N)``); the sums are two ``bincount``
    over (sample, class) ids, accumulated in float64. It saves the logits (the caller's tensor, no copy), ``lse``, the
    target and the weights. Backward uses ``d p_t / d x_c = p_t · ([c = t] - p_c)``: with
    ``a[b, v] = dL/dinter[b, t_v] · w_v · p_t`` the gradient is ``a · onehot_t - a · softmax``,
    written chunk by chunk into one buffer of the logits' shape and dtype (softmax recomputed
    from the logits and ``lse``, multiplied by ``-a``, then ``a`` scatter-added at the target
    class), which is returned as the gradient (autograd takes it as ``.grad`` without a copy).
    Peak memory is thus one ``B·C·N`` buffer of the logits' dtype plus ``O(B·N)``.

    Half-precision logits (autocast) are processed in float32 one chunk at a time; no float32
    copy of the whole logits is made. Sums are float32 (float64 for float64 logits). Not twice
    differentiable.
    """

    @staticmethod
    def forward(ctx, logits, target, weight):  # noqa: D102
        batch, n_classes = logits.shape[:2]
        dtype = torch.promote_types(logits.dtype, torch.float32)
        with torch.autocast(logits.device.type, enabled=False):
            x = _flat_view(logits)
            if x is None:  # exotic strides: a (B, C, N) copy of the logits, for this forward only
                x = logits.reshape(batch, n_classes, -1)
            t = target.reshape(batch, 1, -1)
            n = x.shape[2]
            lse = torch.empty(batch, 1, n, dtype=dtype, device=logits.device)
            p_t = torch.empty_like(lse)
            for sl in _chunks(n, batch * n_classes, logits.device):
                xc, tc = x[:, :, sl].to(dtype), t[:, :, sl]
                log_p_t = torch.log_softmax(xc, 1).gather(1, tc)  # one fused pass over the chunk
                torch.sub(xc.gather(1, tc), log_p_t, out=lse[:, :, sl])  # lse = x_t - log p_t
                torch.exp(log_p_t, out=p_t[:, :, sl])
            # The sums: bincount over (sample, class) ids, accumulated in float64.
            ids = (t[:, 0] + n_classes * torch.arange(batch, device=t.device)[:, None]).flatten()
            picked, flat_w = p_t.flatten().double(), None
            if weight is not None:
                flat_w = weight.reshape(-1).double()
                picked = picked.mul_(flat_w)
            size = batch * n_classes
            inter = torch.bincount(ids, weights=picked, minlength=size).view(batch, n_classes).to(dtype)
            count = torch.bincount(ids, weights=flat_w, minlength=size).view(batch, n_classes).to(dtype)
        ctx.save_for_backward(logits, target, weight, lse)
        ctx.mark_non_differentiable(count)
        return inter, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_inter, grad_count):  # noqa: D102
        logits, target, weight, lse = ctx.saved_tensors
        if grad_inter is None or not ctx.needs_input_grad[0]:
            return None, None, None
        batch, n_classes = logits.shape[:2]
        dtype = lse.dtype
        with torch.autocast(logits.device.type, enabled=False):
            x = _flat_view(logits)
            if x is None:
                x = logits.reshape(batch, n_classes, -1)
            t = target.reshape(batch, 1, -1)
            w = None if weight is None else weight.reshape(batch, 1, -1)
            grad_inter = grad_inter.to(dtype)
            grad = torch.empty_like(logits)  # the logits' layout, so that autograd need not copy it
            g = _flat_view(grad)
            if g is None:
                grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
                g = grad.view(batch, n_classes, -1)
            same = dtype == logits.dtype
            for sl in _chunks(x.shape[2], batch * n_classes, logits.device):
                tc = t[:, :, sl]
                if same:  # softmax straight into the gradient buffer
                    buf = torch.sub(x[:, :, sl], lse[:, :, sl], out=g[:, :, sl]).exp_()
                else:  # half precision: a float32 chunk, cast into the gradient at the end
                    buf = x[:, :, sl].to(dtype).sub_(lse[:, :, sl]).exp_()
                # a = dL/dinter[b, t_v] · w_v · p_t, then grad = -a · softmax + a at the target
                a = grad_inter.gather(1, tc[:, 0]).unsqueeze(1).mul_(buf.gather(1, tc))
                if w is not None:
                    a.mul_(w[:, :, sl])
                buf.mul_(a.neg()).scatter_add_(1, tc, a)
                if not same:
                    g[:, :, sl].copy_(buf)
        return grad, None, None


class _PerClassRatioLoss(nn.Module):
    """Shared settings of the per-class ratio losses (Skeleton Recall, soft Dice)."""

    def __init__(
        self,
        apply_softmax: bool = True,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.apply_softmax = apply_softmax
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.ignore_index = ignore_index


class SkeletonRecallLoss(_PerClassRatioLoss):
    """Soft recall of the tubed skeleton, negated (the Skeleton Recall loss).

    For every foreground class ``c`` (channel 0, the background, is excluded)::

        recall_c = (sum_v p_c[v] · T_c[v] + smooth) / (sum_v T_c[v] + smooth),   T_c = (tube == c)

    with the sums over the spatial axes of each sample; the loss is
    ``-mean(recall)`` over batch and classes. With ``batch_dice=True`` the sums
    also run over the batch before the mean over classes. This is the reference
    ``SoftSkeletonRecallLoss`` of nnU-Net's Skeleton Recall fork, computed
    without a one-hot target.

    On logits (``apply_softmax=True``) this is the memory-lean path: a fused
    autograd function that keeps no softmax (only a per-voxel log-sum-exp),
    so forward + backward peak at about one ``B·C·N`` buffer (the gradient of
    the logits) plus ``O(B·N)``, against ~3 ``B·C·N`` for softmax followed by
    the loss. Half-precision logits (autocast) are processed in float32 chunk
    by chunk, without a float32 copy of the whole logits. A ``loss_mask``
    that requires grad falls back to softmax + gather.

    Parameters
    ----------
    apply_softmax : bool
        Softmax the input over channels (fused, see above). Pass ``False`` to
        give probabilities (e.g. those already computed for the Dice term);
        then the probability at the target class is gathered, and memory is
        the caller's softmax and its gradient.
    batch_dice : bool
        Sum over the batch too (nnU-Net's ``batch_dice``).
    smooth : float
        Added to numerator and denominator; a class absent from the tube gives
        recall 1 (no penalty).
    ignore_index : int, optional
        Tube value whose voxels contribute to neither sum.

    Examples
    --------
    >>> import torch
    >>> logits = torch.zeros(1, 2, 4, 4)
    >>> logits[:, 1] = 10.0                      # confident foreground everywhere
    >>> tube = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    >>> tube[..., 1, :] = 1
    >>> round(SkeletonRecallLoss()(logits, tube).item(), 4)
    -1.0
    """

    def forward(
        self, input: torch.Tensor, tube: torch.Tensor, loss_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of predictions ``input`` ``(B, C, *spatial)`` against ``tube`` class ids.

        ``loss_mask`` ``(B, 1, *spatial)``: voxels where it is 0 contribute nothing.
        """
        tube = _as_index(tube, input)
        tube, weight = _valid_mask(tube, self.ignore_index, loss_mask)
        if self.apply_softmax and not (weight is not None and weight.requires_grad):
            _check_classes(tube, input.shape[1])
            inter, count = _FusedRecallSums.apply(input, tube, weight)
        else:  # probabilities given (or a differentiable mask): softmax + gather
            probs = torch.softmax(_upcast(input), 1) if self.apply_softmax else input
            inter, count = class_sums(probs, tube, weight)
        inter, count = inter[:, 1:], count[:, 1:]
        if self.batch_dice:
            inter, count = inter.sum(0), count.sum(0)
        recall = (inter + self.smooth) / torch.clamp(count + self.smooth, min=1e-8)
        return -recall.mean()


class SoftDiceLoss(_PerClassRatioLoss):
    """nnU-Net's memory-efficient soft Dice, negated, background excluded.

    Per foreground class: ``(2·sum p_c·Y_c + smooth) / (sum p_c + sum Y_c + smooth)``
    with ``Y_c = (label == c)``, mean over batch and classes (``batch_dice``:
    sums over the batch first).

    Examples
    --------
    >>> import torch
    >>> probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])      # (B=1, C=2, N=2)
    >>> label = torch.tensor([[[0, 1]]])
    >>> SoftDiceLoss(apply_softmax=False)(probs, label).item()
    -1.0
    """

    def forward(
        self, input: torch.Tensor, label: torch.Tensor, loss_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        label = _as_index(label, input)
        probs = torch.softmax(_upcast(input), 1) if self.apply_softmax else input
        label, weight = _valid_mask(label, self.ignore_index, loss_mask)
        inter, count = class_sums(probs, label, weight)
        axes = tuple(range(2, probs.ndim))
        dtype = inter.dtype
        pred_sum = (
            (probs.to(dtype) * weight.to(dtype)).sum(axes)
            if weight is not None
            else probs.to(dtype).sum(axes)
        )
        inter, count, pred_sum = inter[:, 1:], count[:, 1:], pred_sum[:, 1:]
        if self.batch_dice:
            inter, count, pred_sum = inter.sum(0), count.sum(0), pred_sum.sum(0)
        dice = (2 * inter + self.smooth) / torch.clamp(pred_sum + count + self.smooth, min=1e-8)
        return -dice.mean()


class CompoundLoss(nn.Module):
    """Soft Dice + cross-entropy + ``recall_weight`` · Skeleton Recall, sharing one softmax.

    ``total = dice_weight · Dice + ce_weight · CE + recall_weight · SkeletonRecall``
    (nnU-Net's ``DC_SkelREC_and_CE_loss``; ``recall_weight=0`` is the plain
    Dice + CE baseline and skips the recall term). With ``ignore_index`` the
    voxels whose *label* has that value are excluded from all three terms.

    The softmax is computed once and kept for Dice's backward (Dice needs
    ``sum_v p_c`` over every class), so the recall term here uses the probabilities
    (gather path, ``O(B·N)`` extra) rather than the fused logits path of a
    standalone :class:`SkeletonRecallLoss`; the compound's peak is set by the
    shared softmax, Dice and cross-entropy, not by the recall term.

    Examples
    --------
    >>> import torch
    >>> loss = CompoundLoss(recall_weight=1.0)
    >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    >>> label = torch.randint(0, 3, (2, 1, 8, 8))
    >>> tube = label * (torch.rand(2, 1, 8, 8) > 0.5)
    >>> terms = loss.terms(logits, label, tube)
    >>> sorted(terms)
    ['ce', 'dice', 'recall', 'total']
    >>> loss(logits, label, tube).backward()
    """

    def __init__(
        self,
        recall_weight: float = 1.0,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.recall_weight = recall_weight
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self.dice = SoftDiceLoss(apply_softmax=False, batch_dice=batch_dice, smooth=smooth)
        self.recall = SkeletonRecallLoss(apply_softmax=False, batch_dice=batch_dice, smooth=smooth)

    def terms(self, logits: torch.Tensor, label: torch.Tensor, tube: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three terms and their weighted ``total``, as a dict of scalars."""
        label = _as_index(label, logits)
        tube = _as_index(tube, logits)
        logits = _upcast(logits)
        mask = None
        if self.ignore_index is not None:
            mask = label != self.ignore_index
            label = torch.where(mask, label, torch.zeros_like(label))
            tube = torch.where(mask, tube, torch.zeros_like(tube))
        probs = torch.softmax(logits, 1)
        out = {"dice": self.dice(probs, label, mask)}
        ce_target = label[:, 0] if mask is None else torch.where(mask[:, 0], label[:, 0], -100)
        out["ce"] = F.cross_entropy(logits, ce_target, ignore_index=-100)
        total = self.dice_weight * out["dice"] + self.ce_weight * out["ce"]
        if self.recall_weight:
            out["recall"] = self.recall(probs, tube, mask)
            total = total + self.recall_weight * out["recall"]
        else:
            out["recall"] = torch.zeros((), device=logits.device)
        out["total"] = total
        return out

    def forward(self, logits: torch.Tensor, label: torch.Tensor, tube: torch.Tensor) -> torch.Tensor:
        return self.terms(logits, label, tube)["total"]


def deep_supervision_weights(n_outputs: int, drop_lowest: bool = True) -> list[float]:
    """nnU-Net's weights: ``1 / 2**i`` for output ``i``, the lowest resolution set to 0, normalized.

    Examples
    --------
    >>> [round(w, 4) for w in deep_supervision_weights(4)]
    [0.5714, 0.2857, 0.1429, 0.0]
    """
    weights = [1.0 / 2**i for i in range(n_outputs)]
    if drop_lowest and n_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_targets(
    label: torch.Tensor, tube: torch.Tensor, size: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets at a lower resolution: the label by nearest neighbour, the tube by max-pooling.

    Max-pooling keeps every skeleton: a low-resolution voxel is in the tube when
    any voxel it covers is (nearest-neighbour sampling would break thin tubes
    into dashes). Multi-class tubes keep the largest class id of the window.

    Examples
    --------
    >>> import torch
    >>> tube = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    >>> tube[0, 0, 1, 1] = 1
    >>> downsample_targets(tube, tube, (2, 2))[1][0, 0]
    tensor([[1, 0],
            [0, 0]])
    """
    size = tuple(int(s) for s in size)
    if tuple(label.shape[2:]) == size:
        return label, tube
    small_label = F.interpolate(label.float(), size=size, mode="nearest").to(label.dtype)
    return small_label, downsample_tube(tube, size)


def downsample_tube(tube: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A ``(B, C, *spatial)`` tube max-pooled to ``size``: every tube voxel keeps its low-resolution cell.

    Examples
    --------
    >>> import torch
    >>> tube = torch.zeros(1, 1, 4, 4, dtype=torch.int16)
    >>> tube[0, 0, 3, 0] = 2
    >>> downsample_tube(tube, (2, 2))[0, 0]
    tensor([[0, 0],
            [2, 0]], dtype=torch.int16)
    """
    size = tuple(int(s) for s in size)
    if tuple(tube.shape[2:]) == size:
        return tube
    pool = {2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}[len(size)]
    return pool(tube.float(), size).to(tube.dtype)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a loss over the outputs of a deep-supervised network.

    The reference Skeleton Recall code applies its loss to the full-resolution
    output only and silently drops the auxiliary outputs. Here every output
    ``i`` (full resolution first, then decreasing) gets the loss against targets
    resized to its size (:func:`downsample_targets`: label nearest, tube
    max-pooled), weighted as nnU-Net does (:func:`deep_supervision_weights`);
    outputs with weight 0 are not evaluated.

    Parameters
    ----------
    loss : nn.Module
        Called as ``loss(output, label, tube)``, e.g. :class:`CompoundLoss`.
    weights : sequence of float, optional
        One per output; default nnU-Net's for the number of outputs given.
    drop_lowest : bool
        With the default weights: give the lowest-resolution output weight 0.

    Examples
    --------
    >>> import torch
    >>> ds = DeepSupervisionLoss(CompoundLoss())
    >>> outputs = [torch.randn(1, 2, 16, 16), torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)]
    >>> label = torch.randint(0, 2, (1, 1, 16, 16))
    >>> float(ds(outputs, label, label)) > -3
    True
    """

    def __init__(
        self, loss: nn.Module, weights: Sequence[float] | None = None, drop_lowest: bool = True
    ) -> None:
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]
        self.drop_lowest = drop_lowest

    def forward(
        self, outputs: Sequence[torch.Tensor] | torch.Tensor, label: torch.Tensor, tube: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        weights = self.weights or deep_supervision_weights(len(outputs), self.drop_lowest)
        if len(weights) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs but {len(weights)} weights")
        label = _as_index(label, outputs[0])
        tube = _as_index(tube, outputs[0])
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for output, weight in zip(outputs, weights, strict=True):
            if weight == 0:
                continue
            small_label, small_tube = downsample_targets(label, tube, output.shape[2:])
            total = total + weight * self.loss(output, small_label, small_tube)
        return total
