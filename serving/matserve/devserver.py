"""Start real ``matserve serve`` and ``matserve worker`` subprocesses on loopback (used by tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

MATSERVE = Path(sys.executable).parent / "matserve"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A running ``matserve serve``: its base URL and process (the leader of its own process group)."""

    url: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL the whole server (a crash: no graceful shutdown) and wait for it."""
        _signal_group(self.process, signal.SIGKILL)
        self.process.wait()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the process group and every descendant (BentoML's workers may leave the group: after a
    SIGKILL of the arbiter they would otherwise live on as orphans, holding CPU and ports)."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:  # already gone
        pass
    for child in descendants:
        try:
            child.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after ``timeout_s`` seconds."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def wait_until_ready(
    health_url: str, process: subprocess.Popen[bytes], timeout_s: float, log_path: Path | None = None
) -> None:
    """Block until ``health_url`` answers 200; raise RuntimeError with the log's tail if ``process`` exits first
    or ``timeout_s`` seconds pass (used for ``matserve serve`` and for ``tritonserver``)."""
    name = Path(str(process.args[0] if isinstance(process.args, list) else process.args)).name

    def tail() -> str:
        return log_path.read_text(errors="replace")[-4000:] if log_path and log_path.exists() else ""

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail()}")
        try:
            if httpx.get(health_url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready at {health_url} in {timeout_s} s:\n{tail()}")
        time.sleep(0.2)


@contextmanager
def server_process(
    models_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None, ready_timeout_s: float = 90
) -> Iterator[ServerProcess]:
    """Run ``matserve serve`` until the block ends; yields it once ``/readyz`` answers 200.

    Each server gets its own ``BENTOML_HOME`` (next to ``log_path``) unless ``extra_env`` sets one: BentoML
    empties ``$BENTOML_HOME/prometheus_multiproc_dir`` when a server starts, which would otherwise wipe the
    metrics of every other server running on the machine.

    Rate limiting is off (``MATSERVE_RATE_LIMIT_PER_MINUTE=0``) unless ``extra_env`` sets it: tests and
    benchmarks send thousands of requests from 127.0.0.1.
    """
    port = free_port()
    bentoml_home = log_path.parent / f"bentoml-home-{port}"
    env = {**os.environ, "MATSERVE_MODELS_DIR": str(models_dir), "BENTOML_HOME": str(bentoml_home),
           "MATSERVE_RATE_LIMIT_PER_MINUTE": "0", **(extra_env or {})}  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(MATSERVE), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/readyz", process, ready_timeout_s, log_path)
        yield ServerProcess(url=url, process=process)
    finally:
        _stop(process)


@contextmanager
def running_server(
    models_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None, ready_timeout_s: float = 90
) -> Iterator[str]:
    """Run ``matserve serve`` until the block ends; yields the base URL once ``/readyz`` answers 200."""
    with server_process(models_dir, log_path, extra_env, ready_timeout_s) as server:
        yield server.url


WORKER_READY_LINE = "serving jobs for"
"""What ``matserve worker`` logs once its models are loaded."""


@contextmanager
def running_worker(
    models_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None, ready_timeout_s: float = 60
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``matserve worker`` (needs ``REDIS_URL`` in the environment or ``extra_env``) until the block ends.

    Yields the process once it has loaded its models; the block may kill it (``process.kill()``).
    """
    env = {**os.environ, "MATSERVE_MODELS_DIR": str(models_dir), **(extra_env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(MATSERVE), "worker"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + ready_timeout_s
        while WORKER_READY_LINE not in log_path.read_text(errors="replace"):
            if process.poll() is not None:
                raise RuntimeError(f"worker exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready in {ready_timeout_s} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield process
    finally:
        _stop(process)
