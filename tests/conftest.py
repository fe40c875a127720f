"""Shared fixtures: a real matserve server started as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"
MATSERVE = Path(sys.executable).parent / "matserve"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(models_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start ``matserve serve`` on a free port, wait until ``/readyz`` answers 200, stop it afterwards."""
    port = free_port()
    env = {**os.environ, "MATSERVE_MODELS_DIR": str(models_dir), "MATSERVE_ORT_THREADS": "1", **(extra_env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(MATSERVE), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in 90 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server over the repository's committed registry, shared by the integration tests."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(MODELS_DIR, log) as url:
        yield url
