"""Render a case for a person to look at: the mask in grey, the tube in colour, the thin skeleton in white.

Pure numpy: returns an RGB array; the CLI writes it as PNG.
"""

from __future__ import annotations

import numpy as np

__all__ = ["render_preview", "PALETTE"]

# Distinct colours for classes 1, 2, ... (class k uses PALETTE[(k - 1) % len]).
PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
    ],
    dtype=np.uint8,
)


def _project(array: np.ndarray, axis: int) -> np.ndarray:
    return array.max(axis=axis) if array.ndim == 3 else array


def render_preview(
    tube: np.ndarray,
    thin: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    axis: int = 0,
) -> np.ndarray:
    """Overlay of mask, tube and thin skeleton as an RGB image.

    3D inputs are shown as maximum projections along ``axis``.

    Parameters
    ----------
    tube : ndarray
        Labelled tube (2D or 3D).
    thin : ndarray, optional
        Labelled thin skeleton, drawn in white on top.
    mask : ndarray, optional
        The label map, drawn in grey underneath.
    axis : int
        Projection axis for 3D inputs.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)

    Examples
    --------
    >>> import numpy as np
    >>> tube = np.zeros((4, 5), np.uint8); tube[1, 1:4] = 2
    >>> render_preview(tube)[1, 2].tolist()
    [60, 180, 75]
    """
    tube2 = _project(np.asarray(tube), axis)
    rgb = np.zeros(tube2.shape + (3,), dtype=np.uint8)
    if mask is not None:
        rgb[_project(np.asarray(mask) > 0, axis)] = 70
    hit = tube2 > 0
    rgb[hit] = PALETTE[(tube2[hit].astype(np.int64) - 1) % len(PALETTE)]
    if thin is not None:
        rgb[_project(np.asarray(thin) > 0, axis)] = 255
    return rgb
