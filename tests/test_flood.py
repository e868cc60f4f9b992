"""The flood fill that finds components without a skeleton."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from skelprep._flood import unreached


def test_doctest_example():
    mask = np.zeros((5, 7), bool)
    mask[1, 1:3] = mask[3, 4:6] = True
    seeds = np.zeros_like(mask)
    seeds[1, 1] = True
    assert [c.tolist() for c in unreached(mask, seeds)] == [[3, 3], [4, 5]]


@pytest.mark.parametrize("seed", range(40))
def test_unreached_equals_components_without_seeds(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 14, size=2 + seed % 2))
    mask = rng.random(shape) < rng.uniform(0.1, 0.6)
    seeds = mask & (rng.random(shape) < 0.05)
    labels, _ = ndi.label(mask, structure=np.ones((3,) * mask.ndim))
    expected = mask & ~np.isin(labels, np.unique(labels[seeds]))
    found = np.zeros_like(mask)
    found[unreached(mask, seeds)] = True
    np.testing.assert_array_equal(found, expected)


def test_touching_the_border_and_no_seeds():
    mask = np.ones((4, 5, 6), bool)
    assert unreached(mask, np.zeros_like(mask))[0].size == mask.size
    seeds = np.zeros_like(mask)
    seeds[-1, -1, -1] = True
    assert unreached(mask, seeds)[0].size == 0
