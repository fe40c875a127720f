"""Errors: domain errors raised by codecs and model lifecycles (no transport in them), and the HTTP errors of the API.

Domain errors (:class:`DomainError` and its subclasses; the codecs' own ``PatternError``, ``EbsdInputError`` and
``ImageError`` too) say what is wrong and what is accepted. The API maps them to HTTP errors in one place,
:func:`matserve.api.common.http_error`. HTTP errors (:class:`MatserveError` and its subclasses) become responses
``{"error": {"type": ..., "message": ...}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """An error of a codec or a model lifecycle, with no HTTP status."""


class InputRejected(DomainError, ValueError):
    """An input or option the model cannot use (the API answers 422)."""


class VersionNotFound(DomainError, LookupError):
    """A model version the registry does not hold (404)."""


class ModelUnavailable(DomainError):
    """The model cannot answer now: degraded, or its runtime unreachable (503; job workers retry later)."""


class MatserveError(Exception):
    """Base class: ``status`` is the HTTP status, ``error_type`` a stable machine-readable name."""

    status: int = 500
    error_type: str = "internal_error"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_body(self) -> dict[str, dict[str, str]]:
        """The JSON body sent to the client."""
        return {"error": {"type": self.error_type, "message": self.message}}


class InvalidInput(MatserveError):
    """The request is well-formed JSON but its content is not acceptable (422)."""

    status, error_type = 422, "invalid_input"


class MalformedRequest(MatserveError):
    """The body is not valid JSON (400)."""

    status, error_type = 400, "malformed_request"


class PayloadTooLarge(MatserveError):
    """Too many items or too many bytes (413)."""

    status, error_type = 413, "payload_too_large"


class UnsupportedMediaType(MatserveError):
    """A content type the endpoint does not read (415)."""

    status, error_type = 415, "unsupported_media_type"


class ModelNotFound(MatserveError):
    """Unknown model or version (404)."""

    status, error_type = 404, "not_found"


class Unavailable(MatserveError):
    """The model cannot answer right now, e.g. its runtime is unreachable (503)."""

    status, error_type = 503, "unavailable"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "2"}


class Unauthorized(MatserveError):
    """Missing or wrong credentials for an admin route (401)."""

    status, error_type = 401, "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="matserve-admin"'}


class Forbidden(MatserveError):
    """The route is switched off on this server (403), e.g. the admin API without ``MATSERVE_ADMIN_TOKEN``."""

    status, error_type = 403, "forbidden"


class RateLimited(MatserveError):
    """Too many requests from one client (429); ``Retry-After`` (whole seconds) says when to come back.

    Parameters
    ----------
    message : str
        What the client is told (the limit and the wait).
    retry_after_s : int
        Seconds until the client's next request will be served, sent as the ``Retry-After`` header.
    """

    status, error_type = 429, "rate_limited"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def response_headers(self) -> dict[str, str]:
        """The response headers: ``Retry-After`` in whole seconds (at least 1)."""
        return {"Retry-After": str(max(1, self.retry_after_s))}


class RequestTimeout(MatserveError):
    """The client stopped sending its request body (408); the connection is closed after the answer."""

    status, error_type = 408, "request_timeout"
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}
