"""Transport core shared by :class:`~matserve_client.Client` and :class:`~matserve_client.AsyncClient`.

Every operation is written once, as a *flow*: a generator that performs no I/O itself but yields
:class:`_Send` (send this request, give me the response) and :class:`_Sleep` (wait this long) actions. The sync
and async clients each run flows with one small driver (:class:`SyncDriver`, :class:`AsyncDriver`) that executes
those actions with ``httpx.Client.send``/``time.sleep`` or their awaitable counterparts. Request building, retries
and backoff, version pinning, response parsing and error mapping therefore exist exactly once.

This module holds the transport (:meth:`BaseClient._request`, retries, error mapping, parsing); each model's
flows, helpers and public methods live in their own module, as mixins on :class:`BaseClient`:
:mod:`._formation`, :mod:`._xrd`, :mod:`._ebsd`, :mod:`._scattering` and :mod:`._jobs`. Their helpers that other
modules import from here are re-exported at the bottom of this module. (About 510 lines: the transport, both
drivers and those re-exports.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from ._version import __version__
from .ebsd_files import EBSD_MAX_PIXELS  # noqa: F401 - read from here by ._ebsd (see below)
from .exceptions import (
    APIError,
    ClientRequestError,
    InvalidInputError,
    MatserveConnectionError,
    MatserveTimeoutError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    UnexpectedResponseError,
    retry_after_s,
)
from .models import ModelInfo, _ModelsResponse

logger = logging.getLogger("matserve_client")

DEFAULT_BASE_URL = "http://127.0.0.1:3000"
DEFAULT_TIMEOUT = 30.0
"""Default per-request timeout, in seconds."""
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)
"""Connection pool of both clients: idle connections are dropped after 2 s, well before the server closes them
(uvicorn's keep-alive timeout, 5 s): a request sent on a connection the server is closing at that moment gets no
answer (seen under load in ``bench/soak.py``)."""
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5
"""Default base retry delay, in seconds."""
MAX_BACKOFF = 8.0
"""Upper bound of a single retry delay, in seconds."""
MAX_RATE_LIMIT_WAIT_S = 60.0
"""Longest wait the client honours from a 429's ``Retry-After``, in seconds."""
FALLBACK_MAX_BATCH_SIZE = 1000
"""Chunk size used when the server's ``max_batch_size`` cannot be discovered."""
FORMATION_ENTHALPY_MODEL = "formation_enthalpy"
EBSD_TIMEOUT_S = 600.0
"""Read timeout of EBSD scan uploads and refinement requests, and of scattering uploads, seconds (at least the
client's own)."""
# EBSD_MAX_PIXELS (imported above) is the decoded-pixel budget that :mod:`._ebsd` reads from this module when it
# cuts a scan into row blocks, so that tests can lower it with ``monkeypatch.setattr(_base, "EBSD_MAX_PIXELS", n)``.

_MAX_MESSAGE_CHARS = 2000
# Failures after which the request may simply be sent again: nothing (or nothing complete) came back.
# Predictions are side-effect free, so re-sending a POST is safe.
_RETRYABLE_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

T = TypeVar("T")
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class _Send:
    """Action: send ``request`` and resume the flow with the :class:`httpx.Response`.

    If sending raises :class:`httpx.TransportError`, the driver throws it into the flow instead.
    """

    request: httpx.Request


@dataclass(frozen=True)
class _Sleep:
    """Action: wait ``seconds`` (s), then resume the flow with ``None``."""

    seconds: float


Flow = Generator[_Send | _Sleep, httpx.Response | None, T]
"""A sans-I/O operation returning ``T``; executed by ``Client._run`` or ``AsyncClient._run``."""


def _send(request: httpx.Request) -> Flow[httpx.Response]:
    response = yield _Send(request)
    if response is None:  # pragma: no cover - driver bug
        raise RuntimeError("the client driver resumed a _Send action without a response")
    return response


def _sleep(seconds: float) -> Flow[None]:
    if seconds > 0:
        yield _Sleep(seconds)


# Pure helpers: argument normalisation, chunking, error mapping, parsing


def default_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Headers sent with every request: JSON ``Accept``, a ``User-Agent``, then the caller's (which win)."""
    return {"Accept": "application/json", "User-Agent": f"matserve-client/{__version__}", **(headers or {})}


def retry_delay(backoff: float, attempt: int) -> float:
    """Delay before retry number ``attempt + 1``, in seconds: ``backoff * 2**attempt`` capped at :data:`MAX_BACKOFF`.

    Parameters
    ----------
    backoff : float
        Base delay, in seconds.
    attempt : int
        Zero-based index of the attempt that just failed.
    """
    return min(backoff * 2.0**attempt, MAX_BACKOFF)


def chunked(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """Consecutive slices of ``items`` of at most ``size`` elements, in order."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def open_progress_bar(total: int | None, unit: str = "formula", desc: str = "formation_enthalpy") -> Any:
    """A tqdm progress bar over ``total`` formulas (``None``: unknown); tqdm is imported lazily as it is an optional dependency."""
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise ImportError(
            "progress=True needs tqdm, which is not installed: pip install 'matserve-client[progress]'"
        ) from exc
    return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True)


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


def _detail_message(detail: Any) -> str | None:
    """Message from a FastAPI/Starlette-style ``detail`` field (a string, or a list of validation errors)."""
    if isinstance(detail, str):
        return detail or None
    if isinstance(detail, list) and detail:
        parts = []
        for item in detail:
            if isinstance(item, Mapping) and "msg" in item:
                loc = item.get("loc")
                where = ".".join(str(p) for p in loc) if isinstance(loc, list | tuple) else ""
                parts.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, Mapping):
        for key in ("message", "msg"):
            if isinstance(detail.get(key), str):
                return detail[key]
    return None if detail is None else json.dumps(detail, default=str)


def error_details(response: httpx.Response) -> tuple[str | None, str]:
    """``(error_type, message)`` extracted from an error response, whatever its body looks like.

    Understands ``{"error": {"type": ..., "message": ...}}`` (the matserve contract), ``{"error": "text"}``,
    ``{"detail": ...}`` and ``{"message": ...}``; otherwise the body text, or the reason phrase if it is empty.
    """
    error_type: str | None = None
    message: str | None = None
    try:
        body = response.json()
    except ValueError:  # not JSON (json.JSONDecodeError and UnicodeDecodeError are both ValueErrors)
        body = None
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            error_type = error.get("type") if isinstance(error.get("type"), str) else None
            raw = error.get("message", error.get("detail"))
            message = raw if isinstance(raw, str) and raw else _detail_message(raw)
        elif isinstance(error, str) and error:
            message = error
        if error_type is None and isinstance(body.get("type"), str):
            error_type = body["type"]
        if message is None and "detail" in body:
            message = _detail_message(body["detail"])
        if message is None and isinstance(body.get("message"), str) and body["message"]:
            message = body["message"]
    if message is None:
        message = response.text.strip() or response.reason_phrase or "(empty response body)"
    return error_type, _truncate(message)


def error_class(status_code: int) -> type[APIError]:
    """Exception class for an HTTP error status."""
    by_status: dict[int, type[APIError]] = {
        400: InvalidInputError,
        404: NotFoundError,
        413: PayloadTooLargeError,
        422: InvalidInputError,
        429: RateLimitedError,
        503: ServiceUnavailableError,
    }
    if status_code in by_status:
        return by_status[status_code]
    if 400 <= status_code < 500:
        return ClientRequestError
    if 500 <= status_code < 600:
        return ServerError
    return APIError


def api_error(response: httpx.Response) -> APIError:
    """The :class:`APIError` subclass instance describing a non-2xx ``response``."""
    error_type, message = error_details(response)
    return error_class(response.status_code)(response.status_code, error_type, message, response=response)


def connection_error(exc: httpx.TransportError, attempts: int) -> MatserveConnectionError:
    """Wrap an httpx transport failure (the caller raises it ``from exc``)."""
    cls = MatserveTimeoutError if isinstance(exc, httpx.TimeoutException) else MatserveConnectionError
    try:
        where = f"{exc.request.method} {exc.request.url}"
    except RuntimeError:  # httpx raises RuntimeError when the exception has no request attached
        where = "request"
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    plural = "s" if attempts != 1 else ""
    return cls(f"{where} failed after {attempts} attempt{plural}: {what}")


_M = TypeVar("_M", bound=BaseModel)


def parse_body(response: httpx.Response, model: type[_M]) -> _M:
    """Validate a 2xx JSON body against ``model``; raise :class:`UnexpectedResponseError` if it does not fit."""
    where = f"{response.request.method} {response.request.url}"
    try:
        body = response.json()
    except ValueError as exc:
        raise UnexpectedResponseError(
            f"{where} returned a non-JSON body: {_truncate(response.text)!r}", response=response
        ) from exc
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise UnexpectedResponseError(f"{where} returned an unexpected body: {exc}", response=response) from exc


def check_answer(
    response: httpx.Response, sent: int, what: str, results: int, expected_version: str | None, version: str
) -> None:
    """A batch answer has one result per item sent and comes from the pinned version (if one is pinned)."""
    if results != sent:
        raise UnexpectedResponseError(
            f"sent {sent} {what} but the server returned {results} results", response=response
        )
    if expected_version is not None and version != expected_version:
        raise UnexpectedResponseError(
            f"expected model version {expected_version!r} but the server answered with {version!r}", response=response
        )


# Client state and flows


class BaseClient:
    """Configuration, cached server limits, the transport flow (:meth:`_request`) and the flows of every model.

    Subclasses create ``self._http`` (an :class:`httpx.Client` or :class:`httpx.AsyncClient`) and get the driver
    that executes the flows from :class:`SyncDriver` or :class:`AsyncDriver`.
    """

    _http: httpx.Client | httpx.AsyncClient

    def __init__(self, *, retries: int, backoff: float, chunk_size: int | None) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if not (backoff >= 0 and math.isfinite(backoff)):
            raise ValueError(f"backoff must be a finite number of seconds >= 0, got {backoff}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self._retries = retries
        self._backoff = backoff
        self._chunk_size = chunk_size
        self._max_batch_size: int | None = None  # discovered from GET /v1/models, cached

    @property
    def base_url(self) -> httpx.URL:
        """Root URL of the matserve server."""
        return self._http.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={str(self._http.base_url)!r})"

    # -- transport with retries --------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        retry: bool = True,
        build: Callable[[], httpx.Request] | None = None,
    ) -> Flow[httpx.Response]:
        """Send a request, retrying on 503 and connection failures; return the 2xx response or raise.

        A 429 (rate limited) is retried after the server's ``Retry-After`` (at most :data:`MAX_RATE_LIMIT_WAIT_S`
        per wait), also when ``retry`` is false: the server refused it before doing anything, so sending it again
        cannot run it twice. ``build`` makes the request instead (called again for each attempt: binary and
        multipart bodies).
        """
        attempt = 0
        while True:
            request = build() if build is not None else self._http.build_request(method, path, json=body)
            can_retry = retry and attempt < self._retries
            wait_at_least = 0.0
            try:
                response = yield from _send(request)
            except httpx.TransportError as exc:
                if not (can_retry and isinstance(exc, _RETRYABLE_TRANSPORT_ERRORS)):
                    raise connection_error(exc, attempts=attempt + 1) from exc
                reason = f"{type(exc).__name__}: {exc}"
            else:
                limited = response.status_code == 429 and attempt < self._retries
                if not limited and (response.status_code != 503 or not can_retry):
                    if not response.is_success:
                        raise api_error(response)
                    return response
                reason = f"HTTP {response.status_code}: " + error_details(response)[1]
                if limited:
                    wait_at_least = min(retry_after_s(response) or 0.0, MAX_RATE_LIMIT_WAIT_S)
            delay = max(retry_delay(self._backoff, attempt), wait_at_least)
            logger.info(
                "%s %s failed (%s); retry %d/%d in %.2f s",
                method,
                request.url,
                reason,
                attempt + 1,
                self._retries,
                delay,
            )
            yield from _sleep(delay)
            attempt += 1

    # -- operations --------------------------------------------------------------------------------------------

    def _models_flow(self) -> Flow[list[ModelInfo]]:
        response = yield from self._request("GET", "/v1/models")
        models = parse_body(response, _ModelsResponse).models
        for info in models:
            if info.name == FORMATION_ENTHALPY_MODEL:
                self._max_batch_size = info.max_batch_size
        return models

    def _probe_flow(self, path: str) -> Flow[bool]:
        try:
            yield from self._request("GET", path, retry=False)
        except (APIError, MatserveConnectionError) as exc:
            logger.debug("GET %s: %s", path, exc)
            return False
        return True

    def _batch_size_flow(self) -> Flow[int]:
        """Formulas per request: ``chunk_size``, else the server's ``max_batch_size`` (fetched once, cached).

        Falls back to :data:`FALLBACK_MAX_BATCH_SIZE` when ``/v1/models`` fails or does not list the model;
        a 5xx fallback is not cached so the next call asks again. Connection errors propagate.
        """
        if self._chunk_size is not None:
            return self._chunk_size
        if self._max_batch_size is not None:
            return self._max_batch_size
        try:
            yield from self._models_flow()  # caches self._max_batch_size when the model is listed
        except (APIError, UnexpectedResponseError) as exc:
            logger.warning(
                "could not read max_batch_size from /v1/models (%s); sending chunks of %d",
                exc,
                FALLBACK_MAX_BATCH_SIZE,
            )
            if not isinstance(exc, ServerError):
                self._max_batch_size = FALLBACK_MAX_BATCH_SIZE
            return FALLBACK_MAX_BATCH_SIZE
        if self._max_batch_size is None:
            logger.warning(
                "/v1/models does not list %r; sending chunks of %d", FORMATION_ENTHALPY_MODEL, FALLBACK_MAX_BATCH_SIZE
            )
            self._max_batch_size = FALLBACK_MAX_BATCH_SIZE
        return self._max_batch_size

    def _long_timeout(self) -> httpx.Timeout:
        """The client's timeout with the read timeout raised to :data:`EBSD_TIMEOUT_S`."""
        timeout = self._http.timeout
        read = None if timeout.read is None else max(timeout.read, EBSD_TIMEOUT_S)
        return httpx.Timeout(connect=timeout.connect, read=read, write=timeout.write, pool=timeout.pool)


def results_of(payload: Any) -> list[dict[str, Any]]:
    """The ``results`` of a parsed answer (a :mod:`matserve_client.wire` response) as dicts, with only the fields
    the server sent."""
    return [result.model_dump(exclude_unset=True) for result in payload.results]


def _optional_bar(total: int, unit: str, desc: str) -> Any:
    """A tqdm progress bar if tqdm is installed, else ``None``."""
    try:
        bar = open_progress_bar(total, unit=unit, desc=desc)
    except ImportError:
        logger.debug("tqdm is not installed: no progress bar")
        return None
    if unit == "B":
        bar.unit_scale = True
        bar.unit_divisor = 1024
    return bar


# Drivers: run a flow with blocking or asyncio I/O


class SyncDriver(BaseClient):
    """Runs flows with blocking I/O; the base of :class:`~matserve_client.Client` and its per-model mixins."""

    _http: httpx.Client

    def _run(self, flow: Flow[T]) -> T:
        """Execute a flow's actions with blocking I/O and return its result."""
        try:
            action = next(flow)
            while True:
                if isinstance(action, _Sleep):
                    time.sleep(action.seconds)
                    action = flow.send(None)
                    continue
                try:
                    response = self._http.send(action.request)
                except httpx.TransportError as exc:
                    action = flow.throw(exc)
                else:
                    action = flow.send(response)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()


class AsyncDriver(BaseClient):
    """Runs flows with asyncio I/O; the base of :class:`~matserve_client.AsyncClient` and its per-model mixins."""

    _http: httpx.AsyncClient

    async def _run(self, flow: Flow[T]) -> T:
        """Execute a flow's actions with async I/O and return its result."""
        try:
            action = next(flow)
            while True:
                if isinstance(action, _Sleep):
                    await asyncio.sleep(action.seconds)
                    action = flow.send(None)
                    continue
                try:
                    response = await self._http.send(action.request)
                except httpx.TransportError as exc:
                    action = flow.throw(exc)
                else:
                    action = flow.send(response)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()


def same_doc(twin: Callable[..., Any]) -> Callable[[_F], _F]:
    """Give the decorated method the docstring of its ``twin`` (an async method the docstring of its sync one)."""

    def decorate(function: _F) -> _F:
        function.__doc__ = twin.__doc__
        return function

    return decorate


# Re-exports: names other modules (kserve, tests, helpers) import from ``matserve_client._base``. Imported last:
# the per-model modules import this module's names above.

from ._ebsd import (  # noqa: E402, F401
    EBSD_CHUNK_PATTERNS,
    EBSD_REFINE_CHUNK_PATTERNS,
    EBSD_SCAN_BLOCK_PATTERNS,
    EBSD_SCAN_REFINE_BLOCK_PATTERNS,
)
from ._formation import as_formula_list, parse_formation_enthalpy  # noqa: E402, F401
from ._jobs import DEFAULT_JOB_PAGE_SIZE, DEFAULT_JOB_POLL_S, as_input_list, job_path  # noqa: E402, F401
from ._scattering import SCATTERING_PATH  # noqa: E402, F401
from ._xrd import XRD_CHUNK_PATTERNS, XRD_PLOT_CHUNK_PATTERNS, PatternLike, as_pattern_list  # noqa: E402, F401
