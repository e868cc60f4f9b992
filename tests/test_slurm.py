"""Many machines on a real Slurm (tests/_slurm.py): ``--cluster slurm``, job arrays of ``--shard``, preemption.

The jobs are kept tiny (the bundled 2D and 3D examples, 40 small generated volumes).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from skelprep import open_store
from skelprep.build import build
from skelprep.shard import shard_index

from .helpers import CLI, ROOT, assert_same_arrays, check_store, make_dataset

pytest.importorskip("dask_jobqueue", reason="--cluster needs dask-jobqueue (pip install 'skelprep[hpc]')")


def _jobqueue_config(folder: Path, **extra: object) -> Path:
    """A Dask configuration folder (for DASK_CONFIG) with a ``jobqueue.slurm`` section for the test Slurm."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "cores": 1,
        "processes": 1,
        "memory": "400MB",
        "walltime": "00:10:00",
        "python": sys.executable,
        "log-directory": str(folder / "logs"),
        "local-directory": str(folder / "work"),
        "scheduler-options": {"host": "127.0.0.1"},
        "death-timeout": 30,
        **extra,
    }
    import yaml

    (folder / "jobqueue.yaml").write_text(yaml.safe_dump({"jobqueue": {"slurm": settings}}))
    return folder


def _skelprep(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), env=env, capture_output=True, text=True, timeout=timeout)


def _env(slurm, config: Path | None) -> dict[str, str]:
    env = {**slurm.env, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if config is not None:
        env["DASK_CONFIG"] = str(config)
    return env


def _queue_empty(slurm, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not slurm.run("squeue", "-h").stdout.strip():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def many_cases(tmp_path_factory):
    """40 small 3D volumes: a build runs long enough to be cancelled mid-way."""
    return make_dataset(tmp_path_factory.mktemp("preempt") / "ds")


def _wait_for_cases(out: Path, running: Callable[[], bool], timeout: float = 120) -> None:
    """Wait until a build (still ``running()``) has completed a case in the store."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(
            '"complete":true' in p.read_text().replace(" ", "")
            for p in out.glob("*/zarr.json")
            if p.is_file()
        ):
            return
        assert running(), "the build ended before it wrote a case"
        time.sleep(0.01)
    raise AssertionError(f"no case written in {timeout} s")


def test_a_cluster_slurm_build_equals_a_local_build(slurm, cracks_dataset, tmp_path):
    reference = tmp_path / "local.zarr"
    assert build(cracks_dataset, reference, workers=1).ok
    out = tmp_path / "slurm.zarr"
    env = _env(slurm, _jobqueue_config(tmp_path / "dask"))
    result = _skelprep(
        env,
        "build",
        str(cracks_dataset),
        "--out",
        str(out),
        "--cluster",
        "slurm",
        "--workers",
        "2",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert_same_arrays(out, reference)
    assert _queue_empty(slurm), slurm.run("squeue").stdout  # the worker jobs were cancelled


def test_ctrl_c_mid_build_cancels_the_jobs_and_keeps_complete_cases(slurm, many_cases, tmp_path):
    dataset, expected = many_cases
    out = tmp_path / "s.zarr"
    proc = subprocess.Popen(
        CLI
        + ["build", str(dataset), "--out", str(out), "--cluster", "slurm", "--workers", "2", "--no-progress"],
        env=_env(slurm, _jobqueue_config(tmp_path / "dask")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_cases(out, lambda: proc.poll() is None)
        assert slurm.run("squeue", "-h").stdout.strip(), "no worker job runs"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-1] == (
        "skelprep: error: interrupted; cases already written are kept, rerun to finish"
    ), stderr
    assert _queue_empty(slurm), slurm.run("squeue").stdout  # the worker jobs were cancelled
    complete, _ = check_store(out, expected)
    assert 0 < complete < len(expected)


@pytest.mark.parametrize(
    ("extra", "options", "says"),
    [
        (
            {"queue": "nosuch"},
            (),
            "--cluster slurm: the queue refused the job: sbatch: error: invalid partition specified: nosuch",
        ),
        (
            {"job-extra-directives": ["--begin=now+3600"]},
            ("--start-timeout", "3"),
            "--cluster slurm: no job started within 3 s (pending: ",
        ),
        (
            None,
            (),
            "--cluster slurm: no jobqueue configuration (jobqueue.slurm.cores and jobqueue.slurm.memory unset)",
        ),
    ],
    ids=["refused", "never-starts", "no-config"],
)
def test_cluster_problems_end_in_one_line_and_leave_no_job(
    slurm, cracks_dataset, tmp_path, extra, options, says
):
    config = _jobqueue_config(tmp_path / "dask", **extra) if extra is not None else tmp_path / "empty"
    config.mkdir(exist_ok=True)
    out = tmp_path / "s.zarr"
    result = _skelprep(
        _env(slurm, config),
        "build",
        str(cracks_dataset),
        "--out",
        str(out),
        "--cluster",
        "slurm",
        "--no-progress",
        *options,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"skelprep: error: {says}"), result.stderr
    assert not out.exists()
    assert _queue_empty(slurm), slurm.run("squeue").stdout


def test_no_slurm_on_the_machine_is_one_line(cracks_dataset, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path), "DASK_CONFIG": str(_jobqueue_config(tmp_path / "dask"))}
    result = _skelprep(env, "build", str(cracks_dataset), "--cluster", "slurm", "--no-progress")
    assert result.returncode == 1
    assert result.stderr.startswith("skelprep: error: --cluster slurm: 'sbatch' not found on this machine")
    assert len(result.stderr.splitlines()) == 1, result.stderr


def _shard_script(dataset: Path, out: Path, count: int, index: str = "$SLURM_ARRAY_TASK_ID") -> str:
    """The job-array recipe of docs/many-machines.md: one shard per array task."""
    cmd = " ".join(shlex.quote(str(a)) for a in CLI)
    return (
        "#!/bin/bash\n"
        f"exec {cmd} build {shlex.quote(str(dataset))} --out {shlex.quote(str(out))} "
        f"--shard {index}/{count} --workers 1 --no-progress\n"
    )


def test_a_job_array_of_shards_equals_a_local_build(slurm, octa_dataset, cracks_dataset, tmp_path):
    for dataset in (octa_dataset, cracks_dataset):  # 3D and 2D
        reference = tmp_path / f"{dataset.name}-local.zarr"
        assert build(dataset, reference, workers=1).ok
        out = tmp_path / f"{dataset.name}-array.zarr"
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        job = slurm.sbatch(
            _shard_script(dataset, out, 4),
            "--array=0-3",
            "--cpus-per-task=1",
            "--mem=400M",
            f"--output={logs}/%A_%a.out",
            env=_env(slurm, None),
        )
        slurm.wait_gone(job, timeout=240)
        outputs = {p.name: p.read_text() for p in logs.glob(f"{job}_*.out")}
        assert len(outputs) == 4 and all(" 0 failed " in t for t in outputs.values()), outputs
        assert_same_arrays(out, reference)
        checked = _skelprep(slurm.env, "verify", str(dataset), "--out", str(out))
        assert checked.returncode == 0, checked.stdout
        assert "shards: 4 of 4 done" in checked.stdout


@pytest.mark.parametrize("how", ["scancel", "requeue"])
def test_a_preempted_shard_job_finishes_when_run_again(slurm, many_cases, tmp_path, how):
    dataset, expected = many_cases
    out = tmp_path / "store.zarr"
    mine = sorted(c for c in expected if shard_index(c, 2) == 0)
    env = _env(slurm, None)
    options = ["--cpus-per-task=1", "--mem=400M", f"--output={tmp_path}/%j.out"]
    job = slurm.sbatch(
        _shard_script(dataset, out, 2, "0"), *options, *(["--requeue"] if how == "requeue" else []), env=env
    )
    _wait_for_cases(out, lambda: bool(slurm.states(job)))
    if how == "scancel":
        slurm.run("scancel", job)
        slurm.wait_gone(job)
        complete, _ = check_store(out, expected)  # what the kill left: only complete, correct cases
        assert complete < len(mine), "the job finished before it was cancelled"
        checked = _skelprep(slurm.env, "verify", str(dataset), "--out", str(out), "--no-data")
        assert checked.returncode == 1 and "shards: 0 of 2 done (not done: 0, 1)" in checked.stdout
        job = slurm.sbatch(_shard_script(dataset, out, 2, "0"), *options, env=env)  # resubmitted
    else:
        slurm.run("scontrol", "requeue", job)  # as Slurm does when it preempts a --requeue job
    slurm.wait_gone(job, timeout=240)
    assert slurm.job_state(job) == "COMPLETED"
    assert sorted(open_store(out).case_ids) == mine
    check_store(out, expected)
    checked = _skelprep(slurm.env, "verify", str(dataset), "--out", str(out))
    assert "shards: 1 of 2 done (not done: 1)" in checked.stdout, checked.stdout
    missing = [line for line in checked.stdout.splitlines() if line.startswith("missing")]
    assert sorted(line.split()[1].rstrip(":") for line in missing) == sorted(set(expected) - set(mine))
