"""nnU-Net's Dice + CE plus ``w`` · Skeleton Recall, on targets that carry the tube as their last channel.

The trainer's targets are ``(B, 2, *spatial)`` per deep-supervision level: channel 0 the segmentation as
nnU-Net prepares it, channel 1 the precomputed tube that rode through the same augmentation. nnU-Net's
``DeepSupervisionWrapper`` calls this loss once per level (with weight > 0), so the recall term is trained
at every level, not only at full resolution as in the official fork.

Dice + CE is nnU-Net's own ``DC_and_CE_loss`` (``MemoryEfficientSoftDiceLoss``, ``RobustCrossEntropyLoss``,
its ignore-label handling); the recall term is :class:`skelprep.torch.SkeletonRecallLoss` on the logits
(fused softmax, no one-hot), background excluded, with nnU-Net's ``batch_dice`` and ``smooth=1e-5`` as the
official ``SoftSkeletonRecallLoss``. Voxels with the ignore label are excluded from the recall term too.
Under DDP with ``batch_dice`` the recall sums cover each GPU's batch (nnU-Net's Dice all-gathers them).
"""

from __future__ import annotations

import torch
from torch import nn

from skelprep.torch.loss import SkeletonRecallLoss

__all__ = ["DiceCERecallLoss", "split_tube"]


def split_tube(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(segmentation channels, tube)`` of a ``(B, C + 1, *spatial)`` target whose last channel is the tube."""
    if target.ndim < 4 or target.shape[1] < 2:
        raise ValueError(
            f"target of shape {tuple(target.shape)} has no tube channel; "
            "expected (B, 2, *spatial): segmentation and precomputed tube"
        )
    return target[:, :-1], target[:, -1:]


class DiceCERecallLoss(nn.Module):
    """``dice_ce(output, target[:, :1]) + recall_weight · SkeletonRecall(output, target[:, 1:2])``.

    Parameters
    ----------
    dice_ce : nn.Module
        nnU-Net's ``DC_and_CE_loss`` (called with the segmentation channel only).
    recall_weight : float
        Weight ``w`` of the recall term; 0 trains plain Dice + CE (the tube is then unused).
    batch_dice : bool
        nnU-Net's ``batch_dice`` of the configuration: recall sums over the batch too.
    ignore_label : int, optional
        nnU-Net's ignore label: its voxels count in no term.
    smooth : float
        Smoothing of the recall ratio (nnU-Net's 1e-5).
    """

    def __init__(
        self,
        dice_ce: nn.Module,
        recall_weight: float = 1.0,
        *,
        batch_dice: bool = False,
        ignore_label: int | None = None,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        self.dice_ce = dice_ce
        self.recall_weight = float(recall_weight)
        self.ignore_label = ignore_label
        self.recall = SkeletonRecallLoss(apply_softmax=True, batch_dice=batch_dice, smooth=smooth)

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seg, tube = split_tube(target)
        total = self.dice_ce(net_output, seg)
        if self.recall_weight:
            mask = None if self.ignore_label is None else seg != self.ignore_label
            if mask is not None:
                tube = torch.where(mask, tube, torch.zeros_like(tube))
            total = total + self.recall_weight * self.recall(net_output, tube, loss_mask=mask)
        return total
