"""Helpers shared by the test modules (fixtures live in conftest.py): paths, dataset copies,
synthetic inputs, and the CLI run as a real process."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr
from PIL import Image

from skelprep import open_store, skeleton_targets
from skelprep.store import StoreError, verify_case_data

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


def shard_files(array_folder: Path) -> list[Path]:
    """The chunk (shard) files of a stored array: ``c.0.0``, ... beside its ``zarr.json``."""
    return sorted(p for p in array_folder.iterdir() if p.is_file() and p.name.startswith("c."))


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


# --- the CLI as a process ---------------------------------------------------------------------

CLI = [sys.executable, "-m", "skelprep.cli"]
_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2


def drop_dac_capabilities() -> None:
    """In a child before exec: give up root's right to ignore file permissions (CAP_DAC_*)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def permissions_enforceable() -> bool:
    """Whether a process of ours can be made to obey chmod (always, unless root cannot drop CAP_DAC_*)."""
    if os.geteuid() != 0:
        return True
    probe = subprocess.run(
        [sys.executable, "-c", "pass"], preexec_fn=drop_dac_capabilities, capture_output=True
    )
    return probe.returncode == 0


def mount_tmpfs(path: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` (``"3m"``) at ``path``, a real small disk; False where that needs root."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode == 0


# --- builds to kill or race: 40 small 3D cases --------------------------------------------------

N_CASES = 40


def make_dataset(root: Path) -> tuple[Path, dict[str, tuple[np.ndarray, ...]]]:
    """40 small 3D cases with an image each (``images/``), and (tube, thin, label, image) for each."""
    (root / "labels").mkdir(parents=True)
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    for i in range(N_CASES):
        labels = tubes_3d(shape=(48, 48, 48), n=5, seed=i)
        image = rng.integers(-100, 400, labels.shape).astype(np.int16)
        nib.save(nib.Nifti1Image(labels, np.eye(4)), root / "labels" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "images" / f"case_{i:03d}.nii.gz")
        targets = skeleton_targets(labels)
        expected[f"case_{i:03d}"] = (targets.tube, targets.thin, labels, image)
    return root, expected


def check_store(out: Path, expected: dict[str, tuple[np.ndarray, ...]]) -> tuple[int, int]:
    """Assert the store's invariants after a kill; return (complete, incomplete) case counts.

    Cases built ``--with-images`` must also hold their source image and label.
    """
    try:
        store = open_store(out)
    except StoreError:
        # killed before the root group existed: then no case may exist either
        assert not list(out.glob("*/zarr.json"))
        return 0, 0
    plain = zarr.open_group(str(out), mode="r")  # as a user would, consolidated metadata and all
    for case_id in store.case_ids:
        case = store[case_id]
        assert verify_case_data(case) == [], case_id
        tube, thin, labels, image = expected[case_id]
        np.testing.assert_array_equal(case.tube[...], tube)
        np.testing.assert_array_equal(case.thin[...], thin)
        paths = case.attrs["arrays"]  # where each array lies, by name (docs/store-format.md)
        np.testing.assert_array_equal(plain[f"{case_id}/{paths['tube']}"][...], tube)
        if case.has_images:
            np.testing.assert_array_equal(plain[f"{case_id}/{paths['label']}"][...], labels)
            np.testing.assert_array_equal(plain[f"{case_id}/{paths['image']}"][0], image)
    return len(store.case_ids), len(store.incomplete_case_ids)


def start_build(dataset: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        CLI + ["build", str(dataset), "--out", str(out), "--workers", "1", "--no-progress", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the client and every Dask process
    )


def wait_for_a_write(proc: subprocess.Popen, out: Path, since_ns: int, timeout: float = 30.0) -> None:
    """Wait until the build has written a case group (metadata newer than ``since_ns``)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        for meta in out.glob("*/zarr.json"):
            try:
                if meta.stat().st_mtime_ns > since_ns:
                    return
            except FileNotFoundError:  # replaced or deleted while we looked
                continue
        time.sleep(0.01)


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
