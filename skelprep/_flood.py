"""Which foreground voxels are not connected to any seed voxel (a numba kernel).

Used to find the connected components that thinning deleted whole: a flood fill
from the skeleton through the foreground costs O(foreground), where labelling
every component of a sparse CT-size volume costs O(volume).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["unreached"]


@njit(cache=True, nogil=True)
def _flood(state: np.ndarray, seeds: np.ndarray, offsets: np.ndarray, n_foreground: int) -> int:
    """Mark (1 -> 2) every foreground voxel connected to a seed; return how many were marked."""
    # state: 0 background, 1 foreground not yet reached, 2 reached. The border of
    # the array is background (padding), so no neighbour index leaves it.
    queue = np.empty(n_foreground, dtype=np.int64)
    tail = 0
    for s in seeds:
        if state[s] == 1:
            state[s] = 2
            queue[tail] = s
            tail += 1
    head = 0
    while head < tail:
        v = queue[head]
        head += 1
        for o in offsets:
            w = v + o
            if state[w] == 1:
                state[w] = 2
                queue[tail] = w
                tail += 1
    return tail


def unreached(mask: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, ...]:
    """Coordinates of the voxels of ``mask`` not connected (8 in 2D, 26 in 3D) to a voxel of ``seeds``.

    Parameters
    ----------
    mask, seeds : ndarray of bool
        Same shape; seeds outside ``mask`` are ignored.

    Returns
    -------
    tuple of ndarray
        Index arrays (as from ``np.nonzero``) of the unreached voxels, which form
        whole connected components of ``mask`` without a seed; usually empty.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((5, 7), bool); mask[1, 1:3] = mask[3, 4:6] = True
    >>> seeds = np.zeros_like(mask); seeds[1, 1] = True
    >>> [c.tolist() for c in unreached(mask, seeds)]
    [[3, 3], [4, 5]]
    """
    padded = tuple(n + 2 for n in mask.shape)  # a background border: neighbours never wrap or leave
    state = np.zeros(padded, dtype=np.uint8)
    state[(slice(1, -1),) * mask.ndim] = mask
    seed_index = np.ravel_multi_index(tuple(c + 1 for c in np.nonzero(seeds)), padded)
    strides = np.array([int(np.prod(padded[a + 1 :])) for a in range(mask.ndim)])
    shifts = np.indices((3,) * mask.ndim).reshape(mask.ndim, -1).T - 1
    offsets = (shifts[np.any(shifts != 0, axis=1)] @ strides).astype(np.int64)
    n_foreground = int(np.count_nonzero(mask))
    flat = state.reshape(-1)
    if _flood(flat, seed_index.astype(np.int64), offsets, n_foreground) == n_foreground:
        return tuple(np.empty(0, dtype=np.intp) for _ in mask.shape)
    return tuple(c - 1 for c in np.unravel_index(np.flatnonzero(flat == 1), padded))
