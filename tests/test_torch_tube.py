"""The torch tube op equals skelprep.skeleton.tube_from_thin voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skelprep.skeleton import skeleton_targets, tube_from_thin
from skelprep.torch.tube import tube


def _random_case(shape, seed, n_classes=4, density=0.03):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=shape).astype(np.uint8)
    thin = np.where(rng.random(shape) < density, rng.integers(1, n_classes, size=shape), 0).astype(np.uint8)
    return thin, labels


@pytest.mark.parametrize("shape", [(23, 31), (11, 13, 17)])
@pytest.mark.parametrize("radius", [0, 1, 2, 3])
@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_torch_tube_equals_numpy(shape, radius, with_labels, seed):
    thin, labels = _random_case(shape, seed)
    expected = tube_from_thin(thin, radius, labels if with_labels else None)
    got = tube(torch.from_numpy(thin), radius, torch.from_numpy(labels) if with_labels else None)
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("shape", [(19, 21), (9, 10, 11)])
@pytest.mark.parametrize("with_labels", [False, True])
def test_batched_equals_per_sample(shape, with_labels):
    cases = [_random_case(shape, seed, n_classes=300, density=0.05) for seed in range(3)]
    thin = torch.from_numpy(np.stack([t for t, _ in cases])[:, None].astype(np.int64))
    labels = torch.from_numpy(np.stack([lab for _, lab in cases])[:, None].astype(np.int64))
    got = tube(thin, 2, labels if with_labels else None)
    assert got.shape == thin.shape and got.dtype == torch.int64
    for i, (t, lab) in enumerate(cases):
        expected = tube_from_thin(t.astype(np.int64), 2, lab.astype(np.int64) if with_labels else None)
        np.testing.assert_array_equal(got[i, 0].numpy(), expected)


@pytest.mark.parametrize("shape", [(40, 40), (16, 20, 24)])
def test_reproduces_stored_recipe(shape):
    """Tubing the thin skeleton of a real recipe gives the recipe's tube (what an augmented pipeline relies on)."""
    rng = np.random.default_rng(3)
    labels = np.zeros(shape, np.uint8)
    centre = tuple(s // 2 for s in shape)
    labels[tuple(slice(c - 4, c + 4) for c in centre)] = 1
    labels[tuple(slice(2, 6) for _ in shape)] = 2
    labels[rng.random(shape) < 0.01] = 3
    targets = skeleton_targets(labels)
    got = tube(torch.from_numpy(targets.thin), 2, torch.from_numpy(labels))
    np.testing.assert_array_equal(got.numpy(), targets.tube)


def test_bool_and_errors():
    thin = np.zeros((7, 7), bool)
    thin[3, 3] = True
    got = tube(torch.from_numpy(thin), 3)
    assert got.dtype == torch.bool
    np.testing.assert_array_equal(got.numpy(), tube_from_thin(thin, 3))
    assert int(got.sum()) == 25  # the L1 ball of radius 3 in 2D: 2r(r+1)+1
    with pytest.raises(ValueError, match="radius"):
        tube(torch.from_numpy(thin), -1)
    with pytest.raises(ValueError, match="labels shape"):
        tube(torch.from_numpy(thin), 1, torch.zeros(3, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="thin_labels must be"):
        tube(torch.zeros(5), 1)
