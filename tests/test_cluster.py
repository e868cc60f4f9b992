"""A real Dask cluster: ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1.

One worker is SIGKILLed while it builds a case; the build then finishes (the
scheduler reruns the case on the other worker) or fails only the cases of the dead
worker with a clear line. A rerun completes, ``verify`` passes, and the store equals
a local build byte for byte (metadata compared without timestamps and paths).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ._servers import base_env, dask_cluster, store_objects
from .helpers import CLI, tubes_3d

N_CASES = 16


def make_dataset(root: Path) -> Path:
    (root / "labels").mkdir(parents=True)
    for i in range(N_CASES):
        labels = tubes_3d(shape=(56, 56, 56), n=5, seed=100 + i)
        nib.save(nib.Nifti1Image(labels, np.eye(4)), root / "labels" / f"case_{i:03d}.nii.gz")
    return root


def _busy_worker(client) -> str | None:
    """A worker running a skelprep case right now, once at least one case is done; else None."""
    processing = client.processing()
    done = sum(1 for key, state in client.run_on_scheduler(_task_states).items() if state == "memory")
    if done < 1:
        return None
    busy = [addr for addr, keys in processing.items() if any(str(k).startswith("skelprep-") for k in keys)]
    return busy[0] if busy else None


def _task_states(dask_scheduler=None) -> dict[str, str]:
    return {str(k): ts.state for k, ts in dask_scheduler.tasks.items() if str(k).startswith("skelprep-")}


@pytest.mark.parametrize("allowed_failures", [None, 0], ids=["retried", "not-retried"])
def test_a_worker_killed_mid_build_loses_at_most_its_cases(tmp_path, allowed_failures):
    """The scheduler's default reruns the dead worker's cases elsewhere (all built); with no retries
    allowed, exactly those cases fail, each with a line naming its mask."""
    from dask.distributed import Client
    from fsspec.implementations.local import LocalFileSystem

    from skelprep.build import build

    dataset = make_dataset(tmp_path / "ds")
    out = tmp_path / "cluster.zarr"
    config = {} if allowed_failures is None else {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    with dask_cluster(tmp_path, n_workers=2, env=config) as cluster:
        args = [*CLI, "build", str(dataset), "--out", str(out), "--scheduler", cluster.address]
        proc = subprocess.Popen(
            [*args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=base_env()
        )
        try:
            with Client(cluster.address, timeout="60s") as client:
                workers = client.scheduler_info()["workers"]
                by_address = {
                    a: cluster.workers[int(str(w["name"]).removeprefix("w"))] for a, w in workers.items()
                }
                victim = None
                deadline = time.monotonic() + 240
                while victim is None and proc.poll() is None and time.monotonic() < deadline:
                    victim = _busy_worker(client)
                    if victim is None:
                        time.sleep(0.02)
                assert victim is not None, "the build ended before a worker could be killed mid-case"
                os.kill(by_address[victim].pid, signal.SIGKILL)
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert "Traceback" not in stderr
        report = json.loads(stdout)
        assert proc.returncode in (0, 1), stderr
        # Only the dead worker's cases may fail (those it held when it died; none if the scheduler
        # retried them elsewhere), each with a line naming its mask and the dead worker.
        if allowed_failures is None:
            assert report["failed"] == {}, report["failed"]
        assert proc.returncode == (1 if report["failed"] else 0), stderr
        for case_id, reason in report["failed"].items():
            assert reason.endswith(
                f"{case_id}.nii.gz: the worker process died while building this case (worker {victim})"
            ), reason
        assert len(report["built"]) + len(report["failed"]) == N_CASES

        rerun = subprocess.run([*args, "--json"], capture_output=True, text=True, env=base_env(), timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        # A failed case is rebuilt, unless the dead worker had written it completely before it died.
        again = json.loads(rerun.stdout)
        assert set(again["built"]) <= set(report["failed"])
        assert len(again["built"]) + len(again["up_to_date"]) == N_CASES

    verify = subprocess.run(
        [*CLI, "verify", str(dataset), "--out", str(out)], capture_output=True, text=True, env=base_env()
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"{N_CASES} ok, 0 with problems" in verify.stdout

    local = tmp_path / "local.zarr"
    assert build(dataset, local, workers=1).ok
    fs = LocalFileSystem()
    cluster_objects, local_objects = store_objects(fs, str(out)), store_objects(fs, str(local))
    assert sorted(cluster_objects) == sorted(local_objects)
    for key, data in local_objects.items():
        assert cluster_objects[key] == data, key


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:1"])
def test_an_unreachable_scheduler_gives_one_line(tmp_path, address):
    dataset = tmp_path / "ds"
    (dataset / "labels").mkdir(parents=True)
    nib.save(nib.Nifti1Image(tubes_3d(shape=(24, 24, 24), n=2), np.eye(4)), dataset / "labels" / "a.nii.gz")
    result = subprocess.run(
        [*CLI, "build", str(dataset), "--scheduler", address, "--no-progress"],
        capture_output=True,
        text=True,
        env=base_env(),
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0], result.stderr
