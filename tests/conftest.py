"""Shared fixtures: real matserve servers (and a real redis-server) started as subprocesses on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from matserve.devserver import MATSERVE, free_port, running_server
from tests.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"

__all__ = ["MATSERVE", "MODELS_DIR", "REPO", "free_port", "running_server"]
SUITES = ("unit", "integration", "quality")
"""Test folders; each test gets the marker of its folder (``pytest -m unit`` is ``make test-unit``)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its suite (its folder under ``tests/``)."""
    for item in items:
        suite = Path(item.path).relative_to(REPO / "tests").parts[0]
        if suite in SUITES:
            item.add_marker(getattr(pytest.mark, suite))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server over the repository's committed registry, shared by the integration tests.

    ``MATSERVE_EBSD_PRELOAD``: the EBSD refinement's one-time set-up (kikuchipy import, dictionary, numba
    compilation: ~80 s cold on 2 cores) runs in the background from start-up, as in production, not inside the
    first refinement request's timeout. Meanwhile the test process imports orix and kikuchipy too, which load
    and write the same numba caches (``__pycache__`` of the installed packages and of ``matserve``): a process
    reading a cache file the other is writing crashed (a segfault in orix's import in one CI run). So the server
    keeps its own cache (``NUMBA_CACHE_DIR``)."""
    workdir = tmp_path_factory.mktemp("server")
    env = {"MATSERVE_ORT_THREADS": "1", "MATSERVE_EBSD_PRELOAD": "1", "NUMBA_CACHE_DIR": str(workdir / "numba")}
    with running_server(MODELS_DIR, workdir / "server.log", env) as url:
        yield url


@dataclass
class RedisStack:
    """A real redis-server and a ``matserve serve`` using it (prediction cache and jobs, one embedded worker)."""

    redis: RedisServer
    url: str
    log_path: Path
    env: dict[str, str]


REDIS_STACK_ENV = {
    "MATSERVE_ORT_THREADS": "1",
    "MATSERVE_CACHE_TTL_S": "600",
    "MATSERVE_REDIS_RETRY_AFTER_S": "1",
    "MATSERVE_JOB_CHUNK_SIZE": "200",
    "MATSERVE_JOB_CLAIM_IDLE_S": "2",
    "MATSERVE_JOB_CHUNK_PAUSE_S": "0.05",
    "MATSERVE_MAX_JOB_ITEMS": "20000",
    "MATSERVE_MAX_JOB_BODY_BYTES": str(8 * 1024 * 1024),
    "MATSERVE_EMBEDDED_WORKERS": "1",
}
"""Settings of :func:`redis_stack`: small chunks, a short breaker period and claim idle time, slowed chunks."""


@pytest.fixture(scope="session")
def redis_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisStack]:
    """Shared by the cache and job tests; a test that kills or pauses Redis starts it again before it ends."""
    workdir = tmp_path_factory.mktemp("redis-stack")
    redis_server = RedisServer(workdir)
    redis_server.start()
    env = {**REDIS_STACK_ENV, "REDIS_URL": redis_server.url}
    log = workdir / "server.log"
    try:
        with running_server(MODELS_DIR, log, env) as url:
            yield RedisStack(redis=redis_server, url=url, log_path=log, env=env)
    finally:
        redis_server.stop()
