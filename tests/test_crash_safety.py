"""SIGKILL at many moments of a build never leaves a case that looks built but is not.

Each run is a real ``skelprep build`` process in its own process group (client, Dask
nannies and workers), killed as a whole after a delay spread over the build's duration.
After every kill the store must list only complete cases, each intact and equal to the
core's output (and, as the builds run ``--with-images``, its image and label equal to the
source files), also for a plain zarr reader; the next build must finish the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr

from skelprep import open_store, skeleton_targets
from skelprep.store import StoreError, verify_case_data

from .conftest import tubes_3d

CLI = [sys.executable, "-m", "skelprep.cli"]
N_CASES = 40

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="needs /proc to follow process groups"
)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def wait_gone(pgid: int, timeout: float = 10.0) -> list[int]:
    """Wait until no process of the group is alive; return those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while (alive := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def start_build(dataset: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        CLI
        + [
            "build",
            str(dataset),
            "--out",
            str(out),
            "--workers",
            "1",
            "--no-progress",
            "--with-images",
            *extra,
        ],
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


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=30)
    assert not wait_gone(proc.pid), "processes of the killed build survived"


def make_dataset(root: Path) -> tuple[Path, dict[str, tuple[np.ndarray, ...]]]:
    """40 small 3D cases with an image each, and (tube, thin, label, image) for each."""
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


@pytest.fixture(scope="module")
def crash_dataset(tmp_path_factory) -> tuple[Path, dict[str, tuple[np.ndarray, ...]]]:
    return make_dataset(tmp_path_factory.mktemp("crash") / "ds")


def check_store(out: Path, expected: dict[str, tuple[np.ndarray, ...]]) -> tuple[int, int]:
    """Assert the store's invariants after a kill; return (complete, incomplete) case counts."""
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
        np.testing.assert_array_equal(plain[f"{case_id}/tube"][...], tube)
        np.testing.assert_array_equal(plain[f"{case_id}/label"][...], labels)
        np.testing.assert_array_equal(plain[f"{case_id}/image"][0], image)
    return len(store.case_ids), len(store.incomplete_case_ids)


def writing_time(dataset: Path, out: Path) -> float:
    """Seconds from a build's first case write to its exit: the window the kills must hit."""
    started = time.time_ns()
    proc = start_build(dataset, out)
    wait_for_a_write(proc, out, started)
    first_write = time.monotonic()
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    return time.monotonic() - first_write


def test_sigkill_at_many_moments_never_leaves_a_half_built_case(crash_dataset, tmp_path):
    dataset, expected = crash_dataset
    out = tmp_path / "store.zarr"
    seen = []
    # A kill during start-up (imports, planning), then kills at moments spread over the
    # writing phase, counted from the first case group written and scaled by how long that
    # phase takes on this machine (measured once), so the kills land inside it however fast
    # the build is. Every writing run but the first is --force, so kills land while complete
    # cases are deleted and replaced (a plain rebuild after a kill has almost nothing left to do).
    window = writing_time(dataset, tmp_path / "calibration.zarr")
    moments = [("start", 0.8)] + [("writing", float(f) * window) for f in np.linspace(0.0, 0.8, 9)]
    for i, (phase, delay) in enumerate(moments):
        extra = ("--force",) if i > 1 else ()
        started = time.time_ns()
        proc = start_build(dataset, out, *extra)
        if phase == "writing":
            wait_for_a_write(proc, out, started)
        time.sleep(delay)
        finished = proc.poll() is not None
        kill_group(proc)
        complete, incomplete = check_store(out, expected)
        seen.append((phase, round(delay, 2), extra, finished, complete, incomplete))
    print("kills (phase, delay s, extra, finished, complete, incomplete):", *seen, sep="\n  ")
    # the kills must have hit builds in the middle, not only before or after them
    assert sum(1 for *_, finished, c, inc in seen if not finished and (0 < c < N_CASES or inc)) >= 4, seen

    # the store is not left locked; the next build finishes the job and verify passes
    done = subprocess.run(
        CLI + ["build", str(dataset), "--out", str(out), "--workers", "1", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert ", 0 failed" in done.stdout
    assert check_store(out, expected) == (N_CASES, 0)
    assert not list(out.rglob("*.partial"))  # the temporary files of interrupted writes are cleaned up
    verify = subprocess.run(
        CLI + ["verify", str(dataset), "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert verify.returncode == 0 and f"{N_CASES} ok, 0 with problems" in verify.stdout, (
        verify.stdout + verify.stderr
    )


def test_killing_only_the_client_stops_its_workers(crash_dataset, tmp_path):
    """The OOM killer may take just the client: its Dask workers must not go on writing."""
    dataset, expected = crash_dataset
    out = tmp_path / "store.zarr"
    proc = start_build(dataset, out, "--workers", "2")
    deadline = time.monotonic() + 30
    while len(group_members(proc.pid)) < 3 and time.monotonic() < deadline:  # client + 2 workers at least
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not wait_gone(proc.pid, timeout=15), "Dask workers outlived their client"
    check_store(out, expected)
