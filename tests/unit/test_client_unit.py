"""Unit tests of the client SDK's own logic, with the HTTP layer faked by :class:`httpx.MockTransport`.

Integration tests against a real server live elsewhere.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
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
