"""Python SDK for matserve: typed, twin blocking (:class:`Client`) and asyncio (:class:`AsyncClient`) clients.

>>> from matserve_client import Client
>>> with Client("http://127.0.0.1:3000") as client:  # doctest: +SKIP
...     results = client.formation_enthalpy(["NaCl", "Fe2O3"])
"""

from ._async import AsyncClient
from ._base import DEFAULT_BASE_URL, FALLBACK_MAX_BATCH_SIZE, MAX_BACKOFF
from ._sync import Client
from ._version import __version__
from .exceptions import (
    APIError,
    ClientRequestError,
    InvalidInputError,
    MatserveConnectionError,
    MatserveError,
    MatserveTimeoutError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    UnexpectedResponseError,
)
from .models import (
    TERMINAL_JOB_STATES,
    EbsdIndexResult,
    EbsdPixelError,
    EbsdScanResult,
    FormationEnthalpyResult,
    Job,
    JobResultsPage,
    ModelInfo,
    ModelVersionInfo,
    ScatteringFileResult,
    ScatteringResult,
    XrdNoveltyResult,
    XrdPhaseComponent,
    XrdPhaseResult,
)
from .xrd_files import PatternFileError, XrdPattern, read_pattern

__all__ = [
    "DEFAULT_BASE_URL",
    "FALLBACK_MAX_BATCH_SIZE",
    "MAX_BACKOFF",
    "TERMINAL_JOB_STATES",
    "APIError",
    "AsyncClient",
    "Client",
    "ClientRequestError",
    "EbsdIndexResult",
    "EbsdPixelError",
    "EbsdScanResult",
    "FormationEnthalpyResult",
    "InvalidInputError",
    "Job",
    "JobResultsPage",
    "MatserveConnectionError",
    "MatserveError",
    "MatserveTimeoutError",
    "ModelInfo",
    "ModelVersionInfo",
    "NotFoundError",
    "PatternFileError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "ScatteringFileResult",
    "ScatteringResult",
    "ServerError",
    "ServiceUnavailableError",
    "UnexpectedResponseError",
    "XrdNoveltyResult",
    "XrdPattern",
    "XrdPhaseComponent",
    "XrdPhaseResult",
    "__version__",
    "read_pattern",
]
