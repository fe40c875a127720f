"""Unit tests of the client SDK's own logic, with the HTTP layer faked by :class:`httpx.MockTransport`.

Integration tests against a real server live elsewhere. (Over 500 lines: one fake server per endpoint family
and the sync/async twins of each behaviour, kept next to each other.)
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import matserve_client as mc
from matserve_client import (
    APIError,
    AsyncClient,
    Client,
    ClientRequestError,
    FormationEnthalpyResult,
    InvalidInputError,
    MatserveConnectionError,
    MatserveError,
    MatserveTimeoutError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    ServiceUnavailableError,
    UnexpectedResponseError,
)

BASE = "http://matserve.test"

Handler = Callable[[httpx.Request], httpx.Response]


def error_response(status: int, error_type: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": error_type, "message": message}})


class FakeServer:
    """Minimal in-memory matserve: records requests; ``script`` lets a test pre-empt the next POSTs."""

    def __init__(self, max_batch_size: int = 1000, active_version: str = "1.0.0") -> None:
        self.max_batch_size = max_batch_size
        self.active_version = active_version
        self.requests: list[httpx.Request] = []
        self.script: list[httpx.Response | Exception] = []  # consumed by POSTs, one per request, before serving
        self.models_response: httpx.Response | None = None

    @property
    def posts(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]

    @property
    def model_gets(self) -> int:
        return sum(r.url.path == "/v1/models" for r in self.requests)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/v1/models":
            if self.models_response is not None:
                return self.models_response
            versions = [
                {"name": "formation_enthalpy", "version": v, "task": "regression", "created": "2025-01-01T00:00:00"}
                for v in ("1.0.0", "2.0.0")
            ]
            return httpx.Response(
                200,
                json={
                    "models": [
                        {
                            "name": "formation_enthalpy",
                            "active_version": self.active_version,
                            "max_batch_size": self.max_batch_size,
                            "versions": versions,
                        }
                    ],
                    "refused": {},
                },
            )
        if path in ("/readyz", "/livez"):
            return httpx.Response(200, text="ok")
        if path == "/v1/formation-enthalpy" and request.method == "POST":
            if self.script:
                step = self.script.pop(0)
                if isinstance(step, Exception):
                    raise step
                return step
            body = json.loads(request.content)
            formulas = body["formulas"]
            if len(formulas) > self.max_batch_size:
                return error_response(413, "payload_too_large", f"at most {self.max_batch_size} formulas")
            version = body["version"] or self.active_version
            return httpx.Response(200, json=predict(formulas, version))
        return error_response(404, "not_found", f"no route {path}")


def predict(formulas: list[str], version: str) -> dict[str, Any]:
    """Fake predictions: formula ``X{i}`` gets enthalpy ``-i`` eV/atom; ``bad`` gets a per-formula error."""
    results = []
    for formula in formulas:
        if formula == "bad":
            results.append({"formula": formula, "normalized_formula": None, "formation_enthalpy_ev_per_atom": None,
                            "uncertainty_ev_per_atom": None, "error": "cannot parse formula"})  # fmt: skip
        else:
            results.append({"formula": formula, "normalized_formula": formula,
                            "formation_enthalpy_ev_per_atom": -float(formula[1:] or 0),
                            "uncertainty_ev_per_atom": 0.01, "error": None})  # fmt: skip
    return {"model": "formation_enthalpy", "version": version, "results": results}


def make_client(handler: Handler, **kwargs: Any) -> Client:
    kwargs.setdefault("backoff", 0.0)
    return Client(BASE, transport=httpx.MockTransport(handler), **kwargs)


def make_async_client(handler: Handler, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("backoff", 0.0)
    return AsyncClient(BASE, transport=httpx.MockTransport(handler), **kwargs)


FORMULAS = [f"X{i}" for i in range(2500)]


# ---------------------------------------------------------------------------------------------------------------
# Chunking and version pinning
# ---------------------------------------------------------------------------------------------------------------


def check_chunked_results(server: FakeServer, results: list[FormationEnthalpyResult]) -> None:
    assert [len(p["formulas"]) for p in server.posts] == [1000, 1000, 500]
    assert [f for p in server.posts for f in p["formulas"]] == FORMULAS
    assert [r.formula for r in results] == FORMULAS
    assert [r.formation_enthalpy_ev_per_atom for r in results] == [-float(i) for i in range(2500)]
    assert all(r.ok and r.model == "formation_enthalpy" and r.version == "1.0.0" for r in results)


def test_chunks_to_server_max_batch_size_and_keeps_order() -> None:
    server = FakeServer(max_batch_size=1000)
    with make_client(server) as client:
        results = client.formation_enthalpy(FORMULAS)
        check_chunked_results(server, results)
        client.formation_enthalpy(["X1", "X2"])
    assert server.model_gets == 1  # discovered once, then cached
    assert client.is_closed


def test_explicit_chunk_size_skips_discovery() -> None:
    server = FakeServer()
    with make_client(server, chunk_size=300) as client:
        results = client.formation_enthalpy(FORMULAS[:1000])
    assert [len(p["formulas"]) for p in server.posts] == [300, 300, 300, 100]
    assert [r.formula for r in results] == FORMULAS[:1000]
    assert server.model_gets == 0


@pytest.mark.parametrize(
    "models_response",
    [
        error_response(404, "not_found", "no such route"),
        httpx.Response(200, json={"models": [], "refused": {}}),
        httpx.Response(200, text="<html>not json</html>"),
    ],
)
def test_falls_back_to_1000_when_max_batch_size_unavailable(models_response: httpx.Response) -> None:
    server = FakeServer(max_batch_size=5000)
    server.models_response = models_response
    with make_client(server) as client:
        client.formation_enthalpy(FORMULAS)
        client.formation_enthalpy(FORMULAS[:10])
    assert [len(p["formulas"]) for p in server.posts] == [1000, 1000, 500, 10]
    assert server.model_gets == 1  # a definitive answer (even an unhelpful one) is cached


def test_5xx_discovery_failure_is_not_cached() -> None:
    server = FakeServer(max_batch_size=1200)
    server.models_response = error_response(500, "internal", "boom")
    with make_client(server) as client:
        client.formation_enthalpy(FORMULAS[:1500])
        server.models_response = None
        client.formation_enthalpy(FORMULAS[:1500])
    assert [len(p["formulas"]) for p in server.posts] == [1000, 500, 1200, 300]
    assert server.model_gets == 2


def test_pins_first_chunk_version_for_following_chunks() -> None:
    server = FakeServer(max_batch_size=1000)
    with make_client(server) as client:
        results = client.formation_enthalpy(FORMULAS)
    assert [p["version"] for p in server.posts] == [None, "1.0.0", "1.0.0"]
    assert {r.version for r in results} == {"1.0.0"}


def test_caller_pinned_version_is_sent_with_every_chunk() -> None:
    server = FakeServer(max_batch_size=1000)
    with make_client(server) as client:
        results = client.formation_enthalpy(FORMULAS, version="2.0.0")
    assert [p["version"] for p in server.posts] == ["2.0.0"] * 3
    assert {r.version for r in results} == {"2.0.0"}


def test_version_change_between_chunks_is_an_error() -> None:
    server = FakeServer(max_batch_size=1000)
    server.script = [httpx.Response(200, json=predict(FORMULAS[:1000], "1.0.0")),
                     httpx.Response(200, json=predict(FORMULAS[1000:2000], "2.0.0"))]  # fmt: skip
    with make_client(server) as client, pytest.raises(UnexpectedResponseError, match=r"'1\.0\.0'.*'2\.0\.0'"):
        client.formation_enthalpy(FORMULAS)


def test_result_count_mismatch_is_an_error() -> None:
    server = FakeServer()
    server.script = [httpx.Response(200, json=predict(["X1"], "1.0.0"))]
    with make_client(server, chunk_size=10) as client, pytest.raises(UnexpectedResponseError, match="sent 2"):
        client.formation_enthalpy(["X1", "X2"])


def test_single_string_per_formula_errors_and_empty_input() -> None:
    server = FakeServer()
    with make_client(server, chunk_size=10) as client:
        (one,) = client.formation_enthalpy("X7")
        good, bad = client.formation_enthalpy(["X3", "bad"])
        assert client.formation_enthalpy([]) == []
        with pytest.raises(TypeError, match="item 1"):
            client.formation_enthalpy(["X1", 2])  # type: ignore[list-item]
    assert server.posts[0]["formulas"] == ["X7"]
    assert one.formation_enthalpy_ev_per_atom == -7.0 and one.uncertainty_ev_per_atom == 0.01
    assert good.ok and not bad.ok and bad.error == "cannot parse formula"
    assert len(server.posts) == 2


# ---------------------------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------------------------


def test_retries_503_then_succeeds() -> None:
    server = FakeServer()
    server.script = [error_response(503, "unavailable", "busy"), error_response(503, "unavailable", "busy")]
    with make_client(server, chunk_size=10, retries=3) as client:
        results = client.formation_enthalpy(["X1", "X2"])
    assert [r.formation_enthalpy_ev_per_atom for r in results] == [-1.0, -2.0]
    assert len(server.posts) == 3


def test_retry_delays_are_exponential_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    server = FakeServer()
    server.script = [error_response(503, "unavailable", "busy")] * 6
    with make_client(server, chunk_size=10, retries=6, backoff=0.5) as client:
        client.formation_enthalpy(["X1"])
    assert slept == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_503_after_retries_raises_service_unavailable() -> None:
    server = FakeServer()
    server.script = [error_response(503, "unavailable", "model is loading")] * 10
    with make_client(server, chunk_size=10, retries=2) as client, pytest.raises(ServiceUnavailableError) as info:
        client.formation_enthalpy(["X1"])
    assert len(server.posts) == 3
    assert info.value.status_code == 503 and info.value.message == "model is loading"


@pytest.mark.parametrize("status", [422, 400, 413, 404, 500])
def test_other_errors_are_not_retried(status: int) -> None:
    server = FakeServer()
    server.script = [error_response(status, "some_type", "nope")] * 5
    with make_client(server, chunk_size=10, retries=3) as client, pytest.raises(APIError):
        client.formation_enthalpy(["X1"])
    assert len(server.posts) == 1


def test_connection_error_is_retried_then_wrapped() -> None:
    server = FakeServer()
    server.script = [httpx.ConnectError("connection refused")] * 10
    with make_client(server, chunk_size=10, retries=2) as client, pytest.raises(MatserveConnectionError) as info:
        client.formation_enthalpy(["X1"])
    assert len(server.requests) == 3
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert not isinstance(info.value, MatserveTimeoutError)
    assert "3 attempts" in str(info.value) and "connection refused" in str(info.value)


def test_timeout_is_retried_then_succeeds_or_wrapped() -> None:
    server = FakeServer()
    server.script = [httpx.ReadTimeout("timed out")]
    with make_client(server, chunk_size=10, retries=1) as client:
        assert client.formation_enthalpy(["X1"])[0].ok
        server.script = [httpx.ReadTimeout("timed out")] * 2
        with pytest.raises(MatserveTimeoutError) as info:
            client.formation_enthalpy(["X1"])
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert isinstance(info.value, MatserveConnectionError)


def test_unreachable_server_raises_connection_error_from_discovery() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with make_client(refuse, retries=0) as client, pytest.raises(MatserveConnectionError, match="/v1/models"):
        client.formation_enthalpy(["X1"])


# ---------------------------------------------------------------------------------------------------------------
# Error mapping
# ---------------------------------------------------------------------------------------------------------------

ERROR_CASES = [
    (400, "invalid_input", InvalidInputError),
    (404, "not_found", NotFoundError),
    (413, "payload_too_large", PayloadTooLargeError),
    (422, "invalid_input", InvalidInputError),
    (409, "conflict", ClientRequestError),
    (500, "internal", ServerError),
    (503, "unavailable", ServiceUnavailableError),
]


@pytest.mark.parametrize(("status", "error_type", "cls"), ERROR_CASES)
def test_error_mapping(status: int, error_type: str, cls: type[APIError]) -> None:
    server = FakeServer()
    server.script = [error_response(status, error_type, f"server says {status}")]
    with make_client(server, chunk_size=10, retries=0) as client, pytest.raises(cls) as info:
        client.formation_enthalpy(["X1"])
    err = info.value
    assert type(err) is cls
    assert (err.status_code, err.error_type, err.message) == (status, error_type, f"server says {status}")
    assert isinstance(err, MatserveError)
    assert isinstance(err, ClientRequestError) == (status < 500)
    assert isinstance(err, ServerError) == (status >= 500)
    assert f"server says {status}" in str(err)
    clone = pickle.loads(pickle.dumps(err))
    assert (type(clone), clone.status_code, clone.message) == (cls, status, err.message)


@pytest.mark.parametrize(
    ("response", "error_type", "message"),
    [
        (httpx.Response(422, text="formulas: field required\n"), None, "formulas: field required"),
        (httpx.Response(422, json={"detail": "bad formulas"}), None, "bad formulas"),
        (
            httpx.Response(422, json={"detail": [{"loc": ["body", "formulas"], "msg": "Field required"}]}),
            None,
            "body.formulas: Field required",
        ),
        (httpx.Response(400, json={"error": "Invalid JSON"}), None, "Invalid JSON"),
        (httpx.Response(400, json={"message": "nope", "type": "bad"}), "bad", "nope"),
        (httpx.Response(400, json={"something": "else"}), None, '{"something":"else"}'),
        (httpx.Response(400), None, "Bad Request"),
    ],
)
def test_error_message_extraction_tolerates_other_bodies(
    response: httpx.Response, error_type: str | None, message: str
) -> None:
    server = FakeServer()
    server.script = [response]
    with make_client(server, chunk_size=10) as client, pytest.raises(InvalidInputError) as info:
        client.formation_enthalpy(["X1"])
    assert (info.value.error_type, info.value.message) == (error_type, message)


def test_non_json_success_body_is_unexpected_response() -> None:
    server = FakeServer()
    server.script = [httpx.Response(200, text="hello")]
    with make_client(server, chunk_size=10) as client, pytest.raises(UnexpectedResponseError, match="non-JSON"):
        client.formation_enthalpy(["X1"])


# ---------------------------------------------------------------------------------------------------------------
# models(), ready(), progress, construction
# ---------------------------------------------------------------------------------------------------------------


def test_models_and_probes() -> None:
    server = FakeServer(max_batch_size=250)
    with make_client(server) as client:
        (info,) = client.models()
        assert client.ready() and client.live()
        client.formation_enthalpy(FORMULAS[:300])
    assert (info.name, info.active_version, info.max_batch_size) == ("formation_enthalpy", "1.0.0", 250)
    assert [v.version for v in info.versions] == ["1.0.0", "2.0.0"]
    assert info.versions[0].task == "regression" and info.versions[0].metrics == {}
    assert [len(p["formulas"]) for p in server.posts] == [250, 50]
    assert server.model_gets == 1  # models() filled the batch-size cache


def test_model_version_info_keeps_extra_fields() -> None:
    info = mc.ModelVersionInfo.model_validate({"name": "m", "version": "1", "code_commit": "abc"})
    assert info.model_extra == {"code_commit": "abc"}


def test_ready_is_false_on_error_or_connection_failure() -> None:
    calls: list[str] = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return error_response(503, "unavailable", "loading")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with make_client(unavailable) as client:
        assert client.ready() is False
    assert calls == ["/readyz"]  # probes are not retried
    with make_client(refuse) as client:
        assert client.ready() is False and client.live() is False


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeServer(max_batch_size=1000)
    with make_client(server) as client:
        assert len(client.formation_enthalpy(FORMULAS, progress=True)) == 2500
    assert "2500/2500" in capsys.readouterr().err


def test_progress_without_tqdm_raises_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    server = FakeServer()
    with make_client(server) as client, pytest.raises(ImportError, match=r"matserve-client\[progress\]"):
        client.formation_enthalpy(["X1"], progress=True)
    assert server.requests == []  # fails before any I/O


def test_constructor_validation_and_headers() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        Client(chunk_size=0)
    with pytest.raises(ValueError, match="retries"):
        Client(retries=-1)
    with pytest.raises(ValueError, match="backoff"):
        Client(backoff=-0.1)
    server = FakeServer()
    with make_client(server, headers={"Authorization": "Bearer t"}) as client:
        client.ready()
    assert server.requests[0].headers["Authorization"] == "Bearer t"
    assert server.requests[0].headers["User-Agent"].startswith("matserve-client/")


def test_base_url_path_prefix_is_kept() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200)

    with Client(f"{BASE}/prefix", transport=httpx.MockTransport(handler)) as client:
        client.ready()
    assert seen == ["/prefix/readyz"]


def test_public_api_exports() -> None:
    for name in mc.__all__:
        assert hasattr(mc, name), name
    assert FormationEnthalpyResult(formula="A", model="m", version="1").ok is False


# ---------------------------------------------------------------------------------------------------------------
# Async client: same behaviours through the same shared flows
# ---------------------------------------------------------------------------------------------------------------


async def test_async_chunking_and_version_pinning() -> None:
    server = FakeServer(max_batch_size=1000)
    async with make_async_client(server) as client:
        results = await client.formation_enthalpy(FORMULAS)
        check_chunked_results(server, results)
        await client.formation_enthalpy("X5")
    assert [p["version"] for p in server.posts] == [None, "1.0.0", "1.0.0", None]
    assert server.model_gets == 1
    assert client.is_closed


async def test_async_retry_then_success_and_no_retry_on_422() -> None:
    server = FakeServer()
    server.script = [error_response(503, "unavailable", "busy"), httpx.ConnectError("refused")]
    async with make_async_client(server, chunk_size=10, retries=3) as client:
        assert (await client.formation_enthalpy(["X1"]))[0].ok
        assert len(server.posts) == 3
        server.script = [error_response(422, "invalid_input", "formulas must be a list")] * 3
        with pytest.raises(InvalidInputError, match="formulas must be a list"):
            await client.formation_enthalpy(["X1"])
        assert len(server.posts) == 4


@pytest.mark.parametrize(("status", "error_type", "cls"), ERROR_CASES)
async def test_async_error_mapping(status: int, error_type: str, cls: type[APIError]) -> None:
    server = FakeServer()
    server.script = [error_response(status, error_type, f"server says {status}")]
    async with make_async_client(server, chunk_size=10, retries=0) as client:
        with pytest.raises(cls) as info:
            await client.formation_enthalpy(["X1"])
    assert type(info.value) is cls
    assert (info.value.status_code, info.value.message) == (status, f"server says {status}")


async def test_async_connection_error_and_probes() -> None:
    server = FakeServer()
    server.script = [httpx.ConnectError("refused")] * 3
    async with make_async_client(server, chunk_size=10, retries=2) as client:
        with pytest.raises(MatserveConnectionError) as info:
            await client.formation_enthalpy(["X1"])
        assert isinstance(info.value.__cause__, httpx.ConnectError)
        assert await client.ready() and await client.live()
        (model,) = await client.models()
    assert model.max_batch_size == 1000


# ---------------------------------------------------------------------------------------------------------------
# XRD: body choice (JSON or NPY), chunking and query options
# ---------------------------------------------------------------------------------------------------------------

MODEL_GRID = np.linspace(20.0, 90.0, 2048)


class FakeXrdServer:
    """Answers ``/v1/xrd/*`` with one result per pattern it received, as JSON or NPY; records what came."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, Any, dict[str, str]]] = []  # (content type, JSON body or array, query)
        self.script: list[httpx.Response] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        content_type = request.headers["content-type"]
        if content_type == "application/x-npy":
            array = np.load(io.BytesIO(request.read()), allow_pickle=False)
            assert array.ndim in (2, 3)  # the SDK never sends the single-pattern forms
            count = len(array)
            self.bodies.append((content_type, array, dict(request.url.params)))
            version = request.url.params.get("version") or "1.0.0"
        else:
            body = json.loads(request.content)
            count = len(body["patterns"])
            self.bodies.append((content_type, body, dict(request.url.params)))
            version = body.get("version") or "1.0.0"
        if self.script:
            return self.script.pop(0)
        phase = {"phase": "fcc", "space_group": "Fm-3m", "probability": 0.9, "coverage": 1.0,
                 "probabilities": {"fcc": 0.9, "bcc": 0.05, "hcp": 0.05}}  # fmt: skip
        novelty = {"reconstruction_error": 0.01, "novelty_percentile": 50.0, "is_novel": False,
                   "threshold_percentile": 99.0, "latent": [0.0] * 16, "latent_map": [0.0, 0.0],
                   "nearest_known_phase": "fcc", "nearest_known_phase_share": 1.0, "coverage": 1.0}  # fmt: skip
        item = phase if request.url.path.endswith("/phase") else novelty
        if request.url.params.get("plots") == "true" or (content_type != "application/x-npy" and body.get("plots")):
            item = {**item, "plots": {"reconstruction_png": "iVBO", "latent_map_png": "iVBO"}}
        return httpx.Response(200, json={"model": "xrd", "version": version, "results": [item] * count})


def xrd_client(server: FakeXrdServer) -> Client:
    return make_client(server)


def test_xrd_array_on_the_model_grid_goes_as_one_npy_body_per_chunk() -> None:
    server = FakeXrdServer()
    intensity = np.arange(600 * 2048, dtype=np.float64).reshape(600, 2048) % 997
    with xrd_client(server) as client:
        results = client.classify_xrd(intensity, wavelength_angstrom=1.5406, binary=True)
    assert len(results) == 600 and all(r.source is None and r.version == "1.0.0" for r in results)
    assert [body.shape for _, body, _ in server.bodies] == [(256, 2048), (256, 2048), (88, 2048)]
    # float64 values that are not float32-exact go as float64: the server sees exactly what the caller has
    assert all(kind == "application/x-npy" and body.dtype == np.float64 for kind, body, _ in server.bodies)
    np.testing.assert_array_equal(np.concatenate([b for _, b, _ in server.bodies]), intensity)
    params = [query for _, _, query in server.bodies]
    assert params[0] == {"wavelength_angstrom": "1.5406"}
    assert params[1] == params[2] == {"wavelength_angstrom": "1.5406", "version": "1.0.0"}  # pinned


def test_xrd_pairs_with_one_grid_go_as_n_2_m_and_model_grid_pairs_as_n_2048() -> None:
    server = FakeXrdServer()
    grid = np.linspace(10.0, 100.0, 3000)
    rows = np.random.default_rng(0).random((5, 3000))
    with xrd_client(server) as client:
        client.classify_xrd([(grid, row) for row in rows], binary=True)
        client.xrd_novelty([{"two_theta_deg": MODEL_GRID, "intensity": row} for row in rows[:, :2048]], binary=True)
        client.classify_xrd(np.stack([np.stack([grid, row]) for row in rows]), binary=True)  # (n, 2, m) as is
    (_, pairs, _), (_, on_grid, _), (_, stacked, _) = server.bodies
    assert pairs.shape == (5, 2, 3000) and pairs.dtype == np.float64
    np.testing.assert_array_equal(pairs[:, 0], np.broadcast_to(grid, (5, 3000)))
    np.testing.assert_array_equal(pairs[:, 1], rows)
    assert on_grid.shape == (5, 2048)
    np.testing.assert_array_equal(stacked, pairs)


def test_float32_arrays_go_as_float32() -> None:
    """float32 intensities on the model grid (what detectors and simulators give) are sent as they are."""
    server = FakeXrdServer()
    intensity = np.random.default_rng(1).random((3, 2048)).astype(np.float32)
    with xrd_client(server) as client:
        client.classify_xrd(intensity, binary=True)
    (_, body, _) = server.bodies[0]
    assert body.dtype == np.float32
    np.testing.assert_array_equal(body, intensity)


def test_xrd_pairs_with_a_grid_each_of_one_length_go_as_n_2_m() -> None:
    server = FakeXrdServer()
    grids = [np.linspace(15.0 + k, 95.0, 1000) for k in range(3)]
    with xrd_client(server) as client:
        client.classify_xrd([(g, np.ones(1000)) for g in grids], binary=True)
    (_, body, _) = server.bodies[0]
    np.testing.assert_array_equal(body[:, 0], np.stack(grids))


def test_xrd_auto_choice_is_switchable_and_falls_back_to_json(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeXrdServer()
    same = [(MODEL_GRID, np.ones(2048)), (MODEL_GRID, np.arange(2048.0))]
    uneven = [(MODEL_GRID, np.ones(2048)), (np.linspace(20, 90, 500), np.ones(500))]
    own_wavelength = [{"two_theta_deg": MODEL_GRID, "intensity": np.ones(2048), "wavelength_angstrom": 0.7}]
    lists = [(MODEL_GRID.tolist(), [1.0] * 2048)]
    monkeypatch.setattr(mc._xrd, "XRD_BINARY_AUTO", False)
    with xrd_client(server) as client:
        client.classify_xrd(same)  # auto, switched off: JSON
        monkeypatch.setattr(mc._xrd, "XRD_BINARY_AUTO", True)
        client.classify_xrd(same)  # auto: NPY
        client.classify_xrd(same, binary=False)
        client.classify_xrd(uneven)
        client.classify_xrd(own_wavelength)
        client.classify_xrd(lists)  # not arrays: JSON
        client.classify_xrd(pair for pair in uneven)  # a generator, read once: JSON
        for patterns in (uneven, own_wavelength, lists):
            with pytest.raises(ValueError, match="binary=True needs numpy arrays of one length"):
                client.classify_xrd(patterns, binary=True)
    kinds = [kind for kind, _, _ in server.bodies]
    assert kinds == ["application/json", "application/x-npy", "application/json", "application/json",
                     "application/json", "application/json", "application/json"]  # fmt: skip
    assert len(server.bodies[6][1]["patterns"]) == 2
    assert server.bodies[0][1]["patterns"][1]["intensity"] == list(range(2048))
    assert server.bodies[1][1].shape == (2, 2, 2048)  # two rows on the model grid: never the ambiguous (2, 2048)
    assert server.bodies[4][1]["patterns"][0]["wavelength_angstrom"] == 0.7


def test_xrd_files_go_as_json_with_their_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mc._xrd, "XRD_BINARY_AUTO", True)
    path = tmp_path / "scan.xy"
    path.write_text("".join(f"{t} {i % 7}\n" for i, t in enumerate(np.linspace(20, 90, 300))))
    server = FakeXrdServer()
    with xrd_client(server) as client:
        (result,) = client.classify_xrd(path)
    assert server.bodies[0][0] == "application/json" and result.source == str(path)


def test_xrd_arrays_also_go_as_json() -> None:
    server = FakeXrdServer()
    with xrd_client(server) as client:
        client.classify_xrd(np.ones((3, 2048)), binary=False)
        client.classify_xrd(np.stack([np.linspace(21, 89, 300), np.ones(300)]), binary=False)  # one (2, m) pattern
        with pytest.raises(ValueError, match=r"got shape \(3, 7\)"):
            client.classify_xrd(np.ones((3, 7)))
    patterns = server.bodies[0][1]["patterns"]
    assert len(patterns) == 3 and patterns[2]["two_theta_deg"] == MODEL_GRID.tolist()
    assert len(server.bodies[1][1]["patterns"]) == 1


def test_xrd_novelty_plots_over_npy_chunks_of_16() -> None:
    server = FakeXrdServer()
    with xrd_client(server) as client:
        results = client.xrd_novelty(np.ones((20, 2048)), plots=True, version="1.0.0", binary=True)
    assert [body.shape[0] for _, body, _ in server.bodies] == [16, 4]
    assert server.bodies[0][2] == {"version": "1.0.0", "plots": "true"}
    assert results[19].reconstruction_png == base64.b64decode("iVBO")


def test_xrd_npy_refusal_names_the_chunk() -> None:
    server = FakeXrdServer()
    server.script = [httpx.Response(200, json={"model": "xrd", "version": "1.0.0",
                                               "results": [{"phase": "fcc", "space_group": "Fm-3m",
                                                            "probability": 1.0, "coverage": 1.0,
                                                            "probabilities": {"fcc": 1.0}}] * 256}),
                     error_response(422, "invalid_input", "patterns[3]: intensity contains NaN")]  # fmt: skip
    with xrd_client(server) as client, pytest.raises(InvalidInputError, match=r"patterns 256-299 .*patterns\[3\]"):
        client.classify_xrd(np.ones((300, 2048)), binary=True)


async def test_async_xrd_sends_the_same_npy_bodies() -> None:
    server = FakeXrdServer()
    async with make_async_client(server) as client:
        results = await client.classify_xrd(np.ones((3, 2048)), binary=True, wavelength_angstrom=1.0)
    assert len(results) == 3 and server.bodies[0][1].shape == (3, 2048)
    assert server.bodies[0][2] == {"wavelength_angstrom": "1.0"}


# ---------------------------------------------------------------------------------------------------------------
# Keyword-only options; names other modules import from _base
# ---------------------------------------------------------------------------------------------------------------


async def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Client(BASE, 5.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        AsyncClient(BASE, 5.0)  # type: ignore[misc]
    with make_client(FakeServer()) as client:
        with pytest.raises(TypeError):
            client.formation_enthalpy(["X1"], "1.0.0")  # type: ignore[misc]
        with pytest.raises(TypeError):
            client.classify_xrd(np.ones((1, 2048)), "1.0.0")  # type: ignore[misc]
        with pytest.raises(TypeError):
            client.wait_job("abc", 1.0)  # type: ignore[misc]
    async with make_async_client(FakeServer()) as aclient:
        with pytest.raises(TypeError):
            await aclient.formation_enthalpy(["X1"], "1.0.0")  # type: ignore[misc]


def test_helpers_stay_importable_from_base() -> None:
    from matserve_client import _base, _formation, _xrd

    assert _base.as_pattern_list is _xrd.as_pattern_list
    assert _base.as_formula_list is _formation.as_formula_list
    for name in ("chunked", "open_progress_bar", "EBSD_MAX_PIXELS", "XRD_CHUNK_PATTERNS", "job_path", "parse_body"):
        assert hasattr(_base, name), name
    assert Client.classify_xrd.__doc__ == AsyncClient.classify_xrd.__doc__


def test_two_mapping_patterns_are_two_patterns_not_a_pair() -> None:
    """A list of exactly two ``{"two_theta_deg", "intensity"}`` mappings is two patterns (it raised KeyError)."""
    from matserve_client._base import as_pattern_list

    pattern = {"two_theta_deg": [20.0, 21.0, 22.0], "intensity": [1.0, 2.0, 1.0]}
    assert len(as_pattern_list([pattern, dict(pattern)])) == 2
