"""What a patch sampler needs, computed once at build time: intensity statistics and class locations.

Pure numpy functions, no I/O. :mod:`skelprep.build` calls them per case and
stores their results beside the targets (store format 2, see
``docs/store-format.md``); :mod:`skelprep.torch.dataset` normalizes patches
with them, so that a training item never reads a whole image.

* :func:`channel_statistics`: per channel of a channel-first image, mean and
  standard deviation over all (finite) voxels, and over the foreground: mean,
  standard deviation, 0.5 and 99.5 percentiles (what nnU-Net's CT
  normalization uses).
* :func:`foreground_sample`: a bounded, seeded sample of foreground
  intensities per channel, from which :func:`dataset_statistics` pools the
  dataset-level percentiles as nnU-Net does (each case contributes up to
  10 000 voxels).
* :func:`class_locations`: per class a bounded, seeded random sample of voxel
  coordinates (nnU-Net keeps 10 000 per class in ``class_locations``).
* :func:`zscore` and :func:`ct_normalize`: the normalizations, applied to a patch.

Samples are drawn from generators seeded by :func:`seed_from_fingerprint`, so a
rebuild of the same files stores the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_LOCATIONS",
    "MAX_INTENSITY_SAMPLES",
    "StatisticsError",
    "seed_from_fingerprint",
    "channel_statistics",
    "foreground_sample",
    "class_locations",
    "dataset_statistics",
    "zscore",
    "ct_normalize",
]

# nnU-Net keeps 10 000 locations per class and samples 10 000 foreground intensities per case.
MAX_LOCATIONS = 10_000
MAX_INTENSITY_SAMPLES = 10_000
# Moments are accumulated over slabs of about this many voxels: a float64 copy of a whole
# 512x512x300 CT would take 630 MB, a slab 32 MB.
_SLAB_VOXELS = 1 << 22


class StatisticsError(ValueError):
    """A channel whose statistics cannot normalize it (no finite voxel, or constant).

    ``channel`` is the channel's index, so that the caller can name its file.
    """

    def __init__(self, channel: int, reason: str) -> None:
        self.channel = channel
        self.reason = reason
        super().__init__(f"channel {channel}: {reason}")


def seed_from_fingerprint(fingerprint: str, stream: int = 0) -> np.random.Generator:
    """A generator seeded from a hex fingerprint (the case's mask SHA-256) and a stream number.

    >>> a = seed_from_fingerprint("ab" * 32).integers(1000)
    >>> b = seed_from_fingerprint("ab" * 32).integers(1000)
    >>> bool(a == b)
    True
    """
    return np.random.default_rng([int(fingerprint[:16], 16), stream])


def _integer_moments(flat: np.ndarray) -> tuple[int, float, float, float, float]:
    """Exact (count, mean, M2, min, max) of 8- and 16-bit integers: integer sums, no float copy.

    About 4x faster than the float64 path, and no float copy of the volume.
    """
    square = np.uint32 if flat.dtype == np.uint16 else np.int32  # x*x fits: |x| <= 2**16
    total, squares = 0, 0
    for start in range(0, flat.size, _SLAB_VOXELS):
        block = flat[start : start + _SLAB_VOXELS]
        total += int(block.sum(dtype=np.int64))
        wide = block.astype(square)
        squares += int(np.multiply(wide, wide, out=wide).sum(dtype=np.int64))
    n = flat.size
    m2 = (squares * n - total * total) / n  # Python integers: exact up to the final division
    return n, total / n, float(m2), float(flat.min()), float(flat.max())


def _moments(channel: np.ndarray) -> tuple[int, float, float, float, float]:
    """(finite count, mean, M2, min, max) over the finite voxels, in float64 slabs (Chan's combination)."""
    flat = channel.reshape(-1)
    if flat.dtype.kind in "iub" and flat.dtype.itemsize <= 2 and flat.size:
        return _integer_moments(flat.view(np.uint8) if flat.dtype == bool else flat)
    n, mean, m2 = 0, 0.0, 0.0
    low, high = math.inf, -math.inf
    check_finite = channel.dtype.kind == "f"
    for start in range(0, flat.size, _SLAB_VOXELS):
        block = flat[start : start + _SLAB_VOXELS].astype(np.float64)
        if check_finite and not np.isfinite(block).all():
            block = block[np.isfinite(block)]
        k = block.size
        if k == 0:
            continue
        # Sum and sum of squares (a BLAS dot) per slab: one pass over the slab instead of three;
        # within a slab of 4M CT intensities the cancellation costs under 1e-9 of the variance.
        total_ = float(block.sum())
        bmean = total_ / k
        bm2 = max(float(np.dot(block, block)) - total_ * bmean, 0.0)
        delta = bmean - mean
        total = n + k
        mean += delta * k / total
        m2 += bm2 + delta * delta * n * k / total
        n = total
        low, high = min(low, float(block.min())), max(high, float(block.max()))
    return n, mean, m2, low, high


def channel_statistics(image: np.ndarray, foreground: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Intensity statistics of each channel of a channel-first image.

    Parameters
    ----------
    image : ndarray, shape (C, *spatial)
        Any real dtype. Non-finite voxels (NaN, inf) are left out of every statistic.
    foreground : ndarray of bool, shape spatial, optional
        The foreground (``label > 0``); without it, or when it is empty, the
        ``fg_*`` entries are None.

    Returns
    -------
    list of dict
        One per channel: ``voxels`` (finite voxels), ``mean``, ``std``, ``min``,
        ``max``, ``fg_voxels``, ``fg_mean``, ``fg_std``, ``fg_p00_5``, ``fg_p99_5``
        (Python floats and ints, JSON-ready).

    Raises
    ------
    StatisticsError
        A channel without a finite voxel, or constant (standard deviation 0:
        z-scoring would divide by zero).

    Examples
    --------
    >>> import numpy as np
    >>> image = np.array([[[0, 2], [4, 6]]], np.int16)
    >>> s = channel_statistics(image, image[0] > 1)[0]
    >>> s["mean"], round(s["std"], 4), s["fg_voxels"], s["fg_mean"]
    (3.0, 2.2361, 3, 4.0)
    >>> channel_statistics(np.ones((1, 2, 2)))
    Traceback (most recent call last):
    ...
    skelprep.stats.StatisticsError: channel 0: constant channel (every voxel is 1); it cannot be normalized
    """
    if image.ndim < 2:
        raise ValueError(f"image must be channel-first (C, *spatial), got shape {image.shape}")
    if foreground is not None and foreground.shape != image.shape[1:]:
        raise ValueError(f"foreground shape {foreground.shape} differs from image shape {image.shape[1:]}")
    stats = []
    for c, channel in enumerate(image):
        n, mean, m2, low, high = _moments(channel)
        if n == 0:
            raise StatisticsError(c, "no finite voxel (NaN or infinite everywhere)")
        std = math.sqrt(m2 / n)
        if std == 0.0:
            raise StatisticsError(c, f"constant channel (every voxel is {low:g}); it cannot be normalized")
        entry: dict[str, Any] = {"voxels": n, "mean": mean, "std": std, "min": low, "max": high}
        entry.update(_foreground_entry(channel, foreground))
        stats.append(entry)
    return stats


def _finite_values(channel: np.ndarray, foreground: np.ndarray | None) -> np.ndarray:
    values = channel[foreground] if foreground is not None else channel.reshape(-1)
    values = values.astype(np.float64)
    return values[np.isfinite(values)] if values.size else values


def _foreground_entry(channel: np.ndarray, foreground: np.ndarray | None) -> dict[str, Any]:
    values = _finite_values(channel, foreground) if foreground is not None else np.empty(0)
    if values.size == 0:
        return dict.fromkeys(("fg_mean", "fg_std", "fg_p00_5", "fg_p99_5"), None) | {"fg_voxels": 0}
    low, high = np.percentile(values, [0.5, 99.5])
    return {
        "fg_voxels": int(values.size),
        "fg_mean": float(values.mean()),
        "fg_std": float(values.std()),
        "fg_p00_5": float(low),
        "fg_p99_5": float(high),
    }


def foreground_sample(
    image: np.ndarray,
    foreground: np.ndarray,
    rng: np.random.Generator,
    max_samples: int = MAX_INTENSITY_SAMPLES,
) -> np.ndarray:
    """Up to ``max_samples`` foreground intensities per channel, drawn without replacement.

    Returns
    -------
    ndarray of float32, shape (C, n)
        The same voxels in every channel (``n`` is the foreground size when
        smaller than ``max_samples``); non-finite values are kept as they are.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.arange(8, dtype=np.int16).reshape(1, 2, 4)
    >>> foreground_sample(image, image[0] >= 5, np.random.default_rng(0), max_samples=10)
    array([[5., 6., 7.]], dtype=float32)
    """
    flat = np.flatnonzero(foreground)
    if flat.size > max_samples:
        flat = np.sort(rng.choice(flat, max_samples, replace=False))
    return image.reshape(image.shape[0], -1)[:, flat].astype(np.float32)


def class_locations(
    labels: np.ndarray, rng: np.random.Generator, max_per_class: int = MAX_LOCATIONS
) -> np.ndarray:
    """A bounded random sample of voxel coordinates of every non-zero class.

    Parameters
    ----------
    labels : ndarray of int
        A label map (2D or 3D).
    rng : numpy.random.Generator
        Draws which voxels are kept when a class has more than ``max_per_class``.
    max_per_class : int

    Returns
    -------
    ndarray of int32, shape (N, 1 + ndim)
        Column 0 is the class, columns 1.. the voxel index; rows sorted by class,
        then in C order. Every voxel of a class with at most ``max_per_class``
        voxels is listed.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.array([[0, 2, 0], [1, 2, 2]], np.uint8)
    >>> class_locations(labels, np.random.default_rng(0)).tolist()
    [[1, 1, 0], [2, 0, 1], [2, 1, 1], [2, 1, 2]]
    >>> len(class_locations(labels, np.random.default_rng(0), max_per_class=2))
    3
    """
    flat = np.flatnonzero(labels)  # only the labelled voxels are sorted by class: sparse masks are cheap
    values = labels.reshape(-1)[flat]
    order = np.argsort(values, kind="stable")
    flat, values = flat[order], values[order]
    classes, starts = np.unique(values, return_index=True)
    pieces = []
    for cls, lo, hi in zip(classes, starts, [*starts[1:], values.size], strict=True):
        chosen = flat[lo:hi]
        if chosen.size > max_per_class:
            chosen = np.sort(rng.choice(chosen, max_per_class, replace=False))
        index = np.stack(np.unravel_index(chosen, labels.shape), axis=1)
        pieces.append(np.concatenate([np.full((chosen.size, 1), cls), index], axis=1))
    if not pieces:
        return np.zeros((0, 1 + labels.ndim), np.int32)
    return np.concatenate(pieces).astype(np.int32)


def dataset_statistics(
    cases: Sequence[Sequence[Mapping[str, Any]]], samples: Sequence[np.ndarray]
) -> list[dict[str, Any]]:
    """Dataset-level statistics per channel, from the cases' :func:`channel_statistics` and samples.

    ``mean``/``std`` and ``fg_mean``/``fg_std`` pool the cases' moments
    exactly (weighted by voxel counts); ``fg_p00_5``/``fg_p99_5`` are the
    percentiles of the pooled :func:`foreground_sample` of every case, as
    nnU-Net computes them for its CT normalization.

    Parameters
    ----------
    cases : sequence of list of dict
        Per case, the per-channel statistics; all with the same channel count.
    samples : sequence of ndarray (C, n)
        Per case, its foreground intensity sample.

    Returns
    -------
    list of dict
        One per channel: ``cases``, ``voxels``, ``mean``, ``std``, ``fg_voxels``,
        ``fg_mean``, ``fg_std``, ``fg_p00_5``, ``fg_p99_5`` (fg entries None
        when no case has foreground). Empty when ``cases`` is.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[[0, 2], [4, 6]]], np.int16)
    >>> b = a + 10
    >>> stats = [channel_statistics(x, x[0] >= 0) for x in (a, b)]
    >>> pooled = dataset_statistics(stats, [x.reshape(1, -1).astype(np.float32) for x in (a, b)])
    >>> both = np.concatenate([a, b]).astype(float)
    >>> bool(np.isclose(pooled[0]["mean"], both.mean())), bool(np.isclose(pooled[0]["std"], both.std()))
    (True, True)
    """
    if not cases:
        return []
    n_channels = {len(c) for c in cases}
    if len(n_channels) != 1:
        raise ValueError(f"cases have different channel counts: {sorted(n_channels)}")
    result = []
    for c in range(n_channels.pop()):
        entry: dict[str, Any] = {"cases": len(cases)}
        entry.update(
            _pooled(
                [s[c]["voxels"] for s in cases],
                [s[c]["mean"] for s in cases],
                [s[c]["std"] for s in cases],
                "",
            )
        )
        fg = [s[c] for s in cases if s[c].get("fg_voxels")]
        entry.update(
            _pooled(
                [s["fg_voxels"] for s in fg], [s["fg_mean"] for s in fg], [s["fg_std"] for s in fg], "fg_"
            )
        )
        pooled = np.concatenate([np.asarray(x, np.float64)[c] for x in samples]) if samples else np.empty(0)
        pooled = pooled[np.isfinite(pooled)]
        low, high = np.percentile(pooled, [0.5, 99.5]) if pooled.size else (None, None)
        entry["fg_p00_5"] = None if low is None else float(low)
        entry["fg_p99_5"] = None if high is None else float(high)
        result.append(entry)
    return result


def _pooled(counts: Sequence[int], means: Sequence[float], stds: Sequence[float], prefix: str) -> dict:
    """Exact mean and std of the union of groups with these counts, means and (population) stds."""
    n = float(sum(counts))
    if n == 0:
        return {f"{prefix}voxels": 0, f"{prefix}mean": None, f"{prefix}std": None}
    counts_, means_, stds_ = (np.asarray(x, np.float64) for x in (counts, means, stds))
    mean = float((counts_ * means_).sum() / n)
    var = float((counts_ * (stds_**2 + (means_ - mean) ** 2)).sum() / n)
    return {f"{prefix}voxels": int(n), f"{prefix}mean": mean, f"{prefix}std": math.sqrt(max(var, 0.0))}


def zscore(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(image - mean) / std`` per channel of a channel-first array, as float32.

    >>> import numpy as np
    >>> zscore(np.array([[[1, 3]]], np.int16), [2.0], [0.5]).tolist()
    [[[-2.0, 2.0]]]
    """
    shape = (-1,) + (1,) * (image.ndim - 1)
    mean_ = np.asarray(mean, np.float32).reshape(shape)
    scale = (1.0 / np.maximum(np.asarray(std, np.float64), 1e-8)).astype(np.float32).reshape(shape)
    out = np.subtract(image, mean_, dtype=np.float32)  # the cast and the subtraction in one pass
    out *= scale
    return out


def ct_normalize(
    image: np.ndarray,
    low: Sequence[float],
    high: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """nnU-Net's CT normalization: clip each channel to ``[low, high]``, then z-score, as float32.

    >>> import numpy as np
    >>> ct_normalize(np.array([[[-1000, 40, 3000]]], np.int16), [0.0], [100.0], [50.0], [10.0]).tolist()
    [[[-5.0, -1.0, 5.0]]]
    """
    shape = (-1,) + (1,) * (image.ndim - 1)
    out = image.astype(np.float32)
    np.clip(
        out, np.asarray(low, np.float32).reshape(shape), np.asarray(high, np.float32).reshape(shape), out=out
    )
    return zscore(out, mean, std)
