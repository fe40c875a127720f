"""Exceptions raised by the matserve client.

Hierarchy::

    MatserveError
    ├── APIError                      the server answered with a non-2xx status
    │   ├── ClientRequestError        4xx
    │   │   ├── InvalidInputError     400, 422
    │   │   ├── NotFoundError         404
    │   │   ├── PayloadTooLargeError  413
    │   │   └── RateLimitedError      429 (raised once retries are exhausted)
    │   └── ServerError               5xx
    │       └── ServiceUnavailableError  503 (raised once retries are exhausted)
    ├── MatserveConnectionError       no HTTP response at all (connect error, dropped connection, ...)
    │   └── MatserveTimeoutError      connect/read/write/pool timeout
    └── UnexpectedResponseError       a 2xx response whose body does not follow the API contract

Per-formula failures (an unparsable formula inside an otherwise valid batch) are *not* exceptions: they are
reported in :attr:`FormationEnthalpyResult.error <matserve_client.FormationEnthalpyResult.error>`.
"""

from __future__ import annotations

import httpx

__all__ = [
    "APIError",
    "ClientRequestError",
    "InvalidInputError",
    "MatserveConnectionError",
    "MatserveError",
    "MatserveTimeoutError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "ServerError",
    "ServiceUnavailableError",
    "UnexpectedResponseError",
]


class MatserveError(Exception):
    """Base class of every exception raised by :mod:`matserve_client`."""


class APIError(MatserveError):
    """The server answered with an error status (anything outside 2xx).

    Parameters
    ----------
    status_code : int
        HTTP status code of the response.
    error_type : str or None
        Machine-readable error type from the body (``{"error": {"type": ...}}``), e.g. ``"invalid_input"``,
        ``"payload_too_large"``, ``"not_found"``, ``"unavailable"``; ``None`` when the body did not carry one.
    message : str
        Human-readable message extracted from the body (JSON ``error.message``, ``detail``, or plain text).
    response : httpx.Response, optional
        The raw response, for debugging. Not preserved when the exception is pickled.

    Attributes
    ----------
    status_code : int
    error_type : str or None
    message : str
    response : httpx.Response or None
    """

    def __init__(
        self,
        status_code: int,
        error_type: str | None,
        message: str,
        *,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(status_code, error_type, message)
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.response = response

    def __str__(self) -> str:
        kind = f" {self.error_type}" if self.error_type else ""
        return f"HTTP {self.status_code}{kind}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code!r}, error_type={self.error_type!r}, message={self.message!r})"


class ClientRequestError(APIError):
    """The request was rejected (4xx); sending it again unchanged will fail again."""


class InvalidInputError(ClientRequestError):
    """The request body was malformed or failed validation (400 or 422)."""


class NotFoundError(ClientRequestError):
    """Unknown route, model or model version (404)."""


class PayloadTooLargeError(ClientRequestError):
    """Too many formulas in one request, or the body is too big (413).

    Lower ``chunk_size`` on the client (or leave it ``None`` so the server's ``max_batch_size`` is used).
    """


class RateLimitedError(ClientRequestError):
    """The server's per-client rate limit refused the request (429), and retries were exhausted.

    Attributes
    ----------
    retry_after_s : float or None
        The server's ``Retry-After``, in seconds: when the next request will be accepted.
    """

    @property
    def retry_after_s(self) -> float | None:
        return retry_after_s(self.response)


def retry_after_s(response: httpx.Response | None) -> float | None:
    """A response's ``Retry-After`` header in seconds (``None`` when absent or not a number of seconds)."""
    if response is None:
        return None
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


class ServerError(APIError):
    """The server failed to process a valid request (5xx)."""


class ServiceUnavailableError(ServerError):
    """The server is overloaded, starting up or has no usable model (503), and retries were exhausted."""


class MatserveConnectionError(MatserveError):
    """No HTTP response was received: connection refused or dropped, DNS failure, timeout, ...

    The underlying :class:`httpx.TransportError` is available as ``__cause__``.
    """


class MatserveTimeoutError(MatserveConnectionError):
    """A connect, read, write or pool timeout expired (see the client's ``timeout``, in seconds)."""


class UnexpectedResponseError(MatserveError):
    """A successful (2xx) response whose body does not follow the API contract.

    Parameters
    ----------
    message : str
        What was wrong with the response.
    response : httpx.Response, optional
        The raw response, for debugging.
    """

    def __init__(self, message: str, *, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.response = response
