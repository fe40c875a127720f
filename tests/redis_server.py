"""A real ``redis-server`` subprocess on a free loopback port, for the tests (no fakes, no mocks).

``make test`` installs redis-server from Debian (target ``redis-server``); when it is missing the tests that
need it fail with a message saying so, rather than being skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from matserve.devserver import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """One redis-server process without persistence; can be killed, paused and started again on its port.

    Parameters
    ----------
    workdir : Path
        Its working directory (log file ``redis.log`` goes there).
    """

    def __init__(self, workdir: Path) -> None:
        if not Path(REDIS_SERVER).exists():
            raise RuntimeError(
                "redis-server is not installed; the Redis tests need a real one: run `make redis-server` "
                "(apt-get install redis-server)"
            )
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 10.0) -> None:
        """Start (or restart, empty) the server on :attr:`port` and wait until it answers PING."""
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self._log_tail()}")
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server not ready in {ready_timeout_s} s: {self._log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (its data is lost) and wait for it to be gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung Redis)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (resuming it first if paused)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self) -> redis.Redis:
        """A client with short timeouts."""
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def _log_tail(self) -> str:
        log = self.workdir / "redis.log"
        return log.read_text()[-2000:] if log.exists() else "(no log)"
