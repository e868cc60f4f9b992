# From github.com/LIVIAETS/boundary-loss at commit 171c32d88a4ce59af8be46fb88b96d3637b9515b:
# utils.py (one_hot2dist) and losses.py (SurfaceLoss). Copyright (c) 2023 Hoel Kervadec.
# MIT License: see licenses/boundary-loss-MIT.txt.
# Changes: np.bool (removed from numpy) is bool; the input assertions (simplex, one_hot) and the print in
# SurfaceLoss.__init__ are left out; typing imports added.
# ruff: noqa
from typing import List, Tuple

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt as eucl_distance
from torch import Tensor, einsum


def one_hot2dist(seg: np.ndarray, resolution: Tuple[float, float, float] = None,
                 dtype=None) -> np.ndarray:
    K: int = len(seg)

    res = np.zeros_like(seg, dtype=dtype)
    for k in range(K):
        posmask = seg[k].astype(bool)

        if posmask.any():
            negmask = ~posmask
            res[k] = eucl_distance(negmask, sampling=resolution) * negmask \
                - (eucl_distance(posmask, sampling=resolution) - 1) * posmask
        # The idea is to leave blank the negative classes
        # since this is one-hot encoded, another class will supervise that pixel

    return res


class SurfaceLoss():
    def __init__(self, **kwargs):
        # Self.idc is used to filter out some classes of the target mask. Use fancy indexing
        self.idc: List[int] = kwargs["idc"]

    def __call__(self, probs: Tensor, dist_maps: Tensor) -> Tensor:
        pc = probs[:, self.idc, ...].type(torch.float32)
        dc = dist_maps[:, self.idc, ...].type(torch.float32)

        multipled = einsum("bkwh,bkwh->bkwh", pc, dc)

        loss = multipled.mean()

        return loss
