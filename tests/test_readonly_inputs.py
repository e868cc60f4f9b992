"""skelprep only reads its inputs: no file of the dataset is created, changed or deleted.

The tests run as root, for whom chmod alone proves nothing; the CLI processes here drop
root's CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so the kernel enforces the read-only modes
(and a snapshot of names, types, modes, sizes, mtimes and hashes checks the rest).
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from .helpers import CLI, drop_dac_capabilities, permissions_enforceable


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything below ``root`` that a write could change, without following symlinks."""
    state = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        entry: tuple = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        if path.is_symlink():
            entry += (os.readlink(path),)
        elif path.is_file():
            entry += (st.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        state[path.relative_to(root).as_posix()] = entry
    return state


def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)


def _make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)


@pytest.fixture
def enforce() -> bool:
    if not permissions_enforceable():
        pytest.skip("running as root without the right to drop CAP_DAC_*: read-only modes are not enforced")
    return os.geteuid() == 0


def _run(args: list[str], drop: bool) -> subprocess.CompletedProcess:
    return subprocess.run(
        CLI + args,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=drop_dac_capabilities if drop else None,
    )


def test_build_on_a_read_only_dataset_writes_nothing_there(octa_dataset, tmp_path, enforce):
    (octa_dataset / "labelsTr" / "link_to_000.nii.gz").symlink_to(
        "octa_000.nii.gz"
    )  # links are read, not followed for writes
    (octa_dataset / "imagesTr" / "link_to_000_0000.nii.gz").symlink_to("octa_000_0000.nii.gz")
    _make_read_only(octa_dataset)
    before = snapshot(octa_dataset)
    out = tmp_path / "elsewhere" / "targets.zarr"
    try:
        built = _run(
            ["build", str(octa_dataset), "--out", str(out), "--workers", "2", "--no-progress"], enforce
        )
        assert built.returncode == 0, built.stderr
        assert "5 built, 0 up to date, 0 failed" in built.stdout
        again = _run(
            ["build", str(octa_dataset), "--out", str(out), "--workers", "1", "--no-progress"], enforce
        )
        assert again.returncode == 0 and "0 built, 5 up to date" in again.stdout
        checked = _run(["verify", str(octa_dataset), "--out", str(out)], enforce)
        assert checked.returncode == 0 and "5 ok, 0 with problems" in checked.stdout
        assert _run(["info", str(out)], enforce).returncode == 0
        preview = tmp_path / "p.png"
        assert _run(["preview", str(out), "octa_001", "-o", str(preview)], enforce).returncode == 0

        # the default store lives inside the dataset: on a read-only dataset that is a clean error
        refused = _run(["build", str(octa_dataset), "--no-progress"], enforce)
        assert refused.returncode == 1
        assert refused.stderr.startswith("skelprep: error: ") and refused.stderr.count("\n") == 1
        assert "cannot write the store" in refused.stderr or "Permission denied" in refused.stderr
        assert snapshot(octa_dataset) == before

        # checking and reading need no write access to the store either
        _make_read_only(out)
        stored = snapshot(out)
        checked = _run(["verify", str(octa_dataset), "--out", str(out)], enforce)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert _run(["info", str(out)], enforce).returncode == 0
        assert snapshot(out) == stored
    finally:
        _make_writable(octa_dataset)
        _make_writable(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["targets.zarr", "targets.zarr.lock"]


def test_store_in_the_dataset_touches_only_itself_and_its_lock(cracks_dataset):
    before = snapshot(cracks_dataset)
    built = _run(["build", str(cracks_dataset), "--workers", "2", "--no-progress", "--prune"], drop=False)
    assert built.returncode == 0, built.stderr
    after = snapshot(cracks_dataset)
    new = {k for k in after if k not in before}
    assert {k.split("/")[0] for k in new} == {"skeletons.zarr", "skeletons.zarr.lock"}
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed == {"."}  # the folder's mtime: the store and its lock were created in it
    assert {k: v for k, v in after.items() if k in before and k != "."} == {
        k: v for k, v in before.items() if k != "."
    }
