"""Render a case for a person to look at: the image underneath, mask classes tinted, tubes in colour, the
thin skeleton in white, and a legend naming the classes.

:func:`render_preview` is pure numpy (an RGB array of one view); :func:`with_legend` draws the legend band
below a picture with Pillow (which the CLI uses to write the PNG anyway). 3D cases are shown as a maximum
projection along an axis, or as one slice normal to it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from skelprep.store.format import CLASS_COLOURS

__all__ = ["render_preview", "with_legend", "class_colour", "PALETTE"]

# Distinct colours for classes 1, 2, ... (class k uses PALETTE[(k - 1) % len]), as viewers show the store.
PALETTE = np.array(CLASS_COLOURS, dtype=np.uint8)
MASK_ALPHA, TUBE_ALPHA = (
    0.35,
    0.9,
)  # a class's mask is a tint of its colour; its tube nearly the colour itself


def class_colour(label: int) -> np.ndarray:
    """The RGB colour of class ``label`` (>= 1)."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def _view(array: np.ndarray, axis: int, index: int | None, ndim: int) -> np.ndarray:
    """The 2D view of a label map or of one image channel: as is (2D), a slice or the max projection (3D)."""
    if array.ndim < 3 or ndim == 2:
        return array
    if index is None:
        return array.max(axis=axis)
    return np.take(array, index, axis=axis)


def _grey(image: np.ndarray, axis: int, index: int | None, ndim: int) -> np.ndarray:
    """The image as float RGB in [0, 1]: three channels as colour, otherwise the first one in grey.

    Intensities are stretched between the 1st and 99th percentile (CT, MRI and 16-bit images included).
    """
    channels = image if image.shape[0] == 3 else image[:1]
    views = np.stack([_view(c, axis, index, ndim).astype(np.float32) for c in channels], axis=-1)
    finite = views[np.isfinite(views)]
    low, high = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
    grey = np.clip((views - low) / max(high - low, 1e-6), 0, 1)
    grey = np.nan_to_num(grey)
    return np.repeat(grey, 3, axis=-1) if grey.shape[-1] == 1 else grey


def render_preview(
    tube: np.ndarray,
    thin: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    image: np.ndarray | None = None,
    axis: int = 0,
    slice_index: int | None = None,
) -> np.ndarray:
    """Overlay of image, mask, tube and thin skeleton as an RGB image.

    Parameters
    ----------
    tube : ndarray
        Labelled tube (2D or 3D), drawn in its class colours.
    thin : ndarray, optional
        Labelled thin skeleton, drawn in white on top.
    mask : ndarray, optional
        The label map: each class tinted with its colour.
    image : ndarray, optional
        The channel-first image ``(C, *spatial)`` underneath (RGB if it has 3 channels, else its first channel
        in grey); without it the background is black.
    axis : int
        3D only: the axis projected along, or normal to the slice.
    slice_index : int, optional
        3D only: show this slice along ``axis`` instead of the maximum projection (which shows the image's
        maximum projection, or the mask where there is no image, under the thin skeleton only).

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)

    Examples
    --------
    >>> import numpy as np
    >>> tube = np.zeros((4, 5), np.uint8); tube[1, 1:4] = 2
    >>> render_preview(tube)[1, 2].tolist() == [round(0.9 * c) for c in class_colour(2)]
    True
    """
    tube = np.asarray(tube)
    ndim = tube.ndim
    if slice_index is not None and ndim == 3 and not 0 <= slice_index < tube.shape[axis]:
        raise IndexError(f"slice {slice_index} outside 0..{tube.shape[axis] - 1} along axis {axis}")
    tube2 = _view(tube, axis, slice_index, ndim)
    rgb = (
        _grey(np.asarray(image), axis, slice_index, ndim)
        if image is not None
        else np.zeros(tube2.shape + (3,), np.float32)
    )

    def tint(labels: np.ndarray, alpha: float) -> None:
        for label in np.unique(labels[labels > 0]):
            where = labels == label
            rgb[where] = (1 - alpha) * rgb[where] + alpha * class_colour(label) / 255.0

    projection = ndim == 3 and slice_index is None
    # Projected, a dense mask covers most of the picture and the tube covers the mask: the image's
    # maximum projection (or, without an image, the mask) under the skeleton shows the structures.
    if mask is not None and not (projection and image is not None):
        # the projection of a label map keeps the highest label on each ray
        tint(_view(np.asarray(mask), axis, slice_index, ndim), MASK_ALPHA)
    if not projection:
        tint(tube2, TUBE_ALPHA)
    if thin is not None:
        rgb[_view(np.asarray(thin) > 0, axis, slice_index, ndim)] = 1.0
    return np.round(rgb * 255).astype(np.uint8)


def with_legend(
    picture: np.ndarray,
    labels: list[int],
    names: Mapping[int, str] | None = None,
    title: str = "",
) -> np.ndarray:
    """``picture`` with a legend band below: a swatch and the name of each class, and what white means.

    ``names`` maps labels to class names (a store's ``label_names``); a class without one shows its number.
    """
    from PIL import Image, ImageDraw, ImageFont

    names = dict(names or {})
    font = ImageFont.load_default(size=14)
    entries = [(class_colour(label), f"{label} {names.get(label, '')}".strip()) for label in labels]
    entries.append((np.array([255, 255, 255], np.uint8), "thin skeleton"))
    notes = ["tint: mask, full colour: tube", *([title] if title else [])]
    width = picture.shape[1]
    row_height, x, rows, y = 20, 6, 1, 0
    layout = []
    for colour, text in entries:
        text_width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font))
        if x + 18 + text_width > width and x > 6:
            x, rows = 6, rows + 1
        layout.append((x, (rows - 1) * row_height, colour, text))
        x += 18 + text_width + 14
    band = Image.new("RGB", (width, (rows + len(notes)) * row_height + 6), (24, 24, 24))
    draw = ImageDraw.Draw(band)
    for x, y, colour, text in layout:
        draw.rectangle([x, y + 5, x + 12, y + 17], fill=tuple(int(c) for c in colour))
        draw.text((x + 18, y + 3), text, fill=(230, 230, 230), font=font)
    for i, note in enumerate(notes):
        draw.text((6, (rows + i) * row_height + 3), note, fill=(170, 170, 170), font=font)
    return np.concatenate([picture, np.asarray(band)], axis=0)
