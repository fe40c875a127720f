"""Slow clients: a header-read timeout and a body-read timeout on the HTTP server's connections.

Why a patch of uvicorn
    BentoML 1.4 runs each API worker as ``uvicorn.Server(uvicorn.Config(app=..., ...))``
    (``_bentoml_impl/worker/service.py``) and exposes no way to choose uvicorn's HTTP protocol class or to hook
    its connections. Uvicorn itself has no header-read timeout: its keep-alive timer starts only after a
    response and stops at the first byte of the next request, so a client that opens a connection and sends
    nothing, or sends its headers a byte at a time, holds the connection for ever. :func:`install` therefore
    points uvicorn's protocol names (``auto``, ``httptools``, ``h11`` in ``uvicorn.config.HTTP_PROTOCOLS``) at
    the subclasses below. Uvicorn resolves the name when the worker's server starts, after BentoML has imported
    the service module, which calls :func:`install`; this works for ``matserve serve`` and for a plain
    ``bentoml serve`` (the container's entrypoint) alike. Nothing else of uvicorn changes.

Header timeout (``MATSERVE_HTTP_HEADER_TIMEOUT_S``, 10 s)
    A timer starts when a connection opens and again after each response; if it fires while no request is being
    served (the next request's headers are not complete), the connection is closed without an answer, and
    ``matserve_http_timeouts_total{phase="headers"}`` (some bytes came) or ``{phase="idle"}`` (none came) counts
    it. A request whose headers are complete is never cut by this timer, however long it runs. Idle keep-alive
    connections are still closed by uvicorn's own keep-alive timeout first (5 s in BentoML).

Body timeout (``MATSERVE_HTTP_BODY_TIMEOUT_S``, 30 s)
    :class:`BodyTimeout` wraps the whole ASGI app (BentoML's, with ``/v1`` inside): while a request's body is
    incomplete, each wait for its next part may take at most this long. Otherwise the app's own handling of
    the aborted read is dropped and the client gets 408 with the usual error body and ``Connection: close``
    (uvicorn then closes the connection), counted in ``{phase="body"}``. The limit is per part, not for the
    whole body: a large upload on a slow but steady link is not cut off.

0 turns either timeout off.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import uvicorn.config
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from matserve.errors import RequestTimeout
from matserve.metrics import HTTP_TIMEOUTS
from matserve.settings import Settings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a serving requirement
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

logger = logging.getLogger("matserve.http_timeouts")


class BodyTimeout:
    """ASGI middleware: 408 and ``Connection: close`` when the next part of a request body takes too long.

    Parameters
    ----------
    app : ASGIApp
    timeout_s : float
        Longest wait for each part of the body, in seconds (0: no limit).
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.timeout_s <= 0:
            await self.app(scope, receive, send)
            return
        body_done = False
        timed_out = False
        response_started = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done:  # waits for a disconnect (e.g. while streaming a response) are not limited
                return await receive()
            try:
                with anyio.fail_after(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                raise self.error() from None  # the app answers it (or a 400/500): replaced by our 408 below
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if timed_out and not response_started:
                return  # the app's own answer to the aborted read is dropped: the 408 below goes out instead
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not timed_out or response_started:
                raise
        if timed_out and not response_started:
            HTTP_TIMEOUTS.labels(phase="body").inc()
            logger.debug("408 on %s %s: the body stalled", scope.get("method"), scope.get("path"))
            error = self.error()
            response = JSONResponse(error.to_body(), status_code=error.status, headers=error.headers)
            await response(scope, receive, send)

    def error(self) -> RequestTimeout:
        """What a client whose body stalled is told."""
        return RequestTimeout(
            f"the request body stalled: no data for {self.timeout_s:g} s (the server's limit per part of the body); "
            "the connection is closed, send the request again"
        )


class _HeaderTimeout:
    """Mixin for uvicorn's HTTP/1.1 protocols: close a connection whose next request's headers do not arrive in
    time, and run the app behind :class:`BodyTimeout`.

    Set by :func:`install`: ``header_timeout_s`` and ``body_timeout_s`` (seconds; 0 turns each off).
    """

    header_timeout_s: float = 0.0
    body_timeout_s: float = 0.0
    # provided by the uvicorn protocol class this is mixed into
    app: ASGIApp
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._bytes_since_armed = False
        if self.body_timeout_s > 0:
            self.app = BodyTimeout(self.app, self.body_timeout_s)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        self._bytes_since_armed = True
        super().data_received(data)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._cancel_header_timer()  # the transport now belongs to the WebSocket protocol
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        if self.header_timeout_s > 0 and not self.transport.is_closing():
            self._bytes_since_armed = False
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request's headers are complete and it is being served (or queued behind one)
        phase = "headers" if self._bytes_since_armed else "idle"
        HTTP_TIMEOUTS.labels(phase=phase).inc()
        logger.debug("closing a connection: no complete request headers in %g s (%s)", self.header_timeout_s, phase)
        self.transport.close()


class TimeoutH11Protocol(_HeaderTimeout, H11Protocol):
    """uvicorn's h11 protocol with the header and body timeouts."""


if HttpToolsProtocol is not None:

    class TimeoutHttpToolsProtocol(_HeaderTimeout, HttpToolsProtocol):
        """uvicorn's httptools protocol with the header and body timeouts."""


def install(settings: Settings) -> None:
    """Make uvicorn's HTTP protocols (by name) the timeout ones of this module, with the settings' timeouts.

    Idempotent; call it before uvicorn's server starts (the service module does, at import).
    """
    _HeaderTimeout.header_timeout_s = max(settings.http_header_timeout_s, 0.0)
    _HeaderTimeout.body_timeout_s = max(settings.http_body_timeout_s, 0.0)
    protocols = {"h11": f"{__name__}:TimeoutH11Protocol", "auto": f"{__name__}:TimeoutH11Protocol"}
    if HttpToolsProtocol is not None:
        protocols["httptools"] = protocols["auto"] = f"{__name__}:TimeoutHttpToolsProtocol"
    uvicorn.config.HTTP_PROTOCOLS.update(protocols)
