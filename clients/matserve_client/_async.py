"""Asynchronous client (same methods as :class:`~matserve_client.Client`, as coroutines)."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import httpx

from ._base import (
    DEFAULT_BACKOFF,
    DEFAULT_BASE_URL,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    LIMITS,
    AsyncDriver,
    default_headers,
)
from ._ebsd import AsyncEbsdMethods
from ._formation import AsyncFormationMethods
from ._jobs import AsyncJobMethods
from ._scattering import AsyncScatteringMethods
from ._xrd import AsyncXrdMethods
from .models import ModelInfo

if TYPE_CHECKING:
    from .kserve import AsyncKServeClient

__all__ = ["AsyncClient"]

_AsyncClientT = TypeVar("_AsyncClientT", bound="AsyncClient")


class AsyncClient(
    AsyncFormationMethods, AsyncXrdMethods, AsyncEbsdMethods, AsyncScatteringMethods, AsyncJobMethods, AsyncDriver
):
    """Asynchronous client for a matserve server.

    Use it as an async context manager, or await :meth:`aclose` when done, to release pooled connections.
    It has the same methods as :class:`~matserve_client.Client`, as coroutines. Chunks of a long list are sent
    one after the other (the first chunk fixes the model version for the rest).

    Parameters
    ----------
    base_url : str or httpx.URL, default "http://127.0.0.1:3000"
        Root URL of the server; a path prefix (``http://host/matserve``) is kept.
    timeout : float, httpx.Timeout or None, default 30.0
        Per-attempt timeout, in seconds, applied to each of connect, read, write and pool acquisition;
        ``None`` disables it. Retries get a fresh timeout.
    retries : int, default 3
        How many times a request is re-sent after HTTP 503 or a connection error/timeout, or after HTTP 429
        (rate limited: waiting at least the server's ``Retry-After``, at most 60 s; then
        :class:`RateLimitedError`), so at most ``retries + 1`` attempts. Other errors are never retried.
    backoff : float, default 0.5
        Base retry delay, in seconds: retry ``n`` (0-based) waits ``min(backoff * 2**n, 8)`` s. 0 retries at once.
    chunk_size : int or None, default None
        Formulas per request when a long list is split. ``None`` uses the server's ``max_batch_size`` for
        ``formation_enthalpy`` (read once from ``GET /v1/models`` and cached; 1000 if it cannot be read).
    transport : httpx.AsyncBaseTransport, optional
        Custom httpx transport (e.g. :class:`httpx.MockTransport` in tests, or one with a proxy or TLS setup).
    headers : mapping of str to str, optional
        Extra headers sent with every request (e.g. ``Authorization``).

    Examples
    --------
    >>> from matserve_client import AsyncClient
    >>> async with AsyncClient("http://127.0.0.1:3000") as client:  # doctest: +SKIP
    ...     [r.formation_enthalpy_ev_per_atom for r in await client.formation_enthalpy(["NaCl", "Fe2O3"])]
    [-2.1, -1.7]
    """

    _http: httpx.AsyncClient

    @staticmethod
    def grpc(target: str, *, timeout: float = 30.0) -> AsyncKServeClient:
        """The asyncio twin of :meth:`Client.grpc`: the typed methods over Triton's KServe-v2 gRPC (``host:8001``).

        Needs ``pip install 'matserve-client[grpc]'``; see :mod:`matserve_client.kserve`.
        """
        from .kserve import AsyncKServeClient

        return AsyncKServeClient(target, timeout=timeout, protocol="grpc")

    def __init__(
        self,
        base_url: str | httpx.URL = DEFAULT_BASE_URL,
        *,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        chunk_size: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(retries=retries, backoff=backoff, chunk_size=chunk_size)
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, transport=transport, headers=default_headers(headers), limits=LIMITS
        )

    async def models(self) -> list[ModelInfo]:
        """List the servable models and their versions (``GET /v1/models``).

        Also refreshes the cached ``max_batch_size`` used for chunking.

        Returns
        -------
        list of ModelInfo
            Models with their active version, ``max_batch_size`` (formulas per request) and versions.

        Raises
        ------
        APIError, MatserveConnectionError, UnexpectedResponseError
            As for :meth:`formation_enthalpy`.
        """
        return await self._run(self._models_flow())

    async def ready(self) -> bool:
        """Whether the server is ready to serve predictions (``GET /readyz`` answers 2xx).

        A single attempt, never retried; errors and connection failures give ``False`` instead of raising.
        """
        return await self._run(self._probe_flow("/readyz"))

    async def live(self) -> bool:
        """Whether the server process is up (``GET /livez`` answers 2xx); a single attempt, never raises."""
        return await self._run(self._probe_flow("/livez"))

    async def aclose(self) -> None:
        """Close pooled connections. The client cannot be used afterwards."""
        await self._http.aclose()

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._http.is_closed

    async def __aenter__(self: _AsyncClientT) -> _AsyncClientT:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
