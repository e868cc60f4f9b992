"""SIGKILL at many moments of a build never leaves a case that looks built but is not.

Each run is a real ``skelprep build`` process in its own process group (client, Dask
nannies and workers), killed as a whole after a delay spread over the build's duration.
After every kill the store must list only complete cases, each intact and equal to the
core's output (the builds run ``--with-images``: their image and label equal to the
source files), also for a plain zarr reader; the next build must finish the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from .helpers import CLI, N_CASES, check_store, make_dataset, start_build, wait_for_a_write

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


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=30)
    assert not wait_gone(proc.pid), "processes of the killed build survived"


@pytest.fixture(scope="module")
def crash_dataset(tmp_path_factory) -> tuple[Path, dict[str, tuple[np.ndarray, ...]]]:
    return make_dataset(tmp_path_factory.mktemp("crash") / "ds")


def writing_time(dataset: Path, out: Path) -> float:
    """Seconds from a build's first case write to its exit: the window the kills must hit."""
    started = time.time_ns()
    proc = start_build(dataset, out, "--with-images")
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
        proc = start_build(dataset, out, "--with-images", *extra)
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
