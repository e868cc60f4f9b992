"""Generated sparse 3D vessel trees of CT size, for benchmarks.

Real angiography masks (CT/MR of the head or the liver) are large volumes
(hundreds of voxels per side) in which the vessels fill well under 1 % of the
voxels: long, thin, branching tubes of radius 1-4 voxels. This module draws
such trees by smooth random walks that branch and taper, and rasterizes them as
unions of balls; every tree gets one class label (artery/vein/... style multi-class
masks). Generation is deterministic for a seed and takes a few seconds for
256 x 512 x 512.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["vessel_tree_volume", "write_vessel_dataset", "write_crop_dataset"]


def _ball_offsets(radius: float) -> np.ndarray:
    """Integer offsets (k, 3) of the voxels within Euclidean ``radius`` of the origin."""
    r = int(np.ceil(radius))
    grid = np.stack(np.meshgrid(*(np.arange(-r, r + 1),) * 3, indexing="ij"), -1).reshape(-1, 3)
    return grid[(grid**2).sum(1) <= radius**2 + 1e-9]


def _walk(
    rng: np.random.Generator,
    shape: np.ndarray,
    start: np.ndarray,
    direction: np.ndarray,
    radius: float,
    length: int,
    out: list[tuple[np.ndarray, float]],
    depth: int,
) -> None:
    """One tapering, wiggling branch; spawns side branches recursively."""
    pos = start.astype(float)
    d = direction / np.linalg.norm(direction)
    points = []
    for step in range(length):
        # smooth turn: a small random perturbation of the heading
        d = d + rng.normal(scale=0.12, size=3)
        d /= np.linalg.norm(d)
        pos = pos + d
        if np.any(pos < 2) or np.any(pos > shape - 3):
            break
        points.append(pos.copy())
        if depth < 4 and step > 10 and rng.random() < 0.012:
            side = rng.normal(size=3)
            side -= side @ d * d  # leave sideways
            _walk(
                rng,
                shape,
                pos,
                d + 1.2 * side / np.linalg.norm(side),
                max(radius * 0.7, 1.0),
                int(length * 0.6),
                out,
                depth + 1,
            )
        radius = max(radius * 0.999, 1.0)
    if points:
        out.append((np.asarray(points), radius))


def vessel_tree_volume(
    shape: tuple[int, int, int] = (256, 512, 512),
    *,
    n_trees: int = 6,
    n_classes: int = 3,
    target_fraction: float = 0.006,
    seed: int = 0,
) -> np.ndarray:
    """A uint8 label map of branching vessel trees (label = tree index mod ``n_classes``, plus 1).

    Trees are added until the foreground reaches ``target_fraction`` of the voxels
    (at least ``n_trees``), so the result is sparse like a real angiography mask.

    Parameters
    ----------
    shape : tuple of int
        Volume shape (z, y, x).
    n_trees : int
        Minimum number of trees.
    n_classes : int
        Number of foreground classes.
    target_fraction : float
        Foreground fraction to reach (approximately; it stops at the first tree past it).
    seed : int
        Random seed.

    Returns
    -------
    ndarray of uint8
    """
    rng = np.random.default_rng(seed)
    dims = np.asarray(shape, dtype=float)
    labels = np.zeros(shape, np.uint8)
    flat = labels.reshape(-1)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    tree = 0
    while tree < n_trees or np.count_nonzero(labels) < target_fraction * labels.size:
        branches: list[tuple[np.ndarray, float]] = []
        start = rng.uniform(0.15, 0.85, 3) * dims
        radius0 = rng.uniform(2.0, 4.0)
        _walk(rng, dims, start, rng.normal(size=3), radius0, int(dims.max() * 1.2), branches, 0)
        value = 1 + tree % n_classes
        for points, radius in branches:
            # quantize the radius so ball offsets can be shared
            offsets = _ball_offsets(round(radius * 2) / 2)
            centres = np.rint(points).astype(np.int64)
            voxels = (centres[:, None, :] + offsets[None]).reshape(-1, 3)
            voxels = voxels[np.all((voxels >= 0) & (voxels < np.asarray(shape)), axis=1)]
            flat[voxels @ strides] = value
        tree += 1
        if tree > 200:  # a tiny volume cannot reach the fraction; stop anyway
            break
    return labels


def _save_nifti(path: Path, data: np.ndarray) -> None:
    """Write ``data`` as NIfTI (identity affine, its own dtype) under a temporary name, then rename:
    an interrupted benchmark never leaves a truncated file that a later run would reuse."""
    import nibabel as nib

    tmp = path.with_name(path.name + ".tmp.nii.gz")
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp)
    os.replace(tmp, path)


def write_vessel_dataset(
    folder: str | os.PathLike,
    *,
    n_cases: int = 4,
    shape: tuple[int, int, int] = (256, 512, 512),
    seed: int = 0,
    **kwargs,
) -> Path:
    """Write ``n_cases`` generated volumes as ``folder/labels/vessels_XXX.nii.gz`` (generic layout).

    Existing files are kept (the benchmark writes the dataset once and reuses it).

    Returns
    -------
    Path
        The dataset folder.
    """

    folder = Path(folder)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        path = folder / "labels" / f"vessels_{i:03d}.nii.gz"
        if path.exists():
            continue
        _save_nifti(path, vessel_tree_volume(shape, seed=seed + i, **kwargs))  # uint8 labels
    return folder


def write_crop_dataset(
    folder: str | os.PathLike,
    sources: list[Path],
    *,
    n_cases: int = 504,
    size: int = 512,
    seed: int = 0,
) -> Path:
    """Write ``n_cases`` square crops of real 2D masks as ``folder/labels/crop_XXXX.png``.

    Many small cases, as in 2D datasets of thousands of images (roads, retina,
    cracks): crops at seeded random offsets of the ``sources`` in turn, each
    flipped and rotated by a seeded choice, so that no two cases are equal.
    Existing files are kept.

    Returns
    -------
    Path
        The dataset folder.
    """
    from PIL import Image

    folder = Path(folder)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    masks = [np.asarray(Image.open(p)) for p in sources]
    for i in range(n_cases):
        mask = masks[i % len(masks)]
        y = int(rng.integers(0, mask.shape[0] - size + 1))
        x = int(rng.integers(0, mask.shape[1] - size + 1))
        crop = np.rot90(mask[y : y + size, x : x + size], int(rng.integers(4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        path = folder / "labels" / f"crop_{i:04d}.png"
        if not path.exists():
            Image.fromarray(np.ascontiguousarray(crop)).save(path)
    return folder


def ct_image_volume(labels: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """An int16 CT-like image (Hounsfield units) around a vessel label map.

    Air (-1000) outside an ellipsoidal body, soft tissue (about 40 HU) with
    Gaussian noise of 20 HU and a smooth drift inside it, contrast-filled
    vessels (about 300 HU) where ``labels > 0``. The noise makes it compress
    like a real scan (a ``.nii.gz`` of about 60 % of the raw bytes).
    """
    rng = np.random.default_rng(seed)
    shape = labels.shape
    image = np.empty(shape, np.int16)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    yy, xx = np.meshgrid(axes[1], axes[2], indexing="ij")
    for i in range(shape[0]):  # slab by slab: a float copy of the whole volume would be 600 MB
        body = (axes[0][i] / 1.1) ** 2 + (yy / 0.9) ** 2 + (xx / 0.95) ** 2 <= 1.0
        tissue = 40 + 15 * np.sin(3 * yy + axes[0][i]) + rng.normal(0, 20, size=yy.shape).astype(np.float32)
        slab = np.where(body, tissue, -1000 + rng.normal(0, 5, size=yy.shape).astype(np.float32))
        slab = np.where(labels[i] > 0, 300 + rng.normal(0, 25, size=yy.shape).astype(np.float32), slab)
        image[i] = np.clip(np.rint(slab), -1024, 3071).astype(np.int16)
    return image


def write_ct_dataset(
    folder: str | os.PathLike,
    *,
    n_cases: int = 2,
    shape: tuple[int, int, int] = (512, 512, 300),
    seed: int = 0,
) -> Path:
    """An nnU-Net raw dataset of CT-size cases: int16 image ``.nii.gz``, sparse 2-class vessel mask.

    ``imagesTr/ct_XXX_0000.nii.gz``, ``labelsTr/ct_XXX.nii.gz`` and
    ``dataset.json``; existing files are kept (benchmarks write it once).
    """
    import json

    folder = Path(folder)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "artery": 1, "vein": 2},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    for i in range(n_cases):
        label_path = folder / "labelsTr" / f"ct_{i:03d}.nii.gz"
        image_path = folder / "imagesTr" / f"ct_{i:03d}_0000.nii.gz"
        if label_path.exists() and image_path.exists():
            continue
        labels = vessel_tree_volume(shape, n_classes=2, target_fraction=0.004, seed=seed + i)
        _save_nifti(image_path, ct_image_volume(labels, seed=seed + i))
        _save_nifti(label_path, labels)
    return folder
