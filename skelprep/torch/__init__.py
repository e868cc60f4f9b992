"""Torch side of skelprep: a Dataset over a dataset folder and its store, the Skeleton Recall loss, a torch tube op,
and the topology losses (clDice, cbDice, boundary loss, Hausdorff loss) that take stored ground-truth targets.

This subpackage is the only part of skelprep that imports torch; ``import skelprep``
does not import it.

Examples
--------
>>> from skelprep.torch import SkeletonDataset, SkeletonRecallLoss, CompoundLoss, tube
"""

from skelprep.torch.dataset import SkeletonDataset
from skelprep.torch.loss import (
    CompoundLoss,
    DeepSupervisionLoss,
    SkeletonRecallLoss,
    SoftDiceLoss,
    deep_supervision_weights,
    downsample_targets,
)
from skelprep.torch.topology import BoundaryLoss, CbDiceLoss, ClDiceLoss, HausdorffDTLoss, soft_skeleton
from skelprep.torch.tube import tube

__all__ = [
    "SkeletonDataset",
    "SkeletonRecallLoss",
    "SoftDiceLoss",
    "CompoundLoss",
    "DeepSupervisionLoss",
    "deep_supervision_weights",
    "downsample_targets",
    "ClDiceLoss",
    "CbDiceLoss",
    "BoundaryLoss",
    "HausdorffDTLoss",
    "soft_skeleton",
    "tube",
]
