"""A case that needs more memory than --memory-limit fails alone, quickly and in one line; a disk full
before the build starts ends it in one line."""

from __future__ import annotations

import errno
import subprocess

import nibabel as nib
import numpy as np
import pytest

from skelprep import open_store

from .helpers import CLI, mount_tmpfs, tubes_3d, write_png


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
        "(or build into a larger disk with --out) and rerun 'skelprep build'\n"
    )
