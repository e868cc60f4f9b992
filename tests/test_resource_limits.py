"""A case that needs more memory than --memory-limit fails alone, quickly and in one line."""

from __future__ import annotations

import subprocess

import nibabel as nib
import numpy as np

from skelprep import open_store

from .helpers import CLI, tubes_3d


def test_case_over_the_memory_limit_fails_alone(tmp_path):
    labels = tmp_path / "ds" / "labels"
    labels.mkdir(parents=True)
    for i in range(3):
        nib.save(
            nib.Nifti1Image(tubes_3d(shape=(32, 32, 32), n=3, seed=i), np.eye(4)),
            labels / f"small_{i}.nii.gz",
        )
    # 64 MB of labels; thinning a solid block this size needs several copies, held for seconds
    big = np.zeros((400, 400, 400), np.uint8)
    big[20:380, 20:380, 20:380] = 1
    nib.save(nib.Nifti1Image(big, np.eye(4)), labels / "big.nii")
    del big

    result = subprocess.run(
        CLI + ["build", str(tmp_path / "ds"), "--workers", "1", "--memory-limit", "400MB", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "3 built, 0 up to date, 1 failed" in result.stdout
    assert result.stderr == (
        f"failed: {labels / 'big.nii'}: the worker process died while building this case"
        " (over the memory limit of 400MB per worker?)\n"
    )
    assert open_store(tmp_path / "ds" / "skeletons.zarr").case_ids == ["small_0", "small_1", "small_2"]
