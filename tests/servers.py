"""Real servers on 127.0.0.1 for the storage and cluster tests, started by the tests and stopped after them:
an S3 API server (moto in server mode, its own process: a real HTTP endpoint, no in-process patching), a Dask
scheduler and worker processes that share no folder, and a Prefect API server.

Processes are started with argument lists (never shell strings) and stopped by their own process id.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
          "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0, what: str = "server") -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def moto_s3(log_dir: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``python -m moto.server`` on a free loopback port; yields its endpoint URL. ``env``: moto's settings, e.g.
    ``INITIAL_NO_AUTH_ACTION_COUNT`` (after that many requests it enforces IAM: access keys and policies)."""
    port = free_port()
    log = open(log_dir / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        wait_port(port, proc, what="moto server")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


def fresh_s3fs() -> None:
    """fsspec caches filesystem instances by their arguments, not the environment: after pointing the AWS
    variables at another server (a new test module), drop the cached S3 filesystems."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def make_bucket(endpoint: str, name: str | None = None) -> str:
    import boto3

    name = name or f"b{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, **_boto_kw()).create_bucket(Bucket=name)
    return name


def _boto_kw() -> dict:
    return {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_REGION"]}


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, **_boto_kw())


def node_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one cluster node: its own HOME and TMPDIR, this checkout on PYTHONPATH, no
    inherited Prefect or AWS settings but the ones given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "DASK_"))}
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), TMPDIR=str(home / "tmp"), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
               DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.update(extra or {})
    return env


class DaskNodes:
    """A real ``dask scheduler`` and ``dask worker`` processes, each in its own folder (HOME, TMPDIR, working
    directory, ``--local-directory``): nodes that share no disk but the one the test watches."""

    def __init__(self, root: Path, n_workers: int, env: dict[str, str]):
        self.root, self.env = root, env
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.workers: list[subprocess.Popen] = []
        self.nodes: list[Path] = []
        sched_home = root / "scheduler"
        sched_home.mkdir(parents=True)
        self.scheduler = subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--dashboard-address", ":0",
             "--no-show"], cwd=sched_home, env=node_env(sched_home, env),
            stdout=open(sched_home / "log", "wb"), stderr=subprocess.STDOUT)
        wait_port(self.port, self.scheduler, what="dask scheduler")
        for i in range(n_workers):
            self.add_worker(f"w{i}")

    def add_worker(self, name: str, extra: tuple[str, ...] = ()) -> subprocess.Popen:
        """``extra``: more ``dask worker`` arguments, e.g. ``("--resources", "GPU=1")``."""
        home = self.root / name
        home.mkdir(parents=True)
        scratch = home / "dask-scratch"
        w = subprocess.Popen(
            [str(BIN / "dask"), "worker", self.address, "--nworkers", "1", "--nthreads", "1", "--name", name,
             "--local-directory", str(scratch), "--no-nanny", "--memory-limit", "3GB", "--dashboard-address", ":0", *extra],
            cwd=home, env=node_env(home, self.env), stdout=open(home / "log", "wb"), stderr=subprocess.STDOUT)
        self.workers.append(w)
        self.nodes.append(home)
        return w

    def wait_workers(self, n: int, timeout: float = 120.0) -> None:
        from distributed import Client

        with Client(self.address, timeout="30s") as c:
            c.wait_for_workers(n, timeout=timeout)

    def close(self) -> None:
        for w in self.workers:
            stop(w)
        stop(self.scheduler)


def files_outside_scratch(node: Path) -> list[str]:
    """Files a node wrote anywhere under its own folder except Dask's scratch space, its log and Python caches."""
    out = []
    for p in node.rglob("*"):
        rel = p.relative_to(node)
        if p.is_dir() or rel.parts[0] in ("dask-scratch", "log") or "__pycache__" in rel.parts:
            continue
        out.append(str(rel))
    return out


@contextmanager
def s3_environment(log_dir: Path) -> Iterator[str]:
    """A moto S3 server on loopback with the standard AWS variables of this process pointing at it (no project
    setting), restored afterwards. Yields the endpoint URL."""
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    with moto_s3(log_dir) as endpoint:
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
        fresh_s3fs()
        try:
            yield endpoint
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
