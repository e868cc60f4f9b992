"""batchgeneratorsv2 transforms for a segmentation whose last channel is the precomputed tube.

nnU-Net's training pipeline treats every seg channel alike: the spatial transform warps each channel with
the same grid (per-label bilinear argmax), mirroring flips all channels and ``RemoveLabel(-1 -> 0)`` clears
the padding of all channels, so a tube carried as an extra seg channel stays aligned with image and labels.
Only the deep-supervision downsampling is changed here: :class:`DownsampleSegAndTubeForDSTransform` keeps
nnU-Net's ``nearest-exact`` for the segmentation channels and max-pools the tube, so a thin tube stays
connected at 1/8 resolution instead of breaking into the dashes that sampling one voxel in eight leaves.
"""

from __future__ import annotations

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

from skelprep.torch.loss import downsample_tube

__all__ = ["DownsampleSegAndTubeForDSTransform", "with_tube_downsampling"]


class DownsampleSegAndTubeForDSTransform(DownsampleSegForDSTransform):
    """nnU-Net's deep-supervision downsampling for the segmentation channels; max-pooling for the last (tube)."""

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> list[torch.Tensor]:
        levels = super()._apply_to_segmentation(segmentation[:-1], **params)
        tube = segmentation[-1:]
        return [torch.cat((level, downsample_tube(tube[None], level.shape[1:])[0])) for level in levels]


def with_tube_downsampling(transforms: BasicTransform) -> BasicTransform:
    """nnU-Net's composed pipeline with its ``DownsampleSegForDSTransform`` replaced (same scales)."""
    if not isinstance(transforms, ComposeTransforms):
        raise TypeError(f"expected nnU-Net's ComposeTransforms, got {type(transforms).__name__}")
    transforms.transforms = [
        DownsampleSegAndTubeForDSTransform(t.ds_scales) if type(t) is DownsampleSegForDSTransform else t
        for t in transforms.transforms
    ]
    return transforms
