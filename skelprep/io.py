"""Read masks and images (PNG, NIfTI, TIFF) with their geometry, and validate them.

Every problem with an input file raises :class:`InputError`, whose message names
the file and the reason in one line.

Files may be local paths or URLs (``s3://bucket/raw/case_1.nii.gz``; see
:mod:`skelprep._fs`): a URL's file is hashed as a stream and read from a
temporary local copy, and its errors name the URL.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import math
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from skelprep._fs import RemotePath, as_path, fetch, filesystem
from skelprep._util import first_line, printable

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "InputError",
    "Volume",
    "Header",
    "MASK_SUFFIXES",
    "IMAGE_SUFFIXES",
    "split_suffix",
    "read_mask",
    "read_image",
    "file_sha256",
    "read_bytes",
    "check_input_file",
    "local_file",
    "image_shape",
    "image_header",
    "MAX_LABEL",
    "MAX_VOXELS",
]

MASK_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".png", ".tif", ".tiff")
IMAGE_SUFFIXES: tuple[str, ...] = MASK_SUFFIXES + (".jpg", ".jpeg")
MAX_LABEL = 65535  # labels are stored as uint8 or uint16
# Larger headers are corrupt or hostile (a few bytes can declare terabytes); no real mask comes near.
MAX_VOXELS = 1 << 31


class InputError(ValueError):
    """An input file that cannot be used; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{printable(self.path)}: {printable(reason)}")


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


@dataclass(frozen=True)
class Header:
    """What a file's header declares, read before any pixel data are decoded.

    Attributes
    ----------
    shape : tuple of int
        Spatial shape, as :func:`image_shape` gives it.
    dtype : numpy.dtype
        Of the samples as stored (a scaled NIfTI's before its slope and intercept).
    samples : int
        Values per pixel: colour channels of a PNG, JPEG or TIFF (1 for grey).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    samples: int = 1

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded samples."""
        return math.prod(self.shape) * self.samples * self.dtype.itemsize


# ``before_decode`` of the readers: a reason to refuse the file (InputError), or None to decode it.
BeforeDecode = Callable[[Header], "str | None"]


def _before_decode(path: Path, check: BeforeDecode | None, header: Header) -> None:
    problem = check(header) if check is not None else None
    if problem:
        raise InputError(path, problem)


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


_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _kind_problem(mode: int) -> str | None:
    """Why a file of this ``st_mode`` cannot be an input; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    return f"is {_FILE_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a regular file"


def _remote_problem(exc: OSError) -> str:
    """The reason, in words, that a URL's file cannot be read."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return f"permission denied ({first_line(exc)})"
    return f"cannot read ({first_line(exc, with_type=True)})"


def _check_remote_file(path: RemotePath) -> dict:
    """``check_input_file`` for a URL: one request for the object's metadata."""
    try:
        fs, remote = filesystem(path)
        info = fs.info(remote)
    except OSError as exc:
        raise InputError(path, _remote_problem(exc)) from exc
    except Exception as exc:  # fsspec: unknown protocol; botocore: no credentials, no endpoint, ...
        raise InputError(path, f"cannot open ({first_line(exc, with_type=True)})") from exc
    if info.get("type") == "directory":
        raise InputError(path, "is a folder, not a file")
    if info.get("size") == 0:
        raise InputError(path, "file is empty")
    return info


def check_input_file(path: str | os.PathLike | RemotePath) -> os.stat_result | dict:
    """Check that ``path`` is a readable, non-empty regular file, without reading it.

    Never blocks: a FIFO named like a mask is rejected before anything opens it.

    Returns
    -------
    os.stat_result, or the fsspec info dict for a URL

    Raises
    ------
    InputError
        Missing file, dangling symlink, symlink loop, folder, FIFO/socket/device,
        empty file, or no permission to read.
    """
    if isinstance(as_path(path), RemotePath):
        return _check_remote_file(as_path(path))
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "symbolic link loop"
        elif exc.errno == errno.ENOENT and os.path.islink(path):
            reason = f"dangling symbolic link (its target {os.readlink(path)} does not exist)"
        elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
            reason = "file not found"
        elif exc.errno == errno.EACCES:
            reason = "permission denied"
        else:
            reason = f"cannot access ({exc.strerror or exc})"
        raise InputError(path, reason) from exc
    problem = _kind_problem(st.st_mode)
    if problem:
        raise InputError(path, problem)
    if st.st_size == 0:
        raise InputError(path, "file is empty")
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        reason = "permission denied" if exc.errno == errno.EACCES else f"cannot open ({exc.strerror or exc})"
        raise InputError(path, reason) from exc
    return st


def _remote_sha256(path: RemotePath) -> str:
    """SHA-256 of a URL's bytes, streamed (never held whole in memory)."""
    digest = hashlib.sha256()
    _check_remote_file(path)
    try:
        fs, remote = filesystem(path)
        with fs.open(remote, "rb", block_size=1 << 22) as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    except OSError as exc:
        raise InputError(path, _remote_problem(exc)) from exc
    return digest.hexdigest()


@contextlib.contextmanager
def local_file(path: str | os.PathLike | RemotePath) -> Iterator[Path]:
    """The file itself for a local path; a temporary copy for a URL, whose errors name the URL.

    Use it to read a URL's file several times (hash and decode) with one download.
    """
    path = as_path(path)
    if not isinstance(path, RemotePath):
        yield path
        return
    _check_remote_file(path)
    with tempfile.TemporaryDirectory(prefix="skelprep-") as folder:
        try:
            local = fetch(path, folder)
        except OSError as exc:
            raise InputError(path, _remote_problem(exc)) from exc
        try:
            yield local
        except InputError as exc:
            if exc.path != str(local):
                raise
            raise InputError(path, exc.reason) from exc


def file_sha256(path: str | os.PathLike | RemotePath) -> str:
    """SHA-256 of a file's bytes, as hex.

    Raises
    ------
    InputError
        The file cannot be read, or is not a regular file (a FIFO would block).
    """
    if isinstance(as_path(path), RemotePath):
        return _remote_sha256(as_path(path))
    return _read_file(path, keep=False)[1]


def read_bytes(path: str | os.PathLike | RemotePath) -> tuple[bytes, str]:
    """A file's bytes and their SHA-256 (hex), in one read.

    A build hashes a mask (its fingerprint) and decodes it: reading it once
    saves the second read. A URL is read through its temporary local copy.

    Raises
    ------
    InputError
        As :func:`file_sha256`.
    """
    if isinstance(as_path(path), RemotePath):
        with local_file(path) as local:
            return _read_file(local, keep=True)
    return _read_file(path, keep=True)


def _read_file(path: str | os.PathLike, *, keep: bool) -> tuple[bytes, str]:
    digest = hashlib.sha256()
    blocks: list[bytes] = []
    try:
        # O_NONBLOCK: opening a FIFO must not hang the build; it is rejected below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        check_input_file(path)  # raises with the precise reason (loop, dangling link, ...)
        raise InputError(path, f"cannot open ({exc.strerror or exc})") from exc
    problem = _kind_problem(os.fstat(fd).st_mode)
    if problem:
        os.close(fd)
        raise InputError(path, problem)
    with os.fdopen(fd, "rb") as f:
        try:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)  # releases the GIL: other cases go on meanwhile
                if keep:
                    blocks.append(block)
        except OSError as exc:
            raise InputError(path, f"read error ({exc.strerror or exc})") from exc
    return (blocks[0] if len(blocks) == 1 else b"".join(blocks)), digest.hexdigest()


# PIL names the stream it read in some messages: "cannot identify image file <_io.BytesIO object at 0x7f..>"
_STREAM_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")


def _pil_reason(exc: BaseException) -> str:
    """PIL's error in one line, without the repr of the stream (the file is named by InputError)."""
    return _STREAM_REPR.sub("", first_line(exc, with_type=True))


def _one_file(as_mask: bool) -> str:
    return "a mask file" if as_mask else "an image file"


def _pillow_header(path: Path | RemotePath, img, *, as_mask: bool) -> Header:
    """The header of an opened PIL image; a multi-frame PNG (APNG) is refused, not read as its first frame."""
    import numpy as np
    from PIL import ImageMode

    frames = getattr(img, "n_frames", 1)
    if img.format == "PNG" and frames > 1:
        raise InputError(path, f"has {frames} frames (animated PNG); {_one_file(as_mask)} holds one image")
    mode = ImageMode.getmode(img.mode)
    width, height = img.size
    return Header((height, width), np.dtype(mode.typestr), len(mode.bands))


def _read_pillow(
    path: Path, raw: bytes, *, as_mask: bool, before_decode: BeforeDecode | None = None
) -> Volume:
    """A PNG mask or image, or a JPEG image, decoded by Pillow."""
    import numpy as np
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as img:
                _before_decode(path, before_decode, _pillow_header(path, img, as_mask=as_mask))
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
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # PIL raises many types: OSError, SyntaxError, DecompressionBombError, ...
        raise InputError(path, f"cannot read image ({_pil_reason(exc)})") from exc
    if array.ndim == 3:
        if as_mask:
            array = _colour_to_labels(path, array, alpha=mode in ("RGBA", "LA"), what=mode)
        else:
            if mode in ("RGBA", "LA"):  # alpha is no image channel
                array = array[..., :-1]
            array = np.moveaxis(array, -1, 0)
    elif not as_mask:
        array = array[np.newaxis]
    return Volume(np.ascontiguousarray(array), spacing=(1.0, 1.0), axes="yx")


def _colour_to_labels(path: Path, array: np.ndarray, *, alpha: bool, what: str) -> np.ndarray:
    """A label map from a colour mask whose channels are equal (samples on the last axis)."""
    colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
    if alpha and array[..., -1].min() != array[..., -1].max():
        raise InputError(path, "mask has a varying alpha channel")
    if not (colour == colour[..., :1]).all():
        raise InputError(
            path,
            f"colour mask with distinct channels ({what}); save label maps as grayscale or palette images",
        )
    return colour[..., 0]


def _check_voxels(path: Path, shape: tuple[int, ...]) -> None:
    if math.prod(shape) > MAX_VOXELS:
        raise InputError(
            path, f"header declares shape {tuple(shape)}, more than {MAX_VOXELS} voxels (corrupt file?)"
        )


# isal's igzip inflates a .nii.gz about 2x faster than zlib; the ``fast`` extra brings it, zlib (same API,
# same checks) is the fallback.
try:
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover - depends on the extras installed
    import zlib as _inflate

_GZIP_SLACK = 1 << 20  # a gzip stream may hold this much beyond the voxels its header declares


def _nifti_header(path: Path, head: bytes):
    """The NIfTI-1 or NIfTI-2 header at the start of ``head`` (nibabel's checks applied)."""
    import nibabel as nib

    size = int.from_bytes(head[:4], "little")
    if size not in (348, 540):
        size = int.from_bytes(head[:4], "big")
    kind = {348: nib.Nifti1Header, 540: nib.nifti2.Nifti2Header}.get(size)
    if kind is None or len(head) < size:
        raise InputError(path, "cannot read NIfTI (no NIfTI-1 or NIfTI-2 header)")
    return kind.from_fileobj(io.BytesIO(head[:size]))


def _declared_bytes(path: Path, header) -> int:
    """Bytes of header + voxels the header declares; rejects absurd shapes before any allocation."""
    shape = header.get_data_shape()
    _check_voxels(path, shape)
    return int(header.get_data_offset()) + math.prod(shape) * header.get_data_dtype().itemsize


def _gunzip_nifti(path: Path, raw: bytes, declared: int) -> bytes:
    """Inflate a .nii.gz in one pass, checking every member's CRC-32 and length.

    ``declared``: the bytes of header and voxels its header declares (read from the
    stream's first bytes, :func:`_nifti_header`), so that a stream holding more (a
    gzip bomb) is stopped at that size plus a MiB. nibabel alone stops where the
    voxels end and never checks the gzip trailer: a corrupted stream would be read
    as wrong labels.
    """
    limit = declared + _GZIP_SLACK
    parts: list[bytes] = []
    total, rest = 0, raw
    while rest:
        d = _inflate.decompressobj(31)
        block = d.decompress(rest, limit - total + 1)  # one call, one buffer: no join for one member
        total += len(block)
        if total > limit:
            raise InputError(
                path, f"gzip stream holds more than the {limit - _GZIP_SLACK} bytes its header declares"
            )
        parts.append(block)
        if not d.eof:
            raise InputError(path, "cannot read NIfTI (gzip stream truncated: no end-of-stream trailer)")
        rest = d.unused_data
        if rest and not rest.startswith(b"\x1f\x8b"):
            if rest.strip(b"\x00"):
                raise InputError(path, "cannot read NIfTI (data after the end of the gzip stream)")
            break  # zero padding after the last member, as gzip tolerates
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _check_geometry(path: Path, header) -> None:
    """Refuse a header whose spacing or affine is NaN or infinite: no geometry can be recorded from it.

    Zero or negative spacing never gets here: nibabel's header check reads pixdim 0 as 1 and a
    negative pixdim as its absolute value, as NIfTI readers do for files of legacy writers.
    """
    import numpy as np

    kept = len(_squeezed(tuple(header.get_data_shape())))  # the axes the volume keeps
    zooms = tuple(float(z) for z in header.get_zooms()[:kept])
    if not all(math.isfinite(z) for z in zooms):
        raise InputError(path, f"NIfTI header pixdim has NaN or infinite spacing {zooms}")
    if not np.isfinite(header.get_best_affine()).all():
        raise InputError(path, "NIfTI header affine (sform/qform) is not finite (NaN or infinite values)")


def _read_nifti(path: Path, raw: bytes, before_decode: BeforeDecode | None = None) -> Volume:
    """Decode a NIfTI file from its bytes (``raw``: the file as stored, gzip-compressed or not)."""
    import nibabel as nib
    import numpy as np

    try:
        gzipped = split_suffix(path.name)[1].lower() == ".nii.gz"
        # The header only (a few hundred bytes, inflated first for a .nii.gz): checked before any voxel
        head = _inflate.decompressobj(31).decompress(raw, 540) if gzipped else raw
        header = _nifti_header(path, head)
        expected = _declared_bytes(path, header)
        _check_geometry(path, header)
        shape = _squeezed(tuple(int(n) for n in header.get_data_shape()))
        _before_decode(path, before_decode, Header(shape, header.get_data_dtype()))
        if gzipped:
            raw = _gunzip_nifti(path, raw, expected)
        if len(raw) < expected:
            raise InputError(
                path, f"cannot read NIfTI (file holds {len(raw)} bytes, its header declares {expected})"
            )
        slope, inter = header.get_slope_inter()
        if slope in (None, 1.0) and inter in (None, 0.0):  # the voxels as stored: a view, no copy
            array = np.frombuffer(
                raw,
                header.get_data_dtype(),
                math.prod(header.get_data_shape()),
                int(header.get_data_offset()),
            ).reshape(header.get_data_shape(), order="F")
        else:  # scaled data: nibabel applies slope and intercept
            array = np.asanyarray(
                nib.Nifti1Image.from_bytes(raw).dataobj
                if header.sizeof_hdr == 348
                else nib.Nifti2Image.from_bytes(raw).dataobj
            )
        zooms = tuple(float(z) for z in header.get_zooms())
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # nibabel and zlib raise many types for broken files
        raise InputError(path, f"cannot read NIfTI ({first_line(exc, with_type=True)})") from exc
    return Volume(array, spacing=zooms, affine=affine, axes="ijkt"[: array.ndim])


def _tiff_series(
    path: Path | RemotePath,
    *,
    data: bool,
    source=None,
    as_mask: bool = False,
    before_decode: BeforeDecode | None = None,
) -> tuple[np.ndarray | None, Header, str]:
    """(array or None, header, tifffile axes) of a TIFF's one series; samples (RGB) axis last.

    ``source`` is an open binary stream to read instead of ``path`` (which errors name).
    A TIFF of several series (pages of different shapes, or stacks written one by
    one) is refused, not read as its first.
    """
    import numpy as np
    import tifffile

    # tifffile logs a warning before raising on a broken file; without a handler Python would
    # print it to stderr, beside our one-line error. Configured logging still receives it.
    logger = logging.getLogger("tifffile")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    try:
        with tifffile.TiffFile(path if source is None else source) as tif:
            if len(tif.series) > 1:
                n = len(tif.series)
                raise InputError(
                    path, f"has {n} image series; {_one_file(as_mask)} holds one image or one stack"
                )
            series = tif.series[0]
            shape, axes = tuple(series.shape), series.axes
            _check_voxels(path, shape)
            k = axes.find("S")  # colour samples: moved last, as PIL gives them
            header = (
                Header(shape, series.dtype)
                if k < 0
                else Header(shape[:k] + shape[k + 1 :], series.dtype, shape[k])
            )
            _before_decode(path, before_decode, header)
            array = series.asarray() if data else None
    except (InputError, MemoryError):
        raise
    except Exception as exc:
        raise InputError(path, f"cannot read TIFF ({first_line(exc, with_type=True)})") from exc
    if k >= 0:
        axes = axes[:k] + axes[k + 1 :] + "S"
        if array is not None:
            array = np.moveaxis(array, k, -1)
    return array, header, axes


def _read_tiff(path: Path, raw: bytes, *, as_mask: bool, before_decode: BeforeDecode | None = None) -> Volume:
    import numpy as np

    array, _, axes = _tiff_series(
        path, data=True, source=io.BytesIO(raw), as_mask=as_mask, before_decode=before_decode
    )
    if axes.endswith("S"):
        if as_mask:
            array = _colour_to_labels(
                path, array, alpha=array.shape[-1] in (2, 4), what=f"TIFF, {array.shape[-1]} samples"
            )
        else:
            # channel-first with 2D axes, as a colour PNG: read_image adds no channel axis
            return Volume(
                np.ascontiguousarray(np.moveaxis(array, -1, 0)), spacing=(1.0,) * (array.ndim - 1), axes="yx"
            )
    spatial = "zyx" if array.ndim == 3 else "yx"
    return Volume(array, spacing=(1.0,) * array.ndim, axes=spatial)


def _file_suffix_only(path: Path | RemotePath, *, as_mask: bool) -> str:
    """The file's known suffix (lower case); InputError if it names no supported type."""
    _, suffix = split_suffix(path.name)
    suffix = suffix.lower()
    if not suffix or (as_mask and suffix not in MASK_SUFFIXES):
        allowed = ", ".join(MASK_SUFFIXES if as_mask else IMAGE_SUFFIXES)
        raise InputError(path, f"unsupported file type (expected one of {allowed})")
    return suffix


def _file_suffix(path: Path, *, as_mask: bool) -> str:
    """The file's known suffix (lower case) after checking it is a readable regular file."""
    suffix = _file_suffix_only(path, as_mask=as_mask)
    check_input_file(path)
    return suffix


def _read_any(
    path: str | os.PathLike | RemotePath,
    *,
    as_mask: bool,
    raw: bytes | None = None,
    before_decode: BeforeDecode | None = None,
) -> Volume:
    """Decode a file (``raw``: its bytes, when already read)."""
    path = as_path(path)
    if isinstance(path, RemotePath):
        _file_suffix_only(path, as_mask=as_mask)  # no download for an unsupported type
        with local_file(path) as local:
            return _read_any(local, as_mask=as_mask, raw=raw, before_decode=before_decode)
    suffix = _file_suffix(path, as_mask=as_mask)
    if raw is None:
        raw = read_bytes(path)[0]
    if suffix in (".png", ".jpg", ".jpeg"):
        return _read_pillow(path, raw, as_mask=as_mask, before_decode=before_decode)
    if suffix in (".nii", ".nii.gz"):
        return _read_nifti(path, raw, before_decode)
    return _read_tiff(path, raw, as_mask=as_mask, before_decode=before_decode)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def image_shape(path: str | os.PathLike | RemotePath) -> tuple[int, ...]:
    """Spatial shape of an image, from its header only (no pixel data are decoded).

    The shape is the one :func:`read_image` gives after its channel axis, and the
    one :func:`read_mask` gives for a mask of the same geometry: PNG/JPEG
    ``(rows, columns)``; NIfTI the header's shape without trailing singleton
    axes; TIFF the series without its colour-samples axis.

    Raises
    ------
    InputError
        The file is missing, unreadable, or its header is broken.
    """
    return image_header(path).shape


def image_header(path: str | os.PathLike | RemotePath) -> Header:
    """Shape (as :func:`image_shape`), dtype and samples per pixel of a file, from its header only.

    Raises
    ------
    InputError
        As :func:`image_shape`.
    """
    path = as_path(path)
    if not isinstance(path, RemotePath):
        return _header_shape(path, _file_suffix(path, as_mask=False), path)
    suffix = _file_suffix_only(path, as_mask=False)
    _check_remote_file(path)
    try:
        fs, remote = filesystem(path)
        # Range reads in 64 KiB blocks: the header's blocks are fetched, not the pixel data
        # (a 512^3 float32 image would be 512 MB to download for 352 bytes of NIfTI header).
        with fs.open(remote, "rb", block_size=1 << 16, cache_type="readahead") as stream:
            return _header_shape(stream, suffix, path)
    except OSError as exc:
        raise InputError(path, _remote_problem(exc)) from exc


def _header_shape(source, suffix: str, path: Path | RemotePath) -> Header:
    """:func:`image_header` of a local path or an open binary stream; errors name ``path``."""
    if suffix in (".nii", ".nii.gz"):
        import gzip

        import nibabel as nib

        try:
            if isinstance(source, Path):
                header = nib.load(source).header
            else:
                stream = gzip.GzipFile(fileobj=source) if suffix == ".nii.gz" else source
                try:
                    header = nib.Nifti1Image.from_stream(stream).header
                except Exception:  # not NIfTI-1: the same bytes as NIfTI-2
                    source.seek(0)
                    stream = gzip.GzipFile(fileobj=source) if suffix == ".nii.gz" else source
                    header = nib.Nifti2Image.from_stream(stream).header
            shape = tuple(int(n) for n in header.get_data_shape())
            dtype = header.get_data_dtype()
        except Exception as exc:  # nibabel raises many types for broken headers
            raise InputError(path, f"cannot read NIfTI header ({first_line(exc, with_type=True)})") from exc
        return Header(_squeezed(shape), dtype)
    if suffix in (".tif", ".tiff"):
        return _tiff_series(path, data=False, source=source)[1]
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                return _pillow_header(path, img, as_mask=False)
    except InputError:
        raise
    except Exception as exc:  # PIL raises many types for broken headers
        raise InputError(path, f"cannot read image header ({_pil_reason(exc)})") from exc


def _squeeze_nifti(vol: Volume) -> Volume:
    """Drop trailing singleton axes of NIfTI data ((x, y, z, 1) -> 3D, (x, y, 1) -> 2D)."""
    array = vol.array
    if vol.axes.startswith("ij"):
        array = array.reshape(_squeezed(array.shape))
    return Volume(array, vol.spacing[: array.ndim], vol.affine, vol.axes[: array.ndim], vol.label_remap)


def _c_order(array: np.ndarray, dtype: np.dtype, block: int = 32) -> np.ndarray:
    """``np.ascontiguousarray(array, dtype)``, fast for NIfTI's Fortran-ordered volumes.

    A plain copy of a Fortran-ordered volume into C order strides across the
    whole array for every element; copying block x all x block slabs keeps both
    sides in cache (about 4x faster on a 256x512x512 uint8 volume), and casts on
    the way.
    """
    import numpy as np

    if array.flags.c_contiguous or array.ndim != 3:
        return np.ascontiguousarray(array, dtype=dtype)
    out = np.empty(array.shape, dtype=dtype)
    for i in range(0, array.shape[0], block):
        for k in range(0, array.shape[2], block):
            out[i : i + block, :, k : k + block] = array[i : i + block, :, k : k + block]
    return out


def read_mask(
    path: str | os.PathLike | RemotePath,
    *,
    raw: bytes | None = None,
    before_decode: BeforeDecode | None = None,
) -> Volume:
    """Read a label map and check that it is one.

    ``raw``: the file's bytes if already read (see :func:`read_bytes`), so that
    a build hashes and decodes a mask from one read. ``before_decode`` is called
    with the file's :class:`Header` once it is read and before any pixel data
    are decoded; a reason it returns refuses the file (a build checks there that
    the case fits in memory).

    Accepts PNG (8/16-bit grayscale, palette, RGB(A) with equal channels), NIfTI
    (2D or 3D; trailing singleton axes dropped) and TIFF. Float data are
    accepted only if every value is a whole number. A binary mask stored as
    0/255 becomes 0/1, recorded in ``label_remap``. A NIfTI pixdim of 0 is read
    as spacing 1 and a negative one as its absolute value (nibabel's reading of
    legacy headers).

    Raises
    ------
    InputError
        Unreadable file, unsupported type, wrong dimensionality, NaN,
        fractional or negative values, labels above 65535, a NaN or infinite
        spacing or affine, several frames (APNG) or image series (TIFF).
    """
    import numpy as np

    path = as_path(path)
    vol = _squeeze_nifti(_read_any(path, as_mask=True, raw=raw, before_decode=before_decode))
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
    array = _c_order(array, dtype)
    remap: dict[int, int] = {}
    if high == 255:
        # Only 0 and 255 (no negatives, checked above) iff every non-zero voxel is 255: two
        # counts and a compare, an order of magnitude cheaper than np.isin.
        ones = array == 255
        if np.count_nonzero(ones) == np.count_nonzero(array):
            array, remap = ones.view(np.uint8), {255: 1}  # a bool array's bytes are its 0/1 labels
    if not array.flags.writeable:  # a view of the file's bytes (NIfTI read without a copy)
        array = array.copy()
    return Volume(array, vol.spacing, vol.affine, vol.axes, remap)


def read_image(path: str | os.PathLike | RemotePath) -> Volume:
    """Read an image channel-first: ``(C, *spatial)``.

    Grayscale PNG/TIFF/NIfTI give one channel, RGB(A) PNG/JPEG three.

    Raises
    ------
    InputError
        Unreadable file, unsupported type, wrong dimensionality, a dtype that
        is not a real number (complex, structured/RGB NIfTI, ...), or as
        :func:`read_mask` for geometry, frames and series.
    """
    import numpy as np

    path = as_path(path)
    vol = _read_any(path, as_mask=False)
    if vol.array.dtype.kind not in "biuf":
        raise InputError(path, f"unsupported image dtype {vol.array.dtype} (expected integers or floats)")
    if vol.axes != "yx" or vol.array.ndim == 2:  # PNG/JPEG arrive channel-first already
        vol = _squeeze_nifti(vol)
        # C order, as read_mask gives masks: statistics and the store's writes then read memory in order
        array = _c_order(vol.array, vol.array.dtype)
        vol = Volume(array[np.newaxis], vol.spacing, vol.affine, vol.axes)
    if vol.array.ndim not in (3, 4):
        raise InputError(path, f"image must be 2D or 3D, got shape {vol.array.shape[1:]}")
    if not vol.array.flags.writeable:  # a view of the file's bytes (NIfTI): callers may write to it
        vol = Volume(vol.array.copy(), vol.spacing, vol.affine, vol.axes)
    return vol
