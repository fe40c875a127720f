"""Hostile and careless requests (not uploads: see test_hostile_uploads.py) against a real server.

Each request is one an attacker or a careless user sent to a fresh ``make serve``. Each must get its 4xx in the one
error envelope ``{"error": {"type", "message"}}`` (the message says what was wrong and what is accepted), and the
server must go on answering a valid request with the same numbers as before.
"""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from tests.conftest import MODELS_DIR

FORMATION = "/v1/formation-enthalpy"
JOBS = "/v1/jobs"


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def nacl(client: httpx.Client) -> float:
    """The prediction for NaCl before any hostile request."""
    return client.post(FORMATION, json={"formulas": ["NaCl"]}).json()["results"][0]["formation_enthalpy_ev_per_atom"]


def assert_envelope(response: httpx.Response, status: int, error_type: str, *words: str) -> dict[str, Any]:
    """The response has ``status`` and the one error envelope, whose message contains every word."""
    assert response.status_code == status, response.text[:2000]
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["type"] == error_type, body
    for word in words:
        assert word in body["error"]["message"], body
    return body


def assert_still_serving(client: httpx.Client, nacl: float) -> None:
    answer = client.post(FORMATION, json={"formulas": ["NaCl"]})
    assert answer.status_code == 200
    assert answer.json()["results"][0]["formation_enthalpy_ev_per_atom"] == pytest.approx(nacl, abs=1e-6)


JSON_HEADERS = {"content-type": "application/json"}
DEEP = b"[" * 100_000 + b"]" * 100_000
BIG_INTEGER = b'{"formulas": [' + b"9" * 100_000 + b"]}"


@pytest.mark.parametrize("path", [FORMATION, JOBS, "/v1/xrd/phase"])
@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'\xff\xfe{"formulas": ["NaCl"]}', ["not valid JSON"]),  # not UTF-8
        (DEEP, ["not valid JSON", "recursion limit"]),  # nested 10^5 levels
        (BIG_INTEGER, ["not valid JSON", "number out of range"]),  # a 100,000-digit integer
        (b'{"formulas": ["NaCl"]', ["not valid JSON"]),  # cut short
        (b"", ["not valid JSON"]),
    ],
    ids=["non-utf8", "deep", "big-integer", "truncated", "empty"],
)
def test_bodies_the_parser_cannot_read_get_a_400_in_the_envelope(
    client: httpx.Client, nacl: float, path: str, body: bytes, words: list[str]
) -> None:
    response = client.post(path, content=body, headers=JSON_HEADERS)
    assert_envelope(response, 400, "malformed_request", *words, "expected e.g.")
    assert_still_serving(client, nacl)


@pytest.mark.parametrize("path", [FORMATION, JOBS])
def test_compressed_bodies_are_refused_with_a_415(client: httpx.Client, nacl: float, path: str) -> None:
    body = gzip.compress(json.dumps({"formulas": ["NaCl"]}).encode())
    response = client.post(path, content=body, headers={**JSON_HEADERS, "content-encoding": "gzip"})
    assert_envelope(response, 415, "unsupported_media_type", "'gzip'", "uncompressed")
    assert_still_serving(client, nacl)


@pytest.mark.parametrize(
    ("formula", "words"),
    [
        ("Na1e308Cl", ["1e+308 Na atoms", "between 1e-06 and 1e+06"]),
        ("Na99999999999999999999999999Cl", ["1e+26 Na atoms"]),
        ("Na0Cl", ["present 0 times"]),
    ],
)
def test_absurd_stoichiometry_gets_a_per_item_error(client: httpx.Client, formula: str, words: list[str]) -> None:
    response = client.post(FORMATION, json={"formulas": ["NaCl", formula]})
    assert response.status_code == 200
    good, bad = response.json()["results"]
    assert good["error"] is None and good["formation_enthalpy_ev_per_atom"] is not None
    assert bad["formation_enthalpy_ev_per_atom"] is None and bad["normalized_formula"] is None
    for word in words:
        assert word in bad["error"]


PATTERN = {"two_theta_deg": [20.0 + 0.05 * i for i in range(1401)], "intensity": [1.0] * 1401}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"pattern": None, "patterns": None}, ["'pattern' is null"]),
        ({"pattern": None, "patterns": [PATTERN]}, ["'pattern' is null"]),
        ({}, ["send either 'pattern'", "neither"]),
        ({"pattern": PATTERN, "patterns": [PATTERN]}, ["send either 'pattern'", "both"]),
    ],
)
def test_xrd_requests_need_exactly_one_of_pattern_and_patterns(
    client: httpx.Client, body: dict[str, Any], words: list[str]
) -> None:
    assert_envelope(client.post("/v1/xrd/phase", json=body), 422, "invalid_input", *words)


def test_job_inputs_are_validated_for_their_model(client: httpx.Client) -> None:
    response = client.post(JOBS, json={"model": "formation_enthalpy", "inputs": [{}]})
    assert_envelope(response, 422, "invalid_input", "inputs[0]", "valid string")


@pytest.mark.parametrize(
    ("method", "path", "status", "error_type", "words"),
    [
        ("GET", "/v1/nothing-here", 404, "not_found", ["no route /v1/nothing-here", "/v1/docs"]),
        ("POST", "/v1/formation-enthalpy/unknown", 404, "not_found", ["no route"]),
        ("PUT", "/v1/models", 405, "method_not_allowed", ["PUT", "allowed: GET"]),
        ("DELETE", "/v1/jobs", 405, "method_not_allowed", ["allowed: POST"]),
        ("GET", "/v1/jobs/no-such-job", 404, "not_found", ["unknown job"]),
    ],
)
def test_unknown_routes_and_methods_answer_in_the_envelope(
    client: httpx.Client, method: str, path: str, status: int, error_type: str, words: list[str]
) -> None:
    response = client.request(method, path, json={} if method in ("POST", "PUT") else None)
    assert_envelope(response, status, error_type, *words)


def test_admin_reload_without_a_body_is_not_a_415(server_url: str) -> None:
    """``curl -X POST …/reload`` (no body, no Content-Length, no Content-Type) reaches the route: here 403, as the
    test server has no admin token (tests/integration/test_admin.py reloads for real)."""
    url = httpx.URL(server_url)
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/admin/registry/reload HTTP/1.1\r\nHost: {url.host}\r\nConnection: close\r\n\r\n".encode()
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == b"403", raw[:500]
    assert json.loads(body)["error"]["type"] == "forbidden"


def test_no_answer_shows_a_server_path(client: httpx.Client) -> None:
    listing = client.get("/v1/models").text
    for path in (str(MODELS_DIR), str(MODELS_DIR.parent), "/tmp/"):
        assert path not in listing


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def test_every_openapi_reference_resolves(client: httpx.Client) -> None:
    document = client.get("/v1/openapi.json").json()
    references = set(_references(document))
    assert references, "the document has no references at all"
    for reference in references:
        assert reference.startswith("#/"), reference
        node: Any = document
        for part in reference[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"{reference} does not resolve"
            node = node[part]
    schemas = list(document["components"]["schemas"].values())
    for operations in document["paths"].values():
        for operation in operations.values():
            for content in operation.get("requestBody", {}).get("content", {}).values():
                schemas.append(content["schema"])
    for schema in schemas:  # every schema is a valid JSON Schema (OpenAPI 3.1 uses draft 2020-12)
        Draft202012Validator.check_schema(schema)
    xrd = document["paths"]["/xrd/phase"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert xrd["oneOf"] == [{"required": ["pattern"]}, {"required": ["patterns"]}]
    assert "anyOf" not in xrd["properties"]["pattern"]  # not nullable: the server refuses null too
    jobs = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    formation = next(o for o in jobs["oneOf"] if o["properties"]["model"]["const"] == "formation_enthalpy")
    assert formation["properties"]["inputs"]["items"]["type"] == "string"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            documented = set(operation.get("responses", {}))
            if path.startswith("/admin") or method == "get":
                continue
            assert {"400", "413", "415", "422", "429"} <= documented, (path, method, documented)


@pytest.mark.parametrize("path", ["/v1/ebsd/index", "/v1/scattering/sort"])
def test_large_json_image_bodies_are_refused_before_parsing(client: httpx.Client, nacl: float, path: str) -> None:
    """Numbers in JSON take ~11x their text's size once parsed: image routes take at most 16 MiB of JSON (binary
    files keep their own limit), refused from Content-Length before a byte is parsed."""
    rows = ",".join(["[" + ",".join(["123.5"] * 1000) + "]"] * 3000)  # ~18 MiB of one huge "image"
    body = ('{"image": [' + rows + "]}" if "scattering" in path else '{"pattern": [' + rows + "]}").encode()
    response = client.post(path, content=body, headers=JSON_HEADERS)
    assert_envelope(response, 413, "payload_too_large", "MATSERVE_MAX_IMAGE_JSON_BODY_BYTES", "binary files")
    assert_still_serving(client, nacl)
