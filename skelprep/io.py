"""Read masks and images (PNG, NIfTI, TIFF) with their geometry, and validate them.

Every problem with an input file raises :class:`InputError`, whose message names
the file and the reason in one line.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "InputError",
    "Volume",
    "MASK_SUFFIXES",
    "IMAGE_SUFFIXES",
    "split_suffix",
    "read_mask",
    "read_image",
    "file_sha256",
    "MAX_LABEL",
]

MASK_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".png", ".tif", ".tiff")
IMAGE_SUFFIXES: tuple[str, ...] = MASK_SUFFIXES + (".jpg", ".jpeg")
MAX_LABEL = 65535  # labels are stored as uint8 or uint16


class InputError(ValueError):
    """An input file that cannot be used; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class Volume:
    """An array read from disk with its geometry.

    Attributes
    ----------
    array : ndarray
        Masks: the label map (spatial axes only). Images: channel-first
        ``(C, *spatial)``.
    spacing : tuple of float
        Voxel size along each spatial axis (1.0 where the format has none).
    affine : ndarray or None
        4x4 voxel-to-world matrix (NIfTI only).
    axes : str
        Names of the spatial axes in array order: ``"yx"`` (PNG), ``"ijk"``
        (NIfTI, nibabel's order), ``"zyx"`` (TIFF stacks).
    label_remap : dict
        Masks only: values that were renamed on reading, e.g. ``{255: 1}`` for
        binary masks saved as 0/255.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None = None
    axes: str = ""
    label_remap: dict[int, int] = field(default_factory=dict)


def split_suffix(path: str | os.PathLike, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> tuple[str, str]:
    """Split a file name into (stem, known suffix); the suffix is '' if unknown.

    >>> split_suffix("case_001.nii.gz")
    ('case_001', '.nii.gz')
    """
    name = os.fspath(path)
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix):
            return name[: -len(suffix)], name[len(name) - len(suffix) :]
    return name, ""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_png(path: Path, *, as_mask: bool) -> Volume:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                mode = img.mode
                if mode == "P":
                    # Palette PNGs store class indices; the palette is only for display.
                    array = np.asarray(img)
                elif mode in ("I;16", "I;16B", "I;16L", "I"):
                    array = np.asarray(img)
                    if array.dtype.kind == "i" and array.size and array.min() >= 0:
                        array = array.astype(np.uint32 if array.max() > 65535 else np.uint16)
                else:
                    array = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise InputError(path, f"cannot read image ({_first_line(exc)})") from None
    if array.ndim == 3:
        if as_mask:
            colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
            if mode in ("RGBA", "LA") and array[..., -1].min() != array[..., -1].max():
                raise InputError(path, "mask has a varying alpha channel")
            if not (colour == colour[..., :1]).all():
                raise InputError(path, f"colour mask with distinct channels ({mode}); save label maps as grayscale or palette PNG")
            array = colour[..., 0]
        else:
            array = np.moveaxis(array[..., :3] if mode == "RGBA" else array, -1, 0)
    elif not as_mask:
        array = array[np.newaxis]
    return Volume(np.ascontiguousarray(array), spacing=(1.0, 1.0), axes="yx")


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(path)
        array = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms())
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(path, f"cannot read NIfTI ({_first_line(exc)})") from None
    return Volume(array, spacing=zooms, affine=affine, axes="ijkt"[: array.ndim])


def _read_tiff(path: Path) -> Volume:
    import tifffile

    try:
        array = tifffile.imread(path)
    except Exception as exc:
        raise InputError(path, f"cannot read TIFF ({_first_line(exc)})") from None
    axes = "zyx" if array.ndim == 3 else "yx"
    return Volume(array, spacing=(1.0,) * array.ndim, axes=axes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _read_any(path: str | os.PathLike, *, as_mask: bool) -> Volume:
    path = Path(path)
    _, suffix = split_suffix(path.name)
    suffix = suffix.lower()
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise InputError(path, "permission denied")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    if suffix in (".png", ".jpg", ".jpeg") and not (as_mask and suffix != ".png"):
        return _read_png(path, as_mask=as_mask)
    if suffix in (".nii", ".nii.gz"):
        return _read_nifti(path)
    if suffix in (".tif", ".tiff"):
        return _read_tiff(path)
    allowed = ", ".join(MASK_SUFFIXES if as_mask else IMAGE_SUFFIXES)
    raise InputError(path, f"unsupported file type (expected one of {allowed})")


def _squeeze_nifti(vol: Volume) -> Volume:
    """Drop trailing singleton axes of NIfTI data ((x, y, z, 1) -> 3D, (x, y, 1) -> 2D)."""
    array = vol.array
    if vol.axes.startswith("ij"):
        while array.ndim > 2 and array.shape[-1] == 1:
            array = array[..., 0]
    return Volume(array, vol.spacing[: array.ndim], vol.affine, vol.axes[: array.ndim], vol.label_remap)


def read_mask(path: str | os.PathLike) -> Volume:
    """Read a label map and check that it is one.

    Accepts PNG (8/16-bit grayscale, palette, RGB(A) with equal channels), NIfTI
    (2D or 3D; trailing singleton axes dropped) and TIFF. Float data are
    accepted only if every value is a whole number. A binary mask stored as
    0/255 becomes 0/1, recorded in ``label_remap``.

    Raises
    ------
    InputError
        Unreadable file, unsupported type, wrong dimensionality, NaN,
        fractional or negative values, labels above 65535.
    """
    path = Path(path)
    vol = _squeeze_nifti(_read_any(path, as_mask=True))
    array = vol.array
    if array.ndim not in (2, 3):
        raise InputError(path, f"mask must be 2D or 3D, got shape {array.shape}")
    if min(array.shape) < 1:
        raise InputError(path, f"mask is empty, shape {array.shape}")
    if array.dtype == bool:
        array = array.view(np.uint8)
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InputError(path, "mask contains NaN or infinite values")
        if not (array == np.round(array)).all():
            raise InputError(path, "mask has fractional values (a probability map?); labels must be integers")
    elif array.dtype.kind not in "iu":
        raise InputError(path, f"unsupported mask dtype {array.dtype}")
    low, high = (array.min(), array.max()) if array.size else (0, 0)
    if low < 0:
        raise InputError(path, f"mask has negative labels (minimum {low})")
    if high > MAX_LABEL:
        raise InputError(path, f"label value {high} exceeds {MAX_LABEL}")
    dtype = np.uint8 if high <= 255 else np.uint16
    array = np.ascontiguousarray(array.astype(dtype, copy=False))
    remap: dict[int, int] = {}
    if high == 255 and np.isin(array, (0, 255)).all():
        array = (array == 255).astype(np.uint8)
        remap = {255: 1}
    return Volume(array, vol.spacing, vol.affine, vol.axes, remap)


def read_image(path: str | os.PathLike) -> Volume:
    """Read an image channel-first: ``(C, *spatial)``.

    Grayscale PNG/TIFF/NIfTI give one channel, RGB(A) PNG/JPEG three.
    """
    path = Path(path)
    vol = _read_any(path, as_mask=False)
    if vol.axes != "yx" or vol.array.ndim == 2:  # PNG/JPEG arrive channel-first already
        vol = _squeeze_nifti(vol)
        vol = Volume(vol.array[np.newaxis], vol.spacing, vol.affine, vol.axes)
    if vol.array.ndim not in (3, 4):
        raise InputError(path, f"image must be 2D or 3D, got shape {vol.array.shape[1:]}")
    return vol
