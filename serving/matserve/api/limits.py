"""Request limits of every POST route, enforced before the body is read: content type, encoding and size.

Each API module declares its routes' limits (:data:`matserve.api.ebsd.MEDIA_TYPES` and the like); the app
builder (:func:`matserve.service.build_app`) passes them, with the settings' byte limits, to
:class:`RequestLimits`.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from matserve.errors import MatserveError, PayloadTooLarge, UnsupportedMediaType


class RequestLimits:
    """ASGI middleware: POST bodies of an accepted content type and at most ``max_body_bytes`` (415 / 413 otherwise).

    The size limit holds for every content type (JSON, binary and multipart bodies alike): a declared
    ``Content-Length`` over it is refused before the body is read, and a body that turns out larger (chunked)
    is cut off at the limit.

    Parameters
    ----------
    app : ASGIApp
    max_body_bytes : int
        Limit of every POST route not in ``route_max_body_bytes``.
    route_max_body_bytes : mapping of str to int, optional
        Limits of particular routes, by path inside the app (e.g. ``{"/jobs": 64 * 2**20}``).
    route_media_types : mapping of str to tuple of str, optional
        Content types of particular routes (e.g. the EBSD routes take images and arrays); every other route
        takes ``application/json`` only.
    route_json_max_body_bytes : mapping of str to int, optional
        Lower limits of JSON bodies on routes that also take binary files: numbers parsed from JSON take ~11x
        their text's size in Python objects before any pixel budget can be applied.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        route_max_body_bytes: Mapping[str, int] | None = None,
        route_media_types: Mapping[str, tuple[str, ...]] | None = None,
        route_json_max_body_bytes: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.route_max_body_bytes = dict(route_max_body_bytes or {})
        self.route_media_types = dict(route_media_types or {})
        self.route_json_max_body_bytes = dict(route_json_max_body_bytes or {})

    @staticmethod
    def _route(scope: Scope) -> str:
        path = scope.get("path", "")
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):  # mounted app (BentoML mounts this one at /v1)
            path = path[len(root_path) :]
        return path.rstrip("/") or "/"

    def limit(self, scope: Scope, media_type: str = "") -> int:
        """The body limit of the request's route (and, for JSON, content type), in bytes."""
        route = self._route(scope)
        limit = self.route_max_body_bytes.get(route, self.max_body_bytes)
        if media_type == "application/json" and route in self.route_json_max_body_bytes:
            limit = min(limit, self.route_json_max_body_bytes[route])
        return limit

    def media_types(self, scope: Scope) -> tuple[str, ...]:
        """The content types the request's route accepts."""
        return self.route_media_types.get(self._route(scope), ("application/json",))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        empty = headers.get("content-length", "0").strip() == "0" and "transfer-encoding" not in headers
        accepted = self.media_types(scope)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            await _send_error(UnsupportedMediaType(
                f"content encoding {encoding!r} is not accepted; send the body uncompressed (no Content-Encoding "
                "header; compressed detector files such as Eiger HDF5 are fine as they are)"), send)  # fmt: skip
            return
        if media_type not in accepted and not empty:  # a body-less POST (admin actions) has no type
            if accepted == ("application/json",):
                hint = "send JSON with 'Content-Type: application/json'"
            else:
                hint = "accepted here: " + ", ".join(accepted)
            error: MatserveError = UnsupportedMediaType(
                f"content type {media_type or '(none)'!r} is not accepted; {hint}"
            )
            await _send_error(error, send)
            return
        max_body_bytes = self.limit(scope, media_type)
        json_only = max_body_bytes < self.limit(scope)
        if int(headers.get("content-length", 0) or 0) > max_body_bytes:
            await _send_error(self._too_large(max_body_bytes, json_only), send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > max_body_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _send_error(self._too_large(max_body_bytes, json_only), send)

    @staticmethod
    def _too_large(max_body_bytes: int, json_only: bool = False) -> PayloadTooLarge:
        if json_only:
            return PayloadTooLarge(
                f"JSON body is larger than the limit of {max_body_bytes} bytes for JSON on this route "
                "(MATSERVE_MAX_IMAGE_JSON_BODY_BYTES): send more or larger images as binary files (NPY, TIFF, PNG, "
                "HDF5, ...; the Python SDK does), which have a higher limit"
            )
        return PayloadTooLarge(f"request body is larger than the limit of {max_body_bytes} bytes")


class _BodyTooLarge(Exception):
    pass


async def _send_error(error: MatserveError, send: Send) -> None:
    response = JSONResponse(error.to_body(), status_code=error.status)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - responses never read the body
    return {"type": "http.disconnect"}
