"""Shared fixtures: a real matserve server started as a subprocess on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from matserve.devserver import MATSERVE, free_port, running_server

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"

__all__ = ["MATSERVE", "MODELS_DIR", "REPO", "free_port", "running_server"]


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server over the repository's committed registry, shared by the integration tests."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(MODELS_DIR, log, {"MATSERVE_ORT_THREADS": "1"}) as url:
        yield url
