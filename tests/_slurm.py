"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd on 127.0.0.1.

Everything lives in a temporary folder: a scratch munge key and socket, a slurm.conf with free
ports, the controller's state and the node's spool. The daemons are started as processes of the
test run (in the foreground, ``-D``) and stopped by their PIDs. Where the binaries are missing
the tests that need the cluster skip with one line saying why; with ``CI`` set that is a failure
(``.ci/run`` installs Debian's ``slurmctld slurmd munge slurm-client``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel", "scontrol")
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))


def missing() -> str | None:
    """Why no Slurm can be started here, or None."""
    absent = [b for b in BINARIES if _which(b) is None]
    if absent:
        return f"no Slurm here ({', '.join(absent)} not found; apt-get install slurmctld slurmd munge slurm-client)"
    if os.geteuid() != 0:
        return "the test Slurm runs its daemons as root (SlurmUser=root); not root here"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Slurm:
    """A running test cluster: ``env`` points Slurm's commands at it (``SLURM_CONF``)."""

    folder: Path
    conf: Path
    env: dict[str, str]
    processes: list[subprocess.Popen]

    def run(
        self, *args: str, check: bool = True, timeout: float = 30, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """A Slurm command (``sbatch``, ``squeue``, ...) against this cluster (``env``: the job's, for sbatch)."""
        return subprocess.run(
            [_which(args[0]) or args[0], *args[1:]],
            env=self.env if env is None else {**env, "SLURM_CONF": self.env["SLURM_CONF"]},
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def sbatch(self, script: str, *options: str, env: dict[str, str] | None = None) -> str:
        """Submit a batch script (its text) with ``env`` exported to the job; return the job id."""
        path = self.folder / f"job-{time.monotonic_ns()}.sh"
        path.write_text(script)
        out = self.run("sbatch", "--parsable", *options, str(path), env=env).stdout
        return out.strip().split(";")[0]

    def states(self, job: str) -> dict[str, str]:
        """``{job id (array tasks as <id>_<i>): state}`` of a job still known to the controller."""
        out = self.run("squeue", "-h", "-r", "-j", job, "-o", "%i %T", check=False).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_gone(self, job: str, timeout: float = 120) -> None:
        """Wait until every task of the job has left the queue (ended in any way)."""
        deadline = time.monotonic() + timeout
        while self.states(job):
            if time.monotonic() > deadline:
                raise AssertionError(f"Slurm job {job} still queued after {timeout} s: {self.states(job)}")
            time.sleep(0.2)

    def job_state(self, job: str) -> str:
        """The state of a job, also after it ended (``scontrol show job`` keeps it a while)."""
        out = self.run("scontrol", "-o", "show", "job", job, check=False).stdout
        for part in out.split():
            if part.startswith("JobState="):
                return part.split("=", 1)[1]
        return "UNKNOWN"


def _conf(folder: Path, munge_socket: Path) -> str:
    state, spool = folder / "state", folder / "spool"
    state.mkdir()
    spool.mkdir()
    return f"""\
ClusterName=skelpreptest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (120 s by default)
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=200
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _stop(processes: list[subprocess.Popen]) -> None:
    for proc in reversed(processes):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-15:])
    except OSError:
        return ""


def start(folder: Path) -> Iterator[Slurm]:
    """Start munged, slurmctld and slurmd from a scratch configuration in ``folder``; stop them after."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)  # munged refuses a key or socket in a folder others may write
    munge = folder / "munge"
    munge.mkdir(mode=0o700)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = munge / "munge.socket"
    conf = folder / "slurm.conf"
    conf.write_text(_conf(folder, munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    env.pop("SLURM_JOB_ID", None)  # the test run may itself be a Slurm job elsewhere
    processes: list[subprocess.Popen] = []
    devnull = subprocess.DEVNULL
    try:
        processes.append(
            subprocess.Popen(
                [
                    _which("munged"),
                    "--foreground",
                    "--force",  # run as root, and in a temporary folder
                    f"--key-file={key}",
                    f"--socket={munge_socket}",
                    f"--pid-file={munge}/munged.pid",
                    f"--log-file={munge}/munged.log",
                    f"--seed-file={munge}/munged.seed",
                    "--num-threads=2",
                ],
                stdout=devnull,
                stderr=devnull,
            )
        )
        deadline = time.monotonic() + 20
        while not munge_socket.exists():
            if processes[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start:\n{_tail(munge / 'munged.log')}")
            time.sleep(0.05)
        for cmd in (
            ["slurmctld", "-D", "-i", "-f", str(conf)],
            ["slurmd", "-D", "-N", "localhost", "-f", str(conf)],
        ):
            processes.append(
                subprocess.Popen([_which(cmd[0]), *cmd[1:]], env=env, stdout=devnull, stderr=devnull)
            )
        cluster = Slurm(folder, conf, env, processes)
        deadline = time.monotonic() + 60
        while True:
            out = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10).stdout.strip()
            if out == "idle":
                break
            dead = [p.args[0] for p in processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the test Slurm did not come up (node state {out!r}, exited: {dead}):\n"
                    f"{_tail(folder / 'slurmctld.log')}\n{_tail(folder / 'slurmd.log')}"
                )
            time.sleep(0.2)
        yield cluster
    finally:
        _stop(processes)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[Slurm]:
    """A running single-node Slurm cluster (session-wide); skips where there is none, fails under CI."""
    why = missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Slurm: {why}")
        pytest.skip(why)
    yield from start(tmp_path_factory.mktemp("slurm"))
