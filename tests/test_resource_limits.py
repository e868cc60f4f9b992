"""A case that needs more memory than it has fails alone, quickly and in one line; a disk full
before the build starts ends it in one line.

The need is estimated from the headers before any pixel data are decoded: a file
of a few bytes can declare a volume of tens of gigabytes.
"""

from __future__ import annotations

import errno
import gzip
import math
import subprocess

import nibabel as nib
import numpy as np
import pytest

from skelprep import open_store

from .helpers import CLI, mount_tmpfs, tubes_3d, write_png


def _declaring(path, shape, dtype) -> None:
    """A .nii.gz whose header declares ``shape`` and ``dtype``, with a few bytes of voxels."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    path.write_bytes(gzip.compress(header.binaryblock + b"\x00" * 4 + b"\x00" * 4096))


def _small_cases(labels) -> None:
    for i in range(3):
        nib.save(
            nib.Nifti1Image(tubes_3d(shape=(32, 32, 32), n=3, seed=i), np.eye(4)),
            labels / f"small_{i}.nii.gz",
        )


def test_case_over_the_memory_limit_fails_alone_before_decoding(tmp_path):
    labels = tmp_path / "ds" / "labels"
    labels.mkdir(parents=True)
    _small_cases(labels)
    # 64 MB of labels; thinning a solid block this size needs several copies
    big = np.zeros((400, 400, 400), np.uint8)
    big[20:380, 20:380, 20:380] = 1
    nib.save(nib.Nifti1Image(big, np.eye(4)), labels / "big.nii")
    del big
    _declaring(labels / "huge.nii.gz", (1200, 1200, 1200), np.float64)  # 5 kB declaring 13.8 GB

    result = subprocess.run(
        CLI + ["build", str(tmp_path / "ds"), "--workers", "1", "--memory-limit", "400MB", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "3 built, 0 up to date, 2 failed" in result.stdout
    assert result.stderr.splitlines() == [
        f"failed: {labels / 'big.nii'}: needs about 2.8 GB to build (400x400x400 uint8),"
        " more than the 400MB memory limit per worker",
        f"failed: {labels / 'huge.nii.gz'}: needs about 86.4 GB to build (1200x1200x1200 float64),"
        " more than the 400MB memory limit per worker",
    ]
    assert open_store(tmp_path / "ds" / "skeletons.zarr").case_ids == ["small_0", "small_1", "small_2"]


def test_case_over_the_memory_available_fails_alone_without_a_limit(tmp_path):
    from skelprep.runner import memory_budget

    shape = (1290, 1290, 1290)  # just under the voxel cap: about 107 GB to build in float64
    budget = memory_budget(None)
    if budget is None or budget[0] > math.prod(shape) * 50:
        pytest.skip("this machine has the memory free (or does not say how much)")
    labels = tmp_path / "ds" / "labels"
    labels.mkdir(parents=True)
    _small_cases(labels)
    _declaring(labels / "huge.nii.gz", shape, np.float64)
    result = subprocess.run(
        CLI + ["build", str(tmp_path / "ds"), "--workers", "2", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "3 built, 0 up to date, 1 failed" in result.stdout
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith(
        f"failed: {labels / 'huge.nii.gz'}: needs about 107.3 GB to build (1290x1290x1290 float64), more than"
        " the "
    ) and line.endswith(" GB of memory available")


def test_a_disk_full_before_the_lock_is_written_ends_the_build_in_one_line(tmp_path):
    """A real full disk: a 1 MiB tmpfs filled to the last byte (needs root to mount; skipped otherwise)."""
    mask = np.zeros((32, 32), np.uint8)
    mask[16, :] = 255
    dataset = write_png(tmp_path / "ds" / "labels" / "a.png", mask).parent.parent
    disk = tmp_path / "full_disk"
    if not mount_tmpfs(disk, "1m"):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        with open(disk / "filler", "wb", buffering=0) as filler:  # unbuffered: close has nothing to flush
            try:
                for _ in range(1024):  # bounded: 4 MiB of writes fill 1 MiB
                    filler.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            else:
                pytest.fail("the 1 MiB tmpfs never filled")
        out = disk / "store.zarr"
        done = subprocess.run(
            CLI + ["build", str(dataset), "--out", str(out), "--workers", "1", "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        subprocess.run(["umount", str(disk)])
    assert done.returncode == 1
    assert done.stderr == (
        f"skelprep: error: {out}: no space left on device for the store's lock file {out}.lock; free space "
        "(or build into a store on a larger disk) and rerun the build\n"
    )
