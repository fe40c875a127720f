"""The API modules in-process: apps built by :func:`matserve.service.build_app` with their own settings, served
through ``httpx.ASGITransport`` (no BentoML, no server subprocess, no Triton, no Redis).

What only in-process apps can show: settings are read when the app is built (two apps, two limits, in one
process), every model's answer passes through its wire schema without losing a field, and the routers give the
same answers as the lifecycle they call.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from pydantic import BaseModel

from matserve.api.context import ServingContext
from matserve.codecs.xrd import MODEL_GRID_DEG
from matserve.service import build_app
from matserve_client import wire
from tests.unit.conftest import asgi_client, settings_for


def _pattern(seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    intensity = rng.random(2048) * 0.05
    for centre in rng.uniform(25, 85, 6):
        intensity += np.exp(-0.5 * ((MODEL_GRID_DEG - centre) / 0.1) ** 2)
    return {"two_theta_deg": MODEL_GRID_DEG.tolist(), "intensity": intensity.tolist()}


def _assert_close(got: object, expected: object, where: str = "result") -> None:
    """Equal structure and strings, numbers within 1e-6 relative (JSON writes float32 values as float64)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            _assert_close(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, list) and len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            _assert_close(g, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-9), where
    else:
        assert got == expected, where


def _fields(schema: type[BaseModel]) -> set[str]:
    return set(schema.model_fields)


async def test_settings_are_read_when_the_app_is_built(context: ServingContext) -> None:
    """Two apps in one process, two formula limits: each app's route, error message and OpenAPI say its own."""
    formulas = ["NaCl", "KCl", "LiF", "MgO"]
    async for small in asgi_client(context, settings_for(max_formulas=3)):
        refused = await small.post("/formation-enthalpy", json={"formulas": formulas})
        assert refused.status_code == 413
        assert "at most 3 per request" in refused.json()["error"]["message"]
        schema = (await small.get("/openapi.json")).json()
        body = schema["paths"]["/formation-enthalpy"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["formulas"]["maxItems"] == 3
    async for large in asgi_client(context, settings_for(max_formulas=1000)):
        answered = await large.post("/formation-enthalpy", json={"formulas": formulas})
        assert answered.status_code == 200 and len(answered.json()["results"]) == 4


async def test_formation_enthalpy_answer_is_the_lifecycle_answer_through_the_wire_schema(
    client: httpx.AsyncClient, context: ServingContext
) -> None:
    formulas = ["NaCl", "Fe2O3", "Xx2O"]
    response = await client.post("/formation-enthalpy", json={"formulas": formulas})
    assert response.status_code == 200
    direct = context.models["formation_enthalpy"](formulas, None)
    _assert_close(response.json()["results"], direct.results)
    assert set(direct.results[0]) <= _fields(wire.FormationEnthalpyResult)  # no field is dropped by the schema
    assert response.json()["results"][2]["error"]  # the unknown element is named per item


async def test_xrd_answers_keep_every_field_of_the_lifecycle(
    client: httpx.AsyncClient, context: ServingContext
) -> None:
    patterns = [_pattern(seed) for seed in range(3)]
    for path, name, schema in (("/xrd/phase", "xrd_phase", wire.XrdPhaseResult),
                               ("/xrd/novelty", "xrd_novelty", wire.XrdNoveltyResult)):  # fmt: skip
        response = await client.post(path, json={"patterns": patterns})
        assert response.status_code == 200, response.text
        direct = context.models[name](patterns, None).results
        assert set(direct[0]) <= _fields(schema)
        _assert_close(response.json()["results"], direct)


async def test_ebsd_and_scattering_answers_keep_every_field(client: httpx.AsyncClient) -> None:
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    np.save(buffer, rng.random((2, 60, 60)).astype(np.float32) + np.linspace(0, 1, 60, dtype=np.float32))
    ebsd = await client.post("/ebsd/index", content=buffer.getvalue(), headers={"content-type": "application/x-npy"})
    assert ebsd.status_code == 200, ebsd.text
    assert set(ebsd.json()["results"][0]) == _fields(wire.EbsdResult)
    image = {"image": (rng.poisson(5.0, (64, 64)) + 1).tolist()}
    sorted_ = await client.post("/scattering/sort", json=image)
    assert sorted_.status_code == 200, sorted_.text
    assert set(sorted_.json()["results"][0]) == _fields(wire.ScatteringResult)


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status"),
    [
        ("/formation-enthalpy", b'{"formulas": [', "application/json", 400),
        ("/formation-enthalpy", b'{"formulas": []}', "application/json", 422),
        ("/xrd/phase", b'{"pattern": null}', "application/json", 422),
        ("/xrd/phase", b"\x00\x01", "text/plain", 415),
        ("/ebsd/index", b"not an image", "image/png", 422),
        ("/scattering/sort", b"\x93NUMPY\x01\x00\xff\xff", "application/x-npy", 422),
        ("/jobs", b'{"model": "nope", "inputs": ["NaCl"]}', "application/json", 404),
    ],
)
async def test_hostile_bodies_get_the_error_envelope(
    client: httpx.AsyncClient, path: str, body: bytes, content_type: str, status: int
) -> None:
    response = await client.post(path, content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message"} and len(error["message"]) > 10
    assert (await client.post("/formation-enthalpy", json={"formulas": ["NaCl"]})).status_code == 200


async def test_routes_wait_for_the_context(context: ServingContext) -> None:
    """An app whose service has not started answers 503 in the envelope, not a 500."""
    app = build_app(context.settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://matserve") as client:
        response = await client.post("/formation-enthalpy", json={"formulas": ["NaCl"]})
    assert response.status_code == 503 and "starting" in response.json()["error"]["message"]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("path", ["/xrd/phase", "/xrd/novelty"])
async def test_binary_xrd_bodies_answer_as_json_does(client: httpx.AsyncClient, path: str) -> None:
    """The same patterns as JSON, as an (n, 2048) NPY on the model grid, as (n, 2, m) NPY on another grid (compared
    with JSON on that grid), and as multipart .xy files: the same answers, in order."""
    patterns = [_pattern(seed) for seed in range(4)]
    as_json = (await client.post(path, json={"patterns": patterns})).json()["results"]
    grid = np.asarray([p["intensity"] for p in patterns], dtype=np.float64)
    on_grid = await client.post(path, content=_npy(grid), headers={"content-type": "application/x-npy"})
    assert on_grid.status_code == 200, on_grid.text
    _assert_close(on_grid.json()["results"], as_json)

    coarse = np.linspace(15.0, 95.0, 3001)
    pairs = np.stack([np.stack([coarse, np.interp(coarse, MODEL_GRID_DEG, row)]) for row in grid])
    coarse_json = [{"two_theta_deg": coarse.tolist(), "intensity": pair[1].tolist()} for pair in pairs]
    expected = (await client.post(path, json={"patterns": coarse_json, "wavelength_angstrom": 1.5406})).json()
    binary = await client.post(path + "?wavelength_angstrom=1.5406", content=_npy(pairs),
                               headers={"content-type": "application/x-npy"})  # fmt: skip
    assert binary.status_code == 200, binary.text
    _assert_close(binary.json()["results"], expected["results"])

    files = [("files", (f"p{i}.xy", "\n".join(f"{x} {y}" for x, y in zip(MODEL_GRID_DEG, row, strict=True))))
             for i, row in enumerate(grid)]  # fmt: skip
    multipart = await client.post(path, files=files)
    assert multipart.status_code == 200, multipart.text
    results = multipart.json()["results"]
    assert [r.pop("source") for r in results] == [f"p{i}.xy" for i in range(4)]
    _assert_close(results, as_json)


@pytest.mark.parametrize(
    ("query", "body", "status", "says"),
    [
        ("", b"\x93NUMPY\x01\x00\x10\x00{'descr': '|O'}", 422, "NPY"),
        ("", b"not an npy file at all", 422, "NPY"),
        ("?wavelength_angstrom=9", "grid", 422, "wavelength_angstrom"),
        ("?plot=true", "grid", 422, "unknown query parameter"),
        ("", "huge", 413, ""),
        ("", "nan", 422, "patterns[1]"),
    ],
)
async def test_hostile_binary_xrd_bodies(client: httpx.AsyncClient, query: str, body: object, status: int,
                                         says: str) -> None:  # fmt: skip
    if body == "grid":
        body = _npy(np.random.default_rng(0).random((2, 2048)))
    elif body == "nan":
        array = np.random.default_rng(0).random((2, 2048))
        array[1, 5] = np.nan
        body = _npy(array)
    elif body == "huge":  # a header announcing 10^6 patterns, with almost no data behind it
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 2048), }"
        header += " " * (118 - len(header)) + "\n"
        body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\x00" * 64
    response = await client.post("/xrd/phase" + query, content=body, headers={"content-type": "application/x-npy"})
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]
    assert (await client.post("/formation-enthalpy", json={"formulas": ["NaCl"]})).status_code == 200


@pytest.mark.parametrize("path", ["/xrd/phase", "/ebsd/index", "/scattering/sort"])
async def test_npy_headers_numpy_cannot_parse_are_a_422(client: httpx.AsyncClient, path: str) -> None:
    """A header dict cut short makes numpy's tokenizer raise (not ValueError): still the envelope's 422."""
    header = b"{'descr': '<f8',"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    response = await client.post(path, content=body, headers={"content-type": "application/x-npy"})
    assert response.status_code == 422, response.text
    assert "NPY" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("files", "query", "status", "says"),
    [
        ([("files", ("scan.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64))], "", 422, "scan.png"),
        ([("files", ("bad.xy", b"20.0 1\n20.1 abc\n"))], "", 422, "bad.xy"),
        ([("files", ("nan.xy", "\n".join(f"{20 + k * 0.035} nan" for k in range(2000)).encode()))], "", 422, "nan.xy"),
        ([("files", ("nul.xy", b"20 1\x00\n"))], "", 422, "nul.xy"),
        ([("files", (f"p{k}.xy", b"20 1\n")) for k in range(5)], "", 413, "over the limit of 4"),
        ([("files", ("p.xy", b"20 1\n21 2\n"))], "?wavelength_angstrom=abc", 422, "wavelength_angstrom"),
    ],
)
async def test_hostile_xrd_multipart_uploads(
    context: ServingContext, files: list[tuple[str, tuple[str, bytes]]], query: str, status: int, says: str
) -> None:
    """Files that are not two-column text, hold NaN or NUL bytes, too many files (a server allowing 4 patterns),
    bad options: a 4xx in the envelope naming the file or option, and the server keeps serving."""
    async for client in asgi_client(context, settings_for(max_patterns=4)):
        response = await client.post("/xrd/phase" + query, files=files)
        assert response.status_code == status, response.text
        assert says in response.json()["error"]["message"]
        assert (await client.post("/formation-enthalpy", json={"formulas": ["NaCl"]})).status_code == 200
