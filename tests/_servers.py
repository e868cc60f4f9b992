"""Real servers for the remote tests, on 127.0.0.1 only: an S3 server (moto), a link to it that can be
cut (:class:`Link`) and a Dask cluster.

Each is a subprocess on a free port, waited for with a bounded loop and always
killed at the end. No traffic leaves the loopback interface.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .helpers import ROOT

# Generous: the CI machine has 2 cores shared with other jobs; a cold moto or dask start takes seconds.
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    """Terminate a subprocess we started, then kill it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def base_env() -> dict[str, str]:
    """This environment with the worktree importable and no proxy for loopback."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


@dataclass
class S3Server:
    """A moto S3 server with authentication on, and the credentials of one user allowed everything."""

    endpoint: str
    key: str
    secret: str
    proc: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def s3_server(tmp: Path) -> Iterator[S3Server]:
    """Start ``moto_server`` on a free loopback port; its first 3 requests create the test user.

    With ``INITIAL_NO_AUTH_ACTION_COUNT`` moto checks every later request's
    signature against its own IAM users, so wrong credentials are refused as on AWS.
    """
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import boto3

    port = free_port()
    env = {**base_env(), "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    log = open(tmp / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_for_port(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **admin)
        iam.create_user(UserName="skelprep")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="skelprep", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="skelprep")["AccessKey"]
        server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], proc)
        server.env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": server.key,
            "AWS_SECRET_ACCESS_KEY": server.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        yield server
    finally:
        stop(proc)
        log.close()


class Link:
    """A TCP forwarder on 127.0.0.1 in front of a loopback server, whose link can be cut and mended.

    :meth:`cut` closes the listening socket and every forwarded connection, so a
    client's requests fail as they do when a network drops: connections in flight
    break, new ones are refused. :meth:`mend` listens on the same port again.
    """

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.mend()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mend(self) -> None:
        """Listen (again) on this link's port and forward what arrives."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and break the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._open = self._open, set()
        for s in ([listener] if listener is not None else []) + list(conns):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut: the listener is closed
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._open -= {src, dst}
        src.close()  # the other pump closes dst, once its recv returns


@contextlib.contextmanager
def link_to(server: S3Server) -> Iterator[Link]:
    """A :class:`Link` in front of ``server``, closed at the end."""
    link = Link(int(server.endpoint.rsplit(":", 1)[1]))
    try:
        yield link
    finally:
        link.cut()


@dataclass
class DaskCluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]


@contextlib.contextmanager
def dask_cluster(
    tmp: Path, n_workers: int = 2, env: Mapping[str, str] | None = None
) -> Iterator[DaskCluster]:
    """``dask scheduler`` and ``n_workers`` ``dask worker`` processes (one thread, no nanny) on loopback.

    Without a nanny, a worker's pid is the process that runs the tasks: SIGKILL on
    it is a machine that dies mid-case.
    """
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**base_env(), **(env or {}), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        log = open(tmp / "scheduler.log", "wb")
        logs.append(log)
        scheduler = subprocess.Popen(
            [*dask, "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0", "--no-show"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        procs.append(scheduler)
        wait_for_port(port, scheduler)
        workers = []
        for i in range(n_workers):
            log = open(tmp / f"worker{i}.log", "wb")
            logs.append(log)
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--host",
                    "127.0.0.1",
                    "--dashboard-address",
                    ":0",
                    "--name",
                    f"w{i}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            procs.append(worker)
            workers.append(worker)
        from dask.distributed import Client

        if n_workers:
            with Client(address, timeout="60s") as client:
                client.wait_for_workers(n_workers, timeout=START_TIMEOUT)
        yield DaskCluster(address, scheduler, workers)
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()


# Keys whose values name when or where a build ran, or which write of a case it was (the write token
# readers confirm against): everything else must be equal byte for byte.
VOLATILE = {"built", "created", "updated", "dataset", "generation"}


def _strip(meta):
    if isinstance(meta, dict):
        return {k: _strip(v) for k, v in meta.items() if k not in VOLATILE}
    if isinstance(meta, list):
        return [_strip(v) for v in meta]
    return meta


def store_objects(fs, root: str) -> dict[str, bytes]:
    """Every object of a store by its key below the store: chunk bytes as they are, metadata without
    the keys that say when and where it was built."""
    root = fs._strip_protocol(root).rstrip("/")
    out = {}
    for path in fs.find(root):
        key = path[len(root) + 1 :]
        data = fs.cat_file(path)
        if key.endswith("zarr.json"):
            data = json.dumps(_strip(json.loads(data)), sort_keys=True).encode()
        out[key] = data
    return out
