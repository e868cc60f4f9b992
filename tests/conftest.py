"""Shared fixtures: paths to the real data and small writable dataset copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
EXAMPLES = ROOT / "examples"


def needs(path: Path) -> Path:
    """Skip the test when optional shared data is absent (it is present in CI)."""
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("skeletons.zarr*"))
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    return dst


def copy_cases(src: Path, dst: Path, case_ids: list[str]) -> Path:
    """An nnU-Net dataset with only ``case_ids`` (mask and every image channel)."""
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    shutil.copy(src / "dataset.json", dst)
    for case_id in case_ids:
        for path in (src / "labelsTr").glob(f"{case_id}.*"):
            shutil.copy(path, dst / "labelsTr")
        for path in (src / "imagesTr").glob(f"{case_id}_*"):
            shutil.copy(path, dst / "imagesTr")
    return dst


@pytest.fixture
def octa_dataset(tmp_path: Path) -> Path:
    """The 4-case 3D OCT-A nnU-Net dataset, writable."""
    return copy_dataset(EXAMPLES / "octa3d", tmp_path / "octa3d")


@pytest.fixture
def cracks_dataset(tmp_path: Path) -> Path:
    """The 3-case 2D road-cracks nnU-Net dataset (4 classes), writable."""
    return copy_dataset(EXAMPLES / "road_cracks", tmp_path / "road_cracks")


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def tubes_3d(shape=(40, 48, 56), n=6, seed=0, n_classes=3) -> np.ndarray:
    """Random multi-class label map of thick straight/curved tubes and a few blobs."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    grid = np.indices(shape).reshape(3, -1).T
    for i in range(n):
        a, b = rng.uniform(0, shape, size=(2, 3))
        radius = rng.uniform(1.0, 3.5)
        ab = b - a
        t = np.clip(((grid - a) @ ab) / (ab @ ab), 0, 1)
        dist = np.linalg.norm(grid - (a + t[:, None] * ab), axis=1)
        labels.reshape(-1)[dist <= radius] = 1 + i % n_classes
    return labels


def crop_padded(array: np.ndarray, offset, size) -> np.ndarray:
    """Reference crop with zero padding, written independently of the Dataset's helpers."""
    lead = array.ndim - len(size)
    out = np.zeros(array.shape[:lead] + tuple(size), array.dtype)
    src, dst = [], []
    for o, s, d in zip(offset, size, array.shape[lead:], strict=True):
        lo, hi = max(o, 0), min(o + s, d)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - o, lo - o + max(hi - lo, 0)))
    out[(slice(None),) * lead + tuple(dst)] = array[(slice(None),) * lead + tuple(src)]
    return out
