"""The served HTTP API, called raw over loopback: good answers, and a clear 4xx for every kind of bad input."""

from __future__ import annotations

import json

import httpx
import pytest

ENDPOINT = "/v1/formation-enthalpy"


def post(url: str, body: object | None = None, *, content: bytes | None = None,
         content_type: str = "application/json") -> httpx.Response:  # fmt: skip
    data = content if content is not None else json.dumps(body).encode()
    return httpx.post(url + ENDPOINT, content=data, headers={"content-type": content_type}, timeout=60)


def assert_still_serving(url: str) -> None:
    response = post(url, {"formulas": ["NaCl", "Fe"]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["normalized_formula"] == "NaCl" and results[0]["formation_enthalpy_ev_per_atom"] < 0
    assert results[1]["formation_enthalpy_ev_per_atom"] == 0.0


def test_predicts_and_names_the_model_version(server_url: str) -> None:
    response = post(server_url, {"formulas": ["NaCl", "Fe2O3", "Ca(OH)2", "La0.7Sr0.3MnO3", "H2O", "Cu"]})
    assert response.status_code == 200, response.text
    body = response.json()
    models = httpx.get(server_url + "/v1/models").json()["models"]
    active = next(m for m in models if m["name"] == "formation_enthalpy")["active_version"]
    assert body["model"] == "formation_enthalpy" and body["version"] == active
    by_formula = {r["formula"]: r for r in body["results"]}
    assert [r["formula"] for r in body["results"]] == ["NaCl", "Fe2O3", "Ca(OH)2", "La0.7Sr0.3MnO3", "H2O", "Cu"]
    # Strongly bound ionic compounds: DFT formation enthalpies are well below zero.
    assert by_formula["NaCl"]["formation_enthalpy_ev_per_atom"] < -1.0
    assert by_formula["Fe2O3"]["formation_enthalpy_ev_per_atom"] < -1.0
    assert all(r["error"] is None for r in body["results"])
    assert all(r["uncertainty_ev_per_atom"] >= 0 for r in body["results"])
    assert by_formula["Cu"] == {"formula": "Cu", "normalized_formula": "Cu", "formation_enthalpy_ev_per_atom": 0.0,
                                "uncertainty_ev_per_atom": 0.0, "error": None}  # fmt: skip


def test_a_pinned_version_answers(server_url: str) -> None:
    models = httpx.get(server_url + "/v1/models").json()["models"]
    version = next(m for m in models if m["name"] == "formation_enthalpy")["versions"][0]["version"]
    response = post(server_url, {"formulas": ["NaCl"], "version": version})
    assert response.status_code == 200 and response.json()["version"] == version


def test_per_item_errors_say_which_formula_failed_and_why(server_url: str) -> None:
    response = post(server_url, {"formulas": ["NaCl", "Xx2", "NaCl(", "OgCl", "Na0"]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 5
    assert results[0]["error"] is None
    assert "unknown element symbol 'Xx'" in results[1]["error"]
    assert "unparseable formula 'NaCl('" in results[2]["error"]
    assert "Og" in results[3]["error"] and "outside the supported set" in results[3]["error"]
    assert "present 0 times" in results[4]["error"]
    assert all(r["formation_enthalpy_ev_per_atom"] is None for r in results[1:])


BAD_REQUESTS = [
    pytest.param({"formulas": []}, None, "application/json", 422, "at least 1 item", id="empty list"),
    pytest.param({"formulas": ["NaCl"] * 100_000}, None, "application/json", 413, "too many formulas", id="1e5 formulas"),
    pytest.param({"formulas": ["NaCl", 5]}, None, "application/json", 422, "formulas[1]: Input should be a valid string",
                 id="non-string item"),
    pytest.param({"formulas": ["A" * 1_000_000]}, None, "application/json", 422, "at most 256 characters",
                 id="1 MB string"),
    pytest.param(None, b'{"formulas": ["NaCl"', "application/json", 400, "not valid JSON", id="invalid JSON"),
    pytest.param(None, b'{"formulas": ["NaCl"]}', "text/plain", 415, "application/json", id="wrong content type"),
    pytest.param(None, b"x" * (5 * 1024 * 1024), "application/json", 413, "larger than the limit", id="5 MB body"),
    pytest.param({"formulas": ["NaCl"], "version": "9.9.9"}, None, "application/json", 404, "no valid version '9.9.9'",
                 id="unknown version"),
    pytest.param({"formula": "NaCl"}, None, "application/json", 422, "formulas: Field required", id="missing field"),
    pytest.param({"formulas": ["NaCl"], "verison": "1"}, None, "application/json", 422, "verison: Extra inputs",
                 id="misspelt field"),
    pytest.param(["NaCl"], None, "application/json", 422, "expected a JSON object", id="bare list"),
    pytest.param(None, b'{"formulas": [NaN]}', "application/json", 422, "formulas[0]: Input should be a valid string",
                 id="NaN item"),
    pytest.param({"formulas": "NaCl"}, None, "application/json", 422, "formulas: Input should be a valid array",
                 id="string instead of list"),
    pytest.param({"formulas": ["NaCl"], "version": 1.0}, None, "application/json", 422,
                 "version: Input should be a valid string", id="numeric version"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "raw", "content_type", "status", "message"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_with_a_message_and_the_server_keeps_serving(
    server_url: str, body: object, raw: bytes | None, content_type: str, status: int, message: str
) -> None:
    response = post(server_url, body, content=raw, content_type=content_type)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"], error
    assert error["type"]
    assert_still_serving(server_url)


def test_models_lists_the_registry_with_card_summaries(server_url: str) -> None:
    body = httpx.get(server_url + "/v1/models").json()
    model = next(m for m in body["models"] if m["name"] == "formation_enthalpy")
    assert model["served"] is True and model["max_batch_size"] >= 1000
    summary = model["versions"][-1]
    assert summary["metrics"]["test"]["mae_ev_per_atom"] > 0
    assert summary["outputs"][0]["unit"] == "eV/atom"


def test_health_metrics_and_openapi(server_url: str) -> None:
    assert httpx.get(server_url + "/readyz").status_code == 200
    assert httpx.get(server_url + "/livez").status_code == 200
    post(server_url, {"formulas": ["NaCl"]})
    metrics = httpx.get(server_url + "/metrics").text
    assert 'matserve_requests_total{model="formation_enthalpy",outcome="ok"' in metrics
    assert 'matserve_stage_duration_seconds_bucket{le="0.0001",model="formation_enthalpy",stage="predict"' in metrics
    spec = httpx.get(server_url + "/v1/openapi.json").json()
    assert "/formation-enthalpy" in spec["paths"] and "/models" in spec["paths"]
    assert httpx.get(server_url + "/v1/docs").status_code == 200
