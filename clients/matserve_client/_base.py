"""Logic shared by :class:`~matserve_client.Client` and :class:`~matserve_client.AsyncClient`.

Every operation is written once, as a *flow*: a generator that performs no I/O itself but yields
:class:`_Send` (send this request, give me the response) and :class:`_Sleep` (wait this long) actions. The sync
and async clients each contain one small driver (``_run``) that executes those actions with
``httpx.Client.send``/``time.sleep`` or their awaitable counterparts. Request building, retries and backoff,
chunking, version pinning, response parsing and error mapping therefore exist exactly once, here.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import numbers
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from ._version import __version__
from .ebsd_files import EBSD_MAX_PIXELS, EbsdChunk, ebsd_chunks, encode_npy, load_scan, scan_kind
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
from .models import (
    EbsdIndexResult,
    EbsdPixelError,
    EbsdScanResult,
    FormationEnthalpyResult,
    Job,
    JobResultsPage,
    ModelInfo,
    ScatteringFileResult,
    ScatteringResult,
    XrdNoveltyResult,
    XrdPhaseResult,
    _FormationEnthalpyResponse,
    _JobResultsResponse,
    _ModelsResponse,
)
from .scattering_files import ScatteringUpload, scattering_files, scattering_upload
from .xrd_files import XrdPattern, read_pattern

logger = logging.getLogger("matserve_client")

DEFAULT_BASE_URL = "http://127.0.0.1:3000"
DEFAULT_TIMEOUT = 30.0
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)
"""Connection pool of both clients: idle connections are dropped after 2 s, well before the server closes them
(uvicorn's keep-alive timeout, 5 s): a request sent on a connection the server is closing at that moment gets no
answer (seen under load in ``bench/soak.py``)."""
"""Default per-request timeout, in seconds."""
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5
"""Default base retry delay, in seconds."""
MAX_BACKOFF = 8.0
MAX_RATE_LIMIT_WAIT_S = 60.0
"""Longest wait the client honours from a 429's ``Retry-After``, in seconds."""
"""Upper bound of a single retry delay, in seconds."""
FALLBACK_MAX_BATCH_SIZE = 1000
"""Chunk size used when the server's ``max_batch_size`` cannot be discovered."""
FORMATION_ENTHALPY_MODEL = "formation_enthalpy"
XRD_CHUNK_PATTERNS = 256
"""Patterns per XRD request when a long list is split (the server accepts up to 1024 by default)."""
XRD_PLOT_CHUNK_PATTERNS = 16
"""Patterns per request when plots are asked for (the server renders at most 16 per request)."""
EBSD_CHUNK_PATTERNS = 1024
"""EBSD patterns per ``/v1/ebsd/index`` request (the server accepts up to 4096 by default)."""
EBSD_REFINE_CHUNK_PATTERNS = 64
"""EBSD patterns per request with ``refine=True`` (refinement runs at roughly 100 patterns/s)."""
EBSD_SCAN_BLOCK_PATTERNS = 4096
"""Patterns per row block of a scan sent to ``/v1/ebsd/scan`` (256 with refinement, the server's limit); fewer
when the block would be over :data:`~matserve_client.ebsd_files.EBSD_MAX_PIXELS` decoded pixels."""
EBSD_SCAN_REFINE_BLOCK_PATTERNS = 256
EBSD_TIMEOUT_S = 600.0
"""Read timeout of EBSD scan uploads and refinement requests, and of scattering uploads, seconds (at least the
client's own)."""
SCATTERING_PATH = "/v1/scattering/sort"
DEFAULT_JOB_PAGE_SIZE = 1000
"""Results per page when reading a job's results."""
DEFAULT_JOB_POLL_S = 1.0
"""Default interval between job status polls, in seconds."""

_MAX_MESSAGE_CHARS = 2000
# Failures after which the request may simply be sent again: nothing (or nothing complete) came back.
# Predictions are side-effect free, so re-sending a POST is safe.
_RETRYABLE_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

T = TypeVar("T")


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


# --------------------------------------------------------------------------------------------------------------
# Pure helpers: argument normalisation, chunking, error mapping, parsing
# --------------------------------------------------------------------------------------------------------------


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


def as_formula_list(formulas: Sequence[str] | str) -> list[str]:
    """Copy ``formulas`` into a list, treating a single string as one formula; reject non-strings."""
    if isinstance(formulas, str):
        return [formulas]
    items = list(formulas)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"formulas must be strings; item {index} is {type(item).__name__}: {item!r}")
    return items


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


def as_input_list(inputs: Sequence[Any] | str) -> list[Any]:
    """Copy job ``inputs`` into a non-empty list, treating a single string as one input."""
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    if not items:
        raise ValueError("a job needs at least one input")
    return items


PatternLike = Any
"""One diffraction pattern: an :class:`~matserve_client.xrd_files.XrdPattern`, a path of a two-column file
(``.xy``, ``.xye``, ``.csv``, ...), a mapping ``{"two_theta_deg": [...], "intensity": [...]}`` (optionally
``"wavelength_angstrom"``), or a pair ``(two_theta_deg, intensity)`` of sequences or numpy arrays."""


def _floats(values: Any) -> list[float]:
    return values.tolist() if hasattr(values, "tolist") else [float(v) for v in values]


def _is_pair(value: Any) -> bool:
    """A ``(two_theta_deg, intensity)`` pair of number sequences (not a list of two patterns)."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        return False
    try:
        return all(len(part) > 0 and isinstance(part[0], numbers.Real) for part in value)
    except TypeError:
        return False


def as_pattern_list(patterns: PatternLike | Sequence[PatternLike]) -> list[tuple[dict[str, Any], str | None]]:
    """Each pattern as (JSON item, source file or ``None``); one pattern or a sequence of them.

    Raises
    ------
    TypeError
        An item that is none of the accepted forms (see :data:`PatternLike`).
    ValueError
        No patterns; or :class:`~matserve_client.xrd_files.PatternFileError` for an unreadable file.
    """
    single = isinstance(patterns, XrdPattern | Mapping | str | os.PathLike) or _is_pair(patterns)
    items = [patterns] if single else list(patterns)
    if not items:
        raise ValueError("no patterns given")
    out: list[tuple[dict[str, Any], str | None]] = []
    for index, item in enumerate(items):
        if isinstance(item, str | os.PathLike):
            out.append((read_pattern(item).to_request(), os.fspath(item)))
        elif isinstance(item, XrdPattern):
            out.append((item.to_request(), None))
        elif isinstance(item, Mapping) and "two_theta_deg" in item and "intensity" in item:
            body = {"two_theta_deg": _floats(item["two_theta_deg"]), "intensity": _floats(item["intensity"])}
            if item.get("wavelength_angstrom") is not None:
                body["wavelength_angstrom"] = float(item["wavelength_angstrom"])
            out.append((body, None))
        elif _is_pair(item):
            out.append(({"two_theta_deg": _floats(item[0]), "intensity": _floats(item[1])}, None))
        else:
            raise TypeError(
                f"pattern {index} is a {type(item).__name__}; expected an XrdPattern, a file path, a mapping with "
                "'two_theta_deg' and 'intensity', or a (two_theta_deg, intensity) pair"
            )
    return out


def job_path(job_id: str, suffix: str = "") -> str:
    """``/v1/jobs/<job_id><suffix>`` with the id escaped."""
    if not job_id:
        raise ValueError("job_id is empty")
    return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"


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


def parse_formation_enthalpy(
    response: httpx.Response, sent: Sequence[str], expected_version: str | None
) -> list[FormationEnthalpyResult]:
    """Results of one ``POST /v1/formation-enthalpy`` chunk, checked against what was sent.

    Parameters
    ----------
    response : httpx.Response
        A 2xx response.
    sent : sequence of str
        The formulas of this chunk; the server must answer with exactly one result per formula.
    expected_version : str or None
        Version every result must come from (the pinned one), or ``None`` to accept any.
    """
    payload = parse_body(response, _FormationEnthalpyResponse)
    check_answer(response, len(sent), "formulas", len(payload.results), expected_version, payload.version)
    return payload.flatten()


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


# --------------------------------------------------------------------------------------------------------------
# Client state and flows
# --------------------------------------------------------------------------------------------------------------


class BaseClient:
    """Configuration, cached server limits and the I/O-free flows behind every public method.

    Subclasses create ``self._http`` (an :class:`httpx.Client` or :class:`httpx.AsyncClient`) and implement the
    driver that executes the flows.
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

    def _formation_enthalpy_flow(
        self, formulas: Sequence[str] | str, version: str | None, progress: bool
    ) -> Flow[list[FormationEnthalpyResult]]:
        items = as_formula_list(formulas)
        if not items:
            return []
        bar = open_progress_bar(len(items)) if progress else None
        try:
            size = yield from self._batch_size_flow()
            results: list[FormationEnthalpyResult] = []
            pinned = version
            for chunk in chunked(items, size):
                response = yield from self._request(
                    "POST", "/v1/formation-enthalpy", body={"formulas": list(chunk), "version": pinned}
                )
                batch = parse_formation_enthalpy(response, chunk, expected_version=pinned)
                # Later chunks must be answered by the version that answered the first one, even if the server's
                # active version changes mid-way.
                pinned = batch[0].version
                results.extend(batch)
                if bar is not None:
                    bar.update(len(chunk))
            return results
        finally:
            if bar is not None:
                bar.close()

    # -- XRD -----------------------------------------------------------------------------------------------------

    def _xrd_flow(
        self,
        path: str,
        result_type: type[XrdPhaseResult] | type[XrdNoveltyResult],
        patterns: PatternLike | Sequence[PatternLike],
        version: str | None,
        wavelength_angstrom: float | None,
        plots: bool,
        progress: bool,
    ) -> Flow[list[Any]]:
        """POST patterns in chunks (version pinned after the first), results in input order."""
        items = as_pattern_list(patterns)
        size = XRD_PLOT_CHUNK_PATTERNS if plots else min(self._chunk_size or XRD_CHUNK_PATTERNS, XRD_CHUNK_PATTERNS)
        bar = open_progress_bar(len(items), unit="pattern", desc=path.rsplit("/", 1)[-1]) if progress else None
        results: list[Any] = []
        pinned = version
        try:
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                body: dict[str, Any] = {"patterns": [item for item, _ in chunk], "version": pinned}
                if wavelength_angstrom is not None:
                    body["wavelength_angstrom"] = wavelength_angstrom
                if plots:
                    body["plots"] = True
                try:
                    response = yield from self._request("POST", path, body=body)
                except InvalidInputError as exc:
                    if len(items) <= size:
                        raise
                    raise InvalidInputError(
                        exc.status_code, exc.error_type,
                        f"in the request of patterns {start}-{start + len(chunk) - 1} (its patterns[0] is your "
                        f"pattern {start}): {exc.message}", response=exc.response,
                    ) from exc  # fmt: skip
                payload = parse_body(response, _XrdResponse)
                check_answer(response, len(chunk), "patterns", len(payload.results), pinned, payload.version)
                pinned = payload.version
                for (_, source), item in zip(chunk, payload.results, strict=True):
                    fields = dict(item)
                    encoded = fields.pop("plots", None) or {}
                    for key, value in encoded.items():
                        fields[key] = base64.b64decode(value)
                    results.append(result_type(**fields, source=source, model=payload.model, version=payload.version))
                if bar is not None:
                    bar.update(len(chunk))
            return results
        finally:
            if bar is not None:
                bar.close()

    # -- EBSD ----------------------------------------------------------------------------------------------------

    def _long_timeout(self) -> httpx.Timeout:
        """The client's timeout with the read timeout raised to :data:`EBSD_TIMEOUT_S`."""
        timeout = self._http.timeout
        read = None if timeout.read is None else max(timeout.read, EBSD_TIMEOUT_S)
        return httpx.Timeout(connect=timeout.connect, read=read, write=timeout.write, pool=timeout.pool)

    def _ebsd_index_flow(
        self,
        patterns: Any,
        pc: Any,
        refine: bool,
        version: str | None,
        chunk_size: int | None,
        progress: bool,
        static_background: bool,
    ) -> Flow[list[EbsdIndexResult]]:
        """POST patterns in chunks (npy bodies, or multipart for image files), results in input order."""
        size = chunk_size or (EBSD_REFINE_CHUNK_PATTERNS if refine else EBSD_CHUNK_PATTERNS)
        if size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {size}")
        per_pattern = _pc_rows(pc)
        bar = open_progress_bar(None, unit="pattern", desc="ebsd") if progress else None
        results: list[EbsdIndexResult] = []
        pinned = version
        try:
            for chunk in ebsd_chunks(patterns, size):
                start = len(results)
                params = _ebsd_params(None if per_pattern is not None else pc, refine, pinned, static_background)
                build = self._ebsd_index_request(chunk, params, per_pattern, start, refine)
                try:
                    response = yield from self._request("POST", "/v1/ebsd/index", build=build)
                except InvalidInputError as exc:
                    what = (f"patterns {start}-{start + len(chunk.array) - 1}" if chunk.array is not None
                            else f"files {', '.join(str(p) for p in chunk.files)}")  # fmt: skip
                    raise InvalidInputError(
                        exc.status_code, exc.error_type,
                        f"in the request of your {what} (its patterns[0] is your pattern {start}): {exc.message}",
                        response=exc.response,
                    ) from exc  # fmt: skip
                payload = parse_body(response, _XrdResponse)
                if chunk.array is not None:
                    check_answer(response, len(chunk.array), "patterns", len(payload.results), pinned, payload.version)
                    sources = chunk.sources
                else:
                    check_answer(response, len(payload.results), "patterns", len(payload.results), pinned,
                                 payload.version)  # fmt: skip
                    sources = _file_sources(chunk.files, payload.results)
                pinned = payload.version
                for item, source in zip(payload.results, sources, strict=True):
                    results.append(EbsdIndexResult(**{**item, "source": source}, model=payload.model,
                                                   version=payload.version))  # fmt: skip
                if bar is not None:
                    bar.update(len(payload.results))
            if per_pattern is not None and len(per_pattern) != len(results):
                raise ValueError(f"pc has {len(per_pattern)} rows but there are {len(results)} patterns")
            return results
        finally:
            if bar is not None:
                bar.close()

    def _ebsd_index_request(
        self, chunk: EbsdChunk, params: dict[str, str], per_pattern: list[Any] | None, start: int, refine: bool
    ) -> Callable[[], httpx.Request]:
        timeout = self._long_timeout() if refine else self._http.timeout
        if chunk.array is not None:
            data = encode_npy(chunk.array)
            if per_pattern is None:
                return lambda: self._http.build_request(
                    "POST", "/v1/ebsd/index", content=data, params=params, timeout=timeout,
                    headers={"Content-Type": "application/x-npy"},
                )  # fmt: skip
            rows = per_pattern[start : start + len(chunk.array)]
            if len(rows) != len(chunk.array):
                raise ValueError(f"pc has {len(per_pattern)} rows, fewer than the patterns")
            fields = {"pc": json.dumps(rows)}
            return lambda: self._http.build_request(
                "POST", "/v1/ebsd/index", files=[("files", ("patterns.npy", data, "application/x-npy"))],
                data=fields, params=params, timeout=timeout,
            )  # fmt: skip
        if per_pattern is not None:
            raise ValueError("a PC per pattern needs arrays or .npy files (TIFF pages are counted by the server); "
                             "give one pc for all image files")  # fmt: skip
        parts = [("files", (path.name, path.read_bytes(), _mime(path))) for path in chunk.files]
        return lambda: self._http.build_request("POST", "/v1/ebsd/index", files=parts, params=params, timeout=timeout)

    def _ebsd_scan_flow(
        self,
        path_or_array: Any,
        pc: Any,
        refine: bool,
        version: str | None,
        progress: bool,
        chunk_rows: int | None,
        static_background: bool,
    ) -> Flow[EbsdScanResult]:
        """Index a scan: an HDF5 file uploaded as it is, or an array sent in row blocks and stitched."""
        timeout = self._long_timeout()
        if scan_kind(path_or_array) == "hdf5":
            path = Path(path_or_array)
            size = path.stat().st_size
            bar = _optional_bar(size, "B", f"upload {path.name}") if progress else None
            params = _ebsd_params(pc, refine, version, static_background)

            def build() -> httpx.Request:
                request = self._http.build_request(
                    "POST", "/v1/ebsd/scan", params=params, timeout=timeout,
                    headers={"Content-Type": "application/x-hdf5", "Content-Length": str(size)},
                )  # fmt: skip
                return httpx.Request(request.method, request.url, headers=request.headers,
                                     stream=_FileUpload(path, bar), extensions=request.extensions)  # fmt: skip

            try:
                response = yield from self._request("POST", "/v1/ebsd/scan", build=build)
            finally:
                if bar is not None:
                    bar.close()
            return _scan_result([parse_body(response, _EbsdScanResponse)])
        scan = load_scan(path_or_array)
        rows, cols = int(scan.shape[0]), int(scan.shape[1])
        limit = EBSD_SCAN_REFINE_BLOCK_PATTERNS if refine else EBSD_SCAN_BLOCK_PATTERNS
        row_pixels = max(1, cols * int(scan.shape[2]) * int(scan.shape[3]))
        block_rows = chunk_rows or max(1, min(limit // cols, EBSD_MAX_PIXELS // row_pixels))  # the server's budgets
        if block_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        if refine and block_rows * cols > EBSD_SCAN_REFINE_BLOCK_PATTERNS:
            raise ValueError(f"refinement takes at most {EBSD_SCAN_REFINE_BLOCK_PATTERNS} patterns per request; a "
                             f"block of {block_rows} row(s) x {cols} columns is more: lower chunk_rows or crop")  # fmt: skip
        per_pixel = _pc_rows(pc)
        if per_pixel is not None and len(per_pixel) == rows and len(per_pixel[0]) == cols:
            per_pixel = [values for row in per_pixel for values in row]  # (rows, cols, 3) given as nested lists
        if per_pixel is not None and len(per_pixel) != rows * cols:
            raise ValueError(f"pc has {len(per_pixel)} rows; give one [PCx, PCy, PCz] or one per pixel ({rows * cols})")
        bar = _optional_bar(rows * cols, "pattern", "ebsd scan") if progress else None
        blocks: list[_EbsdScanResponse] = []
        pinned = version
        try:
            for r0 in range(0, rows, block_rows):
                block = scan[r0 : r0 + block_rows]
                data = encode_npy(block)
                params = _ebsd_params(None if per_pixel is not None else pc, refine, pinned, static_background)
                fields = None
                if per_pixel is not None:
                    fields = {"pc": json.dumps(per_pixel[r0 * cols : (r0 + len(block)) * cols])}
                build = self._scan_block_request(data, params, fields, timeout)
                try:
                    response = yield from self._request("POST", "/v1/ebsd/scan", build=build)
                except InvalidInputError as exc:
                    raise InvalidInputError(
                        exc.status_code, exc.error_type,
                        f"in the block of scan rows {r0}-{r0 + len(block) - 1} (its row 0 is your row {r0}): {exc.message}",
                        response=exc.response,
                    ) from exc  # fmt: skip
                payload = parse_body(response, _EbsdScanResponse)
                check_answer(response, len(block), "scan rows", payload.rows, pinned, payload.version)
                pinned = payload.version
                blocks.append(payload.shifted(r0))
                if bar is not None:
                    bar.update(len(block) * cols)
        finally:
            if bar is not None:
                bar.close()
        return _scan_result(blocks)

    def _scan_block_request(
        self, data: bytes, params: dict[str, str], fields: dict[str, str] | None, timeout: httpx.Timeout
    ) -> Callable[[], httpx.Request]:
        if fields is None:
            return lambda: self._http.build_request(
                "POST", "/v1/ebsd/scan", content=data, params=params, timeout=timeout,
                headers={"Content-Type": "application/x-npy"},
            )  # fmt: skip
        return lambda: self._http.build_request(
            "POST", "/v1/ebsd/scan", files=[("file", ("scan.npy", data, "application/x-npy"))], data=fields,
            params=params, timeout=timeout,
        )  # fmt: skip

    # -- scattering sorter ---------------------------------------------------------------------------------------

    def _scattering_flow(
        self,
        path_or_array: Any,
        saliency: bool,
        saliency_label: str | None,
        version: str | None,
        setup: dict[str, float | None] | None = None,
    ) -> Flow[list[ScatteringResult]]:
        """Sort one file, ``bytes`` or 2D array: one result per frame."""
        return (yield from self._scattering_upload_flow(scattering_upload(path_or_array), saliency, saliency_label,
                                                        version, setup))  # fmt: skip

    def _scattering_upload_flow(
        self,
        upload: ScatteringUpload,
        saliency: bool,
        saliency_label: str | None,
        version: str | None,
        setup: dict[str, float | None] | None = None,
    ) -> Flow[list[ScatteringResult]]:
        """One request; ``setup``: ``distance_m``, ``wavelength_angstrom``, ``pixel_size_um`` (``None``: not sent)."""
        params: dict[str, str] = {
            name: repr(float(value)) for name, value in (setup or {}).items() if value is not None
        }
        if saliency:
            params["saliency"] = "true"
        if saliency_label is not None:
            params["saliency_label"] = saliency_label
        if version is not None:
            params["version"] = version
        timeout = self._long_timeout()
        headers = {"Content-Type": upload.content_type}
        sent_name = None
        if upload.name is not None:  # the server names the file's frames after it (in results and messages)
            sent_name = Path(upload.name).name
            headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(sent_name, safe='')}"

        def build() -> httpx.Request:
            return self._http.build_request("POST", SCATTERING_PATH, content=upload.data, params=params,
                                            timeout=timeout, headers=headers)  # fmt: skip

        response = yield from self._request("POST", SCATTERING_PATH, build=build)
        payload = parse_body(response, _XrdResponse)
        if version is not None and payload.version != version:
            raise UnexpectedResponseError(f"expected model version {version!r} but the server answered with "
                                          f"{payload.version!r}", response=response)  # fmt: skip
        results = []
        for item in payload.results:
            fields = dict(item)
            encoded = fields.pop("saliency_png_base64", None)
            fields["saliency_png"] = base64.b64decode(encoded) if encoded else None
            fields["source"] = _scattering_source(fields.get("source"), sent_name, upload.name)
            results.append(ScatteringResult(**fields, model=payload.model, version=payload.version))
        return results

    def _scattering_folder_flow(
        self,
        folder: str | os.PathLike[str],
        pattern: str,
        recursive: bool,
        progress: bool,
        saliency: bool,
        saliency_label: str | None,
        version: str | None,
        setup: dict[str, float | None] | None = None,
    ) -> Flow[list[ScatteringFileResult]]:
        """One request per file (version pinned after the first answer); refusals recorded per file."""
        files = scattering_files(folder, pattern, recursive)
        bar = _optional_bar(len(files), "file", "scattering") if progress else None
        answers: list[ScatteringFileResult] = []
        pinned = version
        try:
            for path in files:
                try:
                    upload = scattering_upload(path)
                    results = yield from self._scattering_upload_flow(upload, saliency, saliency_label, pinned, setup)
                except (NotFoundError, ServiceUnavailableError):
                    raise  # an unknown version or a server that cannot sort: every file would fail the same way
                except (ClientRequestError, ServerError) as exc:
                    answers.append(ScatteringFileResult(path=str(path), error=exc.message, status_code=exc.status_code))
                except OSError as exc:
                    answers.append(ScatteringFileResult(path=str(path), error=f"{type(exc).__name__}: {exc}"))
                else:
                    pinned = results[0].version if results else pinned
                    answers.append(ScatteringFileResult(path=str(path), results=results))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return answers

    # -- batch jobs --------------------------------------------------------------------------------------------

    def _submit_job_flow(self, model: str, inputs: Sequence[Any] | str, version: str | None) -> Flow[Job]:
        body = {"model": model, "inputs": as_input_list(inputs), "version": version}
        # Not retried: a retry after a lost response could submit the job twice.
        response = yield from self._request("POST", "/v1/jobs", body=body, retry=False)
        return parse_body(response, Job)

    def _job_flow(self, job_id: str) -> Flow[Job]:
        response = yield from self._request("GET", job_path(job_id))
        return parse_body(response, Job)

    def _cancel_job_flow(self, job_id: str) -> Flow[Job]:
        response = yield from self._request("DELETE", job_path(job_id))  # idempotent: safe to retry
        return parse_body(response, Job)

    def _job_results_page_flow(self, job_id: str, offset: int, limit: int) -> Flow[JobResultsPage]:
        if offset < 0 or limit < 1:
            raise ValueError(f"need offset >= 0 and limit >= 1, got offset={offset}, limit={limit}")
        response = yield from self._request("GET", job_path(job_id, f"/results?offset={offset}&limit={limit}"))
        return parse_body(response, _JobResultsResponse).typed()

    def _wait_job_flow(self, job_id: str, timeout_s: float | None, poll_s: float, progress: bool) -> Flow[Job]:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0 seconds, got {poll_s}")
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        bar = None
        try:
            while True:
                job = yield from self._job_flow(job_id)
                if progress and bar is None:
                    bar = _optional_progress_bar(job)
                if bar is not None:
                    bar.update(job.done - bar.n)
                if job.finished:
                    return job
                if deadline_s is not None:
                    remaining_s = deadline_s - time.monotonic()
                    if remaining_s <= 0:
                        raise TimeoutError(
                            f"job {job_id} is still {job.state} after {timeout_s} s ({job.done}/{job.total} done)"
                        )
                    yield from _sleep(min(poll_s, remaining_s))
                else:
                    yield from _sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()


def _optional_progress_bar(job: Job) -> Any:
    """A progress bar over a job's items if tqdm is installed, else ``None``."""
    try:
        return open_progress_bar(job.total, unit="item", desc=f"job {job.job_id[:8]} {job.model}")
    except ImportError:
        logger.debug("tqdm is not installed: no progress bar")
        return None


class _XrdResponse(BaseModel):
    """Envelope of a 200 response of the XRD endpoints (results parsed by the caller's result type)."""

    model: str
    version: str
    results: list[dict[str, Any]]


class _EbsdScanResponse(BaseModel):
    """Body of a 200 response of ``POST /v1/ebsd/scan`` (or a row block of one)."""

    model: str
    version: str
    rows: int
    cols: int
    refined: bool = False
    pc: list[float]
    euler_bunge_deg: list[list[list[float] | None]]
    quaternion: list[list[list[float] | None]]
    confidence: list[list[float | None]]
    expected_error_deg: list[list[float | None]]
    refinement_score: list[list[float | None]] | None = None
    errors: list[EbsdPixelError] = []
    ipf_z_rgb: list[list[list[int]]]

    def shifted(self, row_offset: int) -> _EbsdScanResponse:
        """The same block with its error rows counted from the scan's first row."""
        errors = [EbsdPixelError(row=e.row + row_offset, col=e.col, error=e.error) for e in self.errors]
        return self.model_copy(update={"errors": errors})


def _scan_result(blocks: list[_EbsdScanResponse]) -> EbsdScanResult:
    """Row blocks stitched into one scan."""
    first = blocks[0]
    rows = sum(b.rows for b in blocks)
    weights = [b.rows * b.cols for b in blocks]
    pc = [sum(b.pc[i] * w for b, w in zip(blocks, weights, strict=True)) / max(sum(weights), 1) for i in range(3)]

    def stacked(name: str) -> Any:
        parts = [getattr(b, name) for b in blocks]
        return None if any(p is None for p in parts) else [row for part in parts for row in part]

    return EbsdScanResult(
        rows=rows, cols=first.cols, euler_bunge_deg=stacked("euler_bunge_deg"), quaternion=stacked("quaternion"),
        confidence=stacked("confidence"), expected_error_deg=stacked("expected_error_deg"),
        refinement_score=stacked("refinement_score"), errors=[e for b in blocks for e in b.errors],
        ipf_z_rgb=stacked("ipf_z_rgb"), pc=[round(v, 6) for v in pc], refined=first.refined, model=first.model,
        version=first.version,
    )  # fmt: skip


def _pc_rows(pc: Any) -> list[Any] | None:
    """``pc`` as nested lists when it holds one PC per pattern (2-D or 3-D), else ``None`` (one PC, or none)."""
    if pc is None:
        return None
    values = pc.tolist() if hasattr(pc, "tolist") else pc
    if isinstance(values, Sequence) and values and isinstance(values[0], Sequence):
        return list(values)
    return None


def _ebsd_params(pc: Any, refine: bool, version: str | None, static_background: bool) -> dict[str, str]:
    """Query parameters of an EBSD request (one PC for every pattern as ``x,y,z``)."""
    params: dict[str, str] = {}
    if pc is not None:
        values = pc.tolist() if hasattr(pc, "tolist") else list(pc)
        if len(values) != 3:
            raise ValueError(f"pc is [PCx, PCy, PCz] (or one such triple per pattern); got {values!r}")
        params["pc"] = ",".join(repr(float(v)) for v in values)
    if refine:
        params["refine"] = "true"
    if static_background:
        params["static_background"] = "true"
    if version is not None:
        params["version"] = version
    return params


_SOURCE_INDEX = re.compile(r"(.*)\[(\d+)\]")


def _scattering_source(source: Any, sent_name: str | None, path: str | None) -> str | None:
    """The server's ``name``/``name[frame k]`` as ``path``/``path[frame k]`` for an uploaded file."""
    if sent_name is None or path is None or not isinstance(source, str):
        return source
    if source == sent_name or source.startswith(sent_name + "["):
        return path + source[len(sent_name) :]
    return source


def _file_sources(files: list[Path], results: list[dict[str, Any]]) -> list[str]:
    """The caller's path (and page) of each result of a multipart request, from the server's ``source``
    (``name`` for a one-pattern file, ``name[k]`` for the k-th pattern of a multi-pattern one)."""
    sources: list[str] = []
    index = -1
    for item in results:
        match = _SOURCE_INDEX.fullmatch(str(item.get("source") or ""))
        page = int(match.group(2)) if match else None
        if page is None or page == 0 or index < 0:
            index += 1
        path = files[min(index, len(files) - 1)]
        sources.append(str(path) if page is None else f"{path}[{page}]")
    return sources


def _mime(path: Path) -> str:
    return {".png": "image/png", ".tif": "image/tiff", ".tiff": "image/tiff"}.get(path.suffix.lower(),
                                                                                    "application/octet-stream")  # fmt: skip


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


class _FileUpload(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A file sent in 1 MiB pieces, moving a progress bar (re-readable: a retry sends it again)."""

    def __init__(self, path: Path, bar: Any) -> None:
        self.path = path
        self.bar = bar

    def _pieces(self) -> Iterator[bytes]:
        if self.bar is not None:
            self.bar.reset()
        with open(self.path, "rb") as handle:
            while piece := handle.read(2**20):
                if self.bar is not None:
                    self.bar.update(len(piece))
                yield piece

    def __iter__(self) -> Iterator[bytes]:
        yield from self._pieces()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces():
            yield piece
