"""One error envelope for every failure under ``/v1``, and the readiness body that names degraded models.

:func:`install` gives a FastAPI app (the domain API that BentoML mounts at ``/v1``):

* a handler for Starlette's own errors (a body it cannot parse, a wrong method), answered as
  ``{"error": {"type", "message"}}`` like every :class:`~matserve.errors.MatserveError`;
* a handler for anything unforeseen: 500 in the envelope, the traceback to the log only;
* a catch-all route, registered last, so that a path no route takes gets 404 (or 405 with ``Allow``) in the
  envelope: BentoML mounts the app "passively", and would otherwise answer such paths with its own plain-text 404.

:class:`ReadinessDetails` is an ASGI middleware of the BentoML app (outside ``/v1``) for ``GET /readyz``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from matserve.errors import MatserveError, ModelNotFound
from matserve.registry import Registry

logger = logging.getLogger("matserve.http_errors")

ERROR_TYPES = {400: "malformed_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
               413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_input"}  # fmt: skip
"""The envelope's ``type`` for the statuses Starlette raises itself."""
ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class MethodNotAllowed(MatserveError):
    """A route that exists, asked with a method it does not take (405)."""

    status, error_type = 405, "method_not_allowed"


def install(app: FastAPI, root_path: str = "/v1") -> None:
    """Add the handlers and the catch-all route to ``app``; call it after every other route is registered.

    Parameters
    ----------
    app : FastAPI
    root_path : str
        Where the app is mounted (only used in messages).
    """

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own errors (a body it cannot parse, a wrong method) in the one error envelope."""
        if exc.status_code == 404:
            message = f"no route {request.url.path}; the routes are listed at GET {root_path}/docs"
        elif exc.status_code == 405:
            allowed = exc.headers.get("Allow", "") if exc.headers else ""
            message = f"method {request.method} is not allowed on {request.url.path}"
            message += f"; allowed: {allowed}" if allowed else ""
        else:
            message = str(exc.detail)
        body = {"error": {"type": ERROR_TYPES.get(exc.status_code, "http_error"), "message": message}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        """Anything unforeseen: a 500 in the envelope (the traceback goes to the log, never to the client)."""
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(MatserveError("internal error; the server log has the details").to_body(), status_code=500)

    @app.api_route("/{path:path}", methods=ANY_METHOD, include_in_schema=False)
    async def _no_such_route(request: Request, path: str) -> JSONResponse:
        """Every path no other route takes: 404, or 405 naming the methods its route takes."""
        here = f"{root_path}/{path}"
        others = [route for route in app.routes if getattr(route, "endpoint", None) is not _no_such_route]
        allowed = [method for method in ANY_METHOD
                   if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in others)]  # fmt: skip
        if allowed:
            error = MethodNotAllowed(f"method {request.method} is not allowed on {here}; allowed: {', '.join(allowed)}")
            return JSONResponse(error.to_body(), status_code=error.status, headers={"Allow": ", ".join(allowed)})
        raise ModelNotFound(f"no route {here}; the routes are listed at GET {root_path}/docs")


class ReadinessDetails:
    """ASGI middleware of the BentoML app: ``GET /readyz`` names degraded models.

    BentoML answers ``/readyz`` with an empty 200 when the service is ready. When a model is degraded (its active
    version refused by the registry), this answers 200 with ``{"ready": true, "degraded": {model: reason}}``
    instead: the replica still serves every other model and pinned versions, and every replica reads the same
    registry, so failing readiness would take all of them out of service for one model. The
    ``matserve_model_degraded`` gauge carries the same signal for alerts. :data:`READINESS` holds the registry
    of this process's service (set when the service starts).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        registry = READINESS.registry
        if scope["type"] != "http" or scope.get("path") != "/readyz" or registry is None or not registry.degraded:
            await self.app(scope, receive, send)
            return
        status = {"code": 0}

        async def collect(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]

        await self.app(scope, receive, collect)
        body = {"ready": status["code"] == 200, "degraded": dict(registry.degraded)}
        await JSONResponse(body, status_code=status["code"] or 503)(scope, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - responses never read the body
    return {"type": "http.disconnect"}


class _Readiness:
    """What :class:`ReadinessDetails` reads: the registry of this process's service."""

    registry: Registry | None = None


READINESS = _Readiness()
