"""Fixtures shared by the Triton test modules: one generated model repository and one real ``tritonserver``.

``tests/integration/test_triton.py`` and ``tests/integration/test_triton_parity.py`` share them (one server start,
~20-30 s on 2 cores, per test session instead of one per module).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from matserve.registry import Registry
from matserve.triton.repository import build_repository
from matserve.triton.server import TritonEndpoints, running_triton
from tests.conftest import MODELS_DIR


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU repository ``matserve triton build-repo`` generates from ``models/``, one ORT thread per model."""
    out = tmp_path_factory.mktemp("triton") / "repo"
    build_repository(Registry(MODELS_DIR), out, target="cpu")
    for config in out.glob("*/config.pbtxt"):  # one ORT thread per model: the machine has 2 cores
        config.write_text(config.read_text().replace('"intra_op_threads" value { string_value: "0" }',
                                                     '"intra_op_threads" value { string_value: "1" }'))  # fmt: skip
    return out


@pytest.fixture(scope="session")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonEndpoints]:
    """The real tritonserver on :func:`repository` (free loopback ports).

    Its domain models import numba kernels: they get their own ``NUMBA_CACHE_DIR``, as the API server of
    ``tests/conftest.py`` does, so that no process reads a numba cache file another one is writing."""
    workdir = tmp_path_factory.mktemp("triton-log")
    env = {"NUMBA_CACHE_DIR": str(workdir / "numba"), "OMP_NUM_THREADS": "1"}
    with running_triton(repository, workdir / "triton.log", env=env) as endpoints:
        yield endpoints
