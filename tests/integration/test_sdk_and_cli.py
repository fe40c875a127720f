"""The Python SDK (sync and async) and the ``matserve`` CLI against a real server."""

from __future__ import annotations

import json
import subprocess

import pytest

from matserve_client import AsyncClient, Client, InvalidInputError, MatserveConnectionError, NotFoundError
from tests.conftest import MATSERVE, free_port

FORMULAS = ["NaCl", "Fe2O3", "Ca(OH)2", "La0.7Sr0.3MnO3", "H2O"]


def test_sync_client_predicts_and_lists_models(server_url: str) -> None:
    with Client(server_url) as client:
        results = client.formation_enthalpy(FORMULAS)
        models = client.models()
        assert client.ready()
    assert [r.formula for r in results] == FORMULAS
    assert all(r.ok and r.model == "formation_enthalpy" for r in results)
    assert results[0].formation_enthalpy_ev_per_atom is not None and results[0].formation_enthalpy_ev_per_atom < -1
    assert any(m.name == "formation_enthalpy" and m.active_version == results[0].version for m in models)


async def test_async_client_gives_the_same_answers(server_url: str) -> None:
    with Client(server_url) as client:
        expected = client.formation_enthalpy(FORMULAS)
    async with AsyncClient(server_url) as client:
        results = await client.formation_enthalpy(FORMULAS)
        models = await client.models()
    assert results == expected
    assert models


def test_big_lists_are_chunked_transparently_and_keep_order(server_url: str) -> None:
    formulas = [f"Na{i % 7 + 1}Cl{i % 5 + 1}" for i in range(2500)] + ["Xx2"]
    with Client(server_url, chunk_size=1000) as client:
        results = client.formation_enthalpy(formulas, progress=True)
    assert [r.formula for r in results] == formulas
    assert len({r.version for r in results}) == 1
    assert results[-1].error and "Xx" in results[-1].error and not results[-1].ok


def test_sdk_raises_typed_errors(server_url: str) -> None:
    with Client(server_url) as client:
        with pytest.raises(NotFoundError, match=r"9\.9\.9"):
            client.formation_enthalpy(["NaCl"], version="9.9.9")
    with Client(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0) as client:
        with pytest.raises(MatserveConnectionError):
            client.formation_enthalpy(["NaCl"])
    assert issubclass(NotFoundError, Exception) and issubclass(InvalidInputError, Exception)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MATSERVE), *args], capture_output=True, text=True, timeout=60)


def test_cli_predicts_as_table_and_json(server_url: str) -> None:
    table = run_cli("predict", "formation-enthalpy", "NaCl", "Fe2O3", "--url", server_url)
    assert table.returncode == 0, table.stderr
    assert "NaCl" in table.stdout and "Fe2O3" in table.stdout and "# model formation_enthalpy" in table.stdout
    as_json = run_cli("predict", "formation-enthalpy", "NaCl", "Xx2", "--url", server_url, "--json")
    assert as_json.returncode == 1  # one formula failed: non-zero exit, but every result is printed
    rows = json.loads(as_json.stdout)
    assert rows[0]["formation_enthalpy_ev_per_atom"] < 0 and "Xx" in rows[1]["error"]


def test_cli_models_and_registry(server_url: str) -> None:
    models = run_cli("models", "--url", server_url)
    assert models.returncode == 0 and "formation_enthalpy: active" in models.stdout
    registry = run_cli("registry", "list")
    assert registry.returncode == 0 and "(active)" in registry.stdout


def test_cli_reports_an_unreachable_server(server_url: str) -> None:
    result = run_cli("models", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert result.returncode == 1 and "error:" in result.stderr
