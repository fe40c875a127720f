"""The BentoML service: every registered model behind one typed HTTP API.

Routes (the domain API is a FastAPI app mounted at ``/v1`` inside the BentoML
service, so that every error, validation and size limit answers with the same
``{"error": {"type", "message"}}`` body; BentoML supplies ``/readyz``,
``/livez``, ``/metrics`` and the process model):

* ``POST /v1/formation-enthalpy``: ``{"formulas": [...], "version": optional}``
* ``POST /v1/xrd/phase`` and ``POST /v1/xrd/novelty``: ``{"patterns": [{"two_theta_deg": [...], "intensity":
  [...]}, ...]}`` or ``{"pattern": {...}}``, optional ``wavelength_angstrom`` and ``version``; novelty also
  ``"plots": true`` for PNGs (base64) of the reconstruction and the latent map
* ``POST /v1/ebsd/index``: EBSD patterns as JSON, PNG, TIFF, NPY or multipart file parts (options in the body or
  the query: ``pc``, ``refine``, ``static_background``, ``version``, tilts) -> orientations; see
  :mod:`matserve.ebsd_api`
* ``POST /v1/ebsd/scan``: a scan (4-D NPY or HDF5) -> orientation maps and an IPF-Z PNG
* ``POST /v1/scattering/sort``: 2D X-ray detector images as a file (TIFF, CBF, EDF, HDF5, NPY, PNG), multipart
  file parts or JSON arrays (options ``saliency``, ``saliency_label``, ``version``) -> technique, geometry and
  features per frame, optionally a Grad-CAM PNG; see :mod:`matserve.scattering_api`
* ``POST /v1/jobs``: ``{"model": ..., "inputs": [...], "version": optional}`` -> 202 and a job to poll
* ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/results?offset=&limit=``, ``DELETE /v1/jobs/{id}`` (cancel)
* ``GET /v1/models``: registry listing with card summaries, and how the cache and jobs are backed
* ``GET /v1/docs``, ``GET /v1/openapi.json``: OpenAPI documentation

Predictions are cached per item (:mod:`matserve.cache`); batch jobs (:mod:`matserve.jobs`) are run by
worker threads embedded in this process (``MATSERVE_EMBEDDED_WORKERS``, default 1) and/or by separate
``matserve worker`` processes. Both use Redis when ``REDIS_URL`` is set, else this process's memory (jobs are
then not durable and run only by the embedded workers; this needs the single API worker process configured
below, as each process would have its own jobs).

Run: ``matserve serve`` or ``bentoml serve matserve.service:MatServe``.

This module is over 500 lines because it still holds the schemas and routes of formation enthalpy, XRD, jobs and
admin beside the composition; issue 19 splits it into one API module per model (``serving/matserve/api/``).
Error handling, the OpenAPI document, rate limiting and timeouts already live in their own modules.
"""

from __future__ import annotations

import base64
import functools
import hmac
import logging
import threading
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

import anyio
import bentoml
import numpy as np
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from matserve import ebsd_api, http_errors, http_timeouts, rate_limit, scattering_api
from matserve.cache import make_cache
from matserve.codecs.detector_files import FrameBudget
from matserve.codecs.ebsd import EbsdInputError, EbsdTooLarge
from matserve.codecs.scattering import ImageError
from matserve.codecs.scattering import warm_up as warm_up_scattering_codec
from matserve.codecs.xrd import MAX_POINTS, WAVELENGTH_RANGE_ANGSTROM, PatternInput
from matserve.errors import (
    Forbidden,
    InvalidInput,
    MalformedRequest,
    MatserveError,
    ModelNotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from matserve.http_errors import READINESS, ReadinessDetails
from matserve.jobs import JobInfo, JobNotFound, make_job_store
from matserve.metrics import JOBS, MODEL_DEGRADED
from matserve.models.base import Prediction, ServedModel
from matserve.models.ebsd_indexer import EbsdIndexerModel, check_refine_size
from matserve.models.ebsd_indexer import warm_up as warm_up_ebsd
from matserve.models.formation_enthalpy import Formula
from matserve.models.scattering_sorter import ScatteringSorterModel
from matserve.models.xrd_novelty import XrdNoveltyModel, calibration
from matserve.openapi import job_request_body, json_request_body, resolvable_openapi
from matserve.registry import Registry
from matserve.runtimes import make_runtime
from matserve.settings import Settings
from matserve.worker import MODEL_CLASSES, EmbeddedWorkers, load_models

logger = logging.getLogger("matserve.service")
INLINE_MAX_ITEMS = 16
SETTINGS = Settings()
JOBS_PATH = "/jobs"
XRD_PHASE_PATH = "/xrd/phase"
XRD_NOVELTY_PATH = "/xrd/novelty"
EBSD_INDEX_PATH = "/ebsd/index"
EBSD_SCAN_PATH = "/ebsd/scan"
SCATTERING_SORT_PATH = "/scattering/sort"
MAX_PLOT_PATTERNS = 16
XRD_EXAMPLE = '{"patterns": [{"two_theta_deg": [20.0, 20.02, ...], "intensity": [12, 15, ...]}]}'


class FormationEnthalpyRequest(BaseModel):
    """Formulas to predict; ``version`` pins a registry version (default: the active one)."""

    model_config = ConfigDict(extra="forbid")

    formulas: list[Formula] = Field(min_length=1, max_length=SETTINGS.max_formulas, examples=[["NaCl", "Fe2O3"]])
    version: str | None = Field(default=None, examples=["1.0.0"])


class FormationEnthalpyResult(BaseModel):
    """One formula's answer: values in eV/atom, or ``error`` saying why there is none."""

    formula: str
    normalized_formula: str | None
    formation_enthalpy_ev_per_atom: float | None
    uncertainty_ev_per_atom: float | None = None
    error: str | None = None


class FormationEnthalpyResponse(BaseModel):
    """Results in request order, and the model version that produced them."""

    model: str
    version: str
    results: list[FormationEnthalpyResult]


def _one_of_pattern_or_patterns_schema(schema: dict[str, Any]) -> None:
    """JSON schema of :class:`XrdRequest`: exactly one of ``pattern`` and ``patterns``, neither null."""
    for name in ("pattern", "patterns"):
        field_schema = schema["properties"][name]
        options = [option for option in field_schema.pop("anyOf", []) if option.get("type") != "null"]
        if options:
            field_schema.update(options[0])
        field_schema.pop("default", None)
    schema["oneOf"] = [{"required": ["pattern"]}, {"required": ["patterns"]}]


class XrdRequest(BaseModel):
    """One pattern (``pattern``) or many (``patterns``), on any 2θ grid; the server resamples them.

    ``wavelength_angstrom`` applies to every pattern that does not give its own (default Cu Kα, 1.54184 Å;
    accepted 0.1-3.0 Å: patterns are mapped to the Cu Kα 2θ scale through Bragg's law). ``version`` pins a
    registry version (default: the active one).
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_of_pattern_or_patterns_schema)

    pattern: PatternInput | None = Field(default=None)
    patterns: list[PatternInput] | None = Field(default=None, min_length=1, max_length=SETTINGS.max_patterns)
    wavelength_angstrom: float | None = Field(
        default=None, ge=WAVELENGTH_RANGE_ANGSTROM[0], le=WAVELENGTH_RANGE_ANGSTROM[1], examples=[1.54184]
    )
    version: str | None = Field(default=None, examples=[None])

    @model_validator(mode="before")
    @classmethod
    def _no_explicit_null(cls, data: Any) -> Any:
        """``"pattern": null`` is refused (leave the field out): the schema says the same."""
        if isinstance(data, dict):
            for name in ("pattern", "patterns"):
                if name in data and data[name] is None:
                    raise ValueError(
                        f"'{name}' is null; leave it out, or send {'one pattern' if name == 'pattern' else 'a list'}"
                    )
        return data

    @model_validator(mode="after")
    def _one_of_pattern_or_patterns(self) -> XrdRequest:
        if (self.pattern is None) == (self.patterns is None):
            raise ValueError(
                f"send either 'pattern' (one) or 'patterns' (a list), not {'both' if self.pattern else 'neither'}"
            )
        return self

    def items(self) -> list[dict[str, Any]]:
        """The patterns as a list, each with its wavelength (its own, else the request's)."""
        items = [self.pattern] if self.pattern is not None else list(self.patterns or [])
        if self.wavelength_angstrom is None:
            return items  # type: ignore[return-value]
        return [{**item, "wavelength_angstrom": item.get("wavelength_angstrom") or self.wavelength_angstrom}
                for item in items]  # fmt: skip

    def label(self, i: int) -> str:
        """How the request names item ``i`` in error messages."""
        return "pattern" if self.pattern is not None else f"patterns[{i}]"


class XrdNoveltyRequest(XrdRequest):
    """As :class:`XrdRequest`; ``plots: true`` adds two PNGs per pattern (at most 16 patterns then)."""

    plots: bool = False


class XrdPhaseResult(BaseModel):
    """One pattern's phase: the most probable known structure type and every class probability."""

    phase: str
    space_group: str
    probability: float
    probabilities: dict[str, float]
    coverage: float = Field(description="fraction of 20-90° 2θ (Cu Kα) the pattern covered")


class XrdPhaseResponse(BaseModel):
    model: str
    version: str
    results: list[XrdPhaseResult]


class XrdPlots(BaseModel):
    """Base64-encoded PNG images."""

    reconstruction_png: str
    latent_map_png: str


class XrdNoveltyResult(BaseModel):
    """One pattern's novelty: VAE reconstruction error, its percentile among known-phase validation patterns,
    the verdict at the card's threshold percentile, latent coordinates and the nearest known phase there."""

    reconstruction_error: float
    outlier_probability: float | None = Field(
        default=None,
        description="P(not a single known phase) from the outlier-exposure detector, if the version has one",
    )
    novelty_percentile: float
    is_novel: bool
    threshold_percentile: float
    latent: list[float] = Field(description="latent coordinates (latent means)")
    latent_map: list[float] = Field(description="2-d map coordinates: PCA projection of the latent space")
    nearest_known_phase: str
    nearest_known_phase_share: float = Field(description="share of the 15 nearest known patterns of that phase")
    coverage: float
    plots: XrdPlots | None = None


class XrdNoveltyResponse(BaseModel):
    model: str
    version: str
    results: list[XrdNoveltyResult]


class JobRequest(BaseModel):
    """A batch job: many inputs for one model, run in chunks by workers."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(examples=["formation_enthalpy"])
    inputs: list[Any] = Field(min_length=1, max_length=SETTINGS.max_job_items, examples=[["NaCl", "Fe2O3"]])
    version: str | None = Field(default=None, examples=[None])


class JobResponse(BaseModel):
    """A job's state and progress (``done`` and ``failed`` count items); times are ISO 8601 UTC."""

    job_id: str
    model: str
    version: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    durable: bool
    total: int
    done: int
    failed: int
    chunk_size: int
    chunks_total: int
    chunks_done: int
    chunk_starts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    status_url: str
    results_url: str


class JobResultsResponse(BaseModel):
    """Items ``offset`` to ``offset + limit`` of a job's results, in input order.

    Each item has the shape of the model's synchronous results (with a per-item ``error`` for inputs that could
    not be predicted), or is ``null`` while its chunk has not run (or never will: cancelled or failed job).
    ``next_offset`` is where the next page starts, ``null`` after the last one.
    """

    job_id: str
    model: str
    version: str
    state: str
    total: int
    offset: int
    limit: int
    next_offset: int | None
    results: list[dict[str, Any] | None]


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 408, 413, 415, 422, 429, 503)
}
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 403, 422, 503)}


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


def _location(loc: tuple[Any, ...]) -> str:
    """``("body", "formulas", 3)`` -> ``formulas[3]``."""
    parts = [p for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def validation_error(exc: RequestValidationError, path: str = "") -> MatserveError:
    """Turn FastAPI/pydantic validation errors into one clear message (and the right status).

    ``path`` (the request's) selects the example of a valid body that ends the message.
    """
    errors = exc.errors()
    if "/xrd/" in path:
        example = XRD_EXAMPLE
    elif "/ebsd/" in path:
        example = ebsd_api.EBSD_EXAMPLE
    elif "/scattering/" in path:
        example = scattering_api.SCATTERING_EXAMPLE
    elif "/jobs" in path:
        example = '{"model": "formation_enthalpy", "inputs": ["NaCl"]}'
    else:
        example = '{"formulas": ["NaCl", "Fe2O3"], "version": null}'
    if any(e["type"] == "json_invalid" for e in errors):
        detail = next(e for e in errors if e["type"] == "json_invalid").get("ctx", {}).get("error", "")
        return MalformedRequest(f"body is not valid JSON ({detail}); expected e.g. {example}")
    for e in errors:
        if e["type"] == "too_long" and _location(e["loc"]) == "formulas":
            return PayloadTooLarge(
                f"too many formulas: at most {SETTINGS.max_formulas} per request; split the list "
                "(the Python SDK does this for you), or submit a batch job (POST /v1/jobs)"
            )
        if e["type"] == "too_long" and _location(e["loc"]) == "inputs":
            return PayloadTooLarge(f"too many inputs: at most {SETTINGS.max_job_items} per job; split them")
        if e["type"] == "too_long" and _location(e["loc"]) == "patterns":
            return PayloadTooLarge(
                f"too many patterns: at most {SETTINGS.max_patterns} per request; split them (the Python SDK does), "
                "or submit a batch job (POST /v1/jobs)"
            )
        if e["type"] == "too_long" and str(e["loc"][-1]) in ("two_theta_deg", "intensity"):
            return PayloadTooLarge(f"{_location(e['loc'])}: too many points; at most {MAX_POINTS} per pattern")
    shown = [f"{_location(e['loc'])}: {e['msg']}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    more += f"; expected a JSON object like {example}"
    return InvalidInput("; ".join(shown) + more)


app = FastAPI(
    title="matserve",
    version="1",
    description="Versioned prediction services for materials characterisation.",
    docs_url="/docs",
    openapi_url="/openapi.json",
)
app.add_middleware(
    RequestLimits,
    max_body_bytes=SETTINGS.max_body_bytes,
    route_max_body_bytes={
        JOBS_PATH: SETTINGS.max_job_body_bytes,
        XRD_PHASE_PATH: SETTINGS.max_xrd_body_bytes,
        XRD_NOVELTY_PATH: SETTINGS.max_xrd_body_bytes,
        EBSD_INDEX_PATH: SETTINGS.max_ebsd_body_bytes,
        EBSD_SCAN_PATH: SETTINGS.max_ebsd_body_bytes,
        SCATTERING_SORT_PATH: SETTINGS.max_scattering_body_bytes,
    },
    route_json_max_body_bytes={
        EBSD_INDEX_PATH: SETTINGS.max_image_json_body_bytes,
        EBSD_SCAN_PATH: SETTINGS.max_image_json_body_bytes,
        SCATTERING_SORT_PATH: SETTINGS.max_image_json_body_bytes,
    },
    route_media_types={
        EBSD_INDEX_PATH: ebsd_api.INDEX_MEDIA_TYPES,
        EBSD_SCAN_PATH: ebsd_api.SCAN_MEDIA_TYPES,
        SCATTERING_SORT_PATH: scattering_api.SORT_MEDIA_TYPES,
    },
)
app.add_middleware(rate_limit.RateLimit, settings=SETTINGS)  # outermost: a 429 costs no body read
http_timeouts.install(SETTINGS)  # header and body read timeouts of uvicorn's connections (no BentoML hook for them)


_Body = TypeVar("_Body", bound=BaseModel)


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body of a route that parses its body itself (see :func:`_parse_body`); its ``$defs`` are
    moved to the document's components by :func:`~matserve.openapi.resolvable_openapi`."""
    return json_request_body(model.model_json_schema())


async def _parse_body(request: Request, model: type[_Body]) -> _Body:
    """Validate the raw body with pydantic's JSON parser: ~3x faster than ``json.loads`` + validation on the
    tens of MB a batch of patterns takes. Errors get the same messages as FastAPI-validated routes."""
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors()]) from None


def item_errors(error: ValidationError, field: str) -> InvalidInput:
    """Per-item validation errors of ``field`` as one message: ``inputs[3]: Input should be a valid string``."""
    errors = error.errors()
    shown = [f"{field}{''.join(f'[{p}]' for p in e['loc'])}: {e['msg']}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return InvalidInput("; ".join(shown) + more)


def job_response(job: JobInfo) -> JobResponse:
    """The API view of a job, with the URLs to poll it and read its results."""
    status_url = f"/v1/jobs/{job.job_id}"
    return JobResponse(**job.to_dict(), status_url=status_url, results_url=f"{status_url}/results")


@app.exception_handler(MatserveError)
async def _matserve_error(_: Request, exc: MatserveError) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers or None)


@app.exception_handler(EbsdInputError)
async def _ebsd_input_error(_: Request, exc: EbsdInputError) -> JSONResponse:
    error: MatserveError = PayloadTooLarge(str(exc)) if isinstance(exc, EbsdTooLarge) else InvalidInput(str(exc))
    return JSONResponse(error.to_body(), status_code=error.status)


@app.exception_handler(ImageError)
async def _image_error(_: Request, exc: ImageError) -> JSONResponse:
    error = scattering_api.error_status(exc)
    return JSONResponse(error.to_body(), status_code=error.status)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    error = validation_error(exc, request.url.path)
    return JSONResponse(error.to_body(), status_code=error.status)


@bentoml.service(name="matserve", traffic={"timeout": 300}, workers=1, logging={"access": {"enabled": False}})
@bentoml.asgi_app(app, path="/v1")
class MatServe:
    """All registry models in one process: in-process ONNX Runtime by default, plus embedded job workers."""

    def __init__(self) -> None:
        self.registry = Registry(SETTINGS.models_dir)
        self.runtime = make_runtime(SETTINGS)
        self.cache = make_cache(SETTINGS)
        self.models: dict[str, ServedModel] = load_models(self.registry, self.runtime, self.cache,
                                                          SETTINGS.models_dir)  # fmt: skip
        self.jobs = make_job_store(SETTINGS)
        self.inline_ok = self.runtime.name == "onnxruntime" and getattr(self.cache, "backend", "none") != "redis"
        self.item_adapters = {name: TypeAdapter(list[model.item_type]) for name, model in self.models.items()}
        self._report_degraded()
        READINESS.registry = self.registry  # for GET /readyz (http_errors.ReadinessDetails)
        self.workers = EmbeddedWorkers(self.jobs, self.models, SETTINGS.embedded_workers, SETTINGS.job_chunk_pause_s)
        if self.models:
            self.workers.start()
        if SETTINGS.ebsd_preload and "ebsd_indexer" in self.models:
            card = self.models["ebsd_indexer"].card()
            threading.Thread(target=warm_up_ebsd, args=(card,), name="matserve-ebsd-warm-up", daemon=True).start()
        if "scattering_sorter" in self.models:  # compile the codec's kernels before the first image arrives
            threading.Thread(target=warm_up_scattering_codec, name="matserve-scattering-warm-up", daemon=True).start()
        logger.info(
            "serving %s from %s; cache: %s; jobs: %s store, %d embedded worker(s)",
            ", ".join(self.models) or "nothing",
            SETTINGS.models_dir,
            self.cache.backend if self.cache is not None else "off",
            self.jobs.backend,
            len(self.workers.threads),
        )

    @bentoml.on_shutdown
    def _stop_workers(self) -> None:
        self.workers.stop()
        self.jobs.close()

    def __is_ready__(self) -> bool:
        return bool(self.models)

    def _model(self, name: str) -> ServedModel:
        if name not in self.models and name in self.registry.degraded:
            raise Unavailable(f"model {name!r} is degraded: {self.registry.degraded[name]}")
        if name not in self.models:
            if name not in {model_class.name for model_class in MODEL_CLASSES}:
                known = ", ".join(model_class.name for model_class in MODEL_CLASSES)
                raise ModelNotFound(f"unknown model {name!r}; models: {known}")
            raise Unavailable(f"model {name!r} is not loaded on this server; see GET /v1/models")
        return self.models[name]

    def _job(self, job_id: str) -> JobInfo:
        job = self.jobs.status(job_id)
        if job is None:
            raise JobNotFound(
                f"unknown job {job_id!r}: never submitted, or expired (jobs are kept {SETTINGS.job_ttl_s} s "
                "after they finish)" + ("" if self.jobs.durable else ", or lost in a server restart (no Redis)")
            )
        return job

    @app.post(
        "/formation-enthalpy",
        response_model=FormationEnthalpyResponse,
        responses=ERROR_RESPONSES,
        summary="Formation enthalpy (eV/atom) of chemical formulas",
        openapi_extra=_json_body(FormationEnthalpyRequest),
    )
    async def formation_enthalpy(self, http_request: Request) -> JSONResponse:
        """Predict formation enthalpy per formula; per-item ``error`` for formulas that cannot be predicted."""
        request = await _parse_body(http_request, FormationEnthalpyRequest)
        prediction = await self._predict("formation_enthalpy", request.formulas, request.version)
        return JSONResponse({"model": prediction.model, "version": prediction.version, "results": prediction.results})

    @app.post(
        XRD_PHASE_PATH,
        response_model=XrdPhaseResponse,
        responses=ERROR_RESPONSES,
        summary="Phase (structure type) probabilities of powder XRD patterns",
        openapi_extra=_json_body(XrdRequest),
    )
    async def xrd_phase(self, http_request: Request) -> JSONResponse:
        """Classify each pattern among the known phases; any pattern that cannot be used makes the request 422,
        with one message per failing pattern (``patterns[3]: ...``)."""
        request = await _parse_body(http_request, XrdRequest)
        prediction = await self._predict("xrd_phase", request.items(), request.version)
        return self._xrd_response(request, prediction.model, prediction.version, prediction.results)

    @app.post(
        XRD_NOVELTY_PATH,
        response_model=XrdNoveltyResponse,
        responses=ERROR_RESPONSES,
        summary="Novelty of powder XRD patterns (VAE reconstruction error, calibrated), optional PNGs",
        openapi_extra=_json_body(XrdNoveltyRequest),
    )
    async def xrd_novelty(self, http_request: Request) -> JSONResponse:
        """Score each pattern's novelty; ``plots: true`` adds a reconstruction PNG and a latent-map PNG."""
        request = await _parse_body(http_request, XrdNoveltyRequest)
        items = request.items()
        if not request.plots:
            prediction = await self._predict("xrd_novelty", items, request.version)
            return self._xrd_response(request, prediction.model, prediction.version, prediction.results)
        if len(items) > MAX_PLOT_PATTERNS:
            raise InvalidInput(f"plots are rendered for at most {MAX_PLOT_PATTERNS} patterns per request; "
                               f"got {len(items)}: send fewer, or leave 'plots' false")  # fmt: skip
        model = self._model("xrd_novelty")
        assert isinstance(model, XrdNoveltyModel)
        version, results, curves = await anyio.to_thread.run_sync(model.with_reconstructions, items, request.version)
        self._raise_item_errors(request, results)
        await anyio.to_thread.run_sync(_add_xrd_plots, version, results, curves)
        return JSONResponse({"model": version.name, "version": version.version, "results": results})

    def _ebsd(self) -> EbsdIndexerModel:
        model = self._model("ebsd_indexer")
        assert isinstance(model, EbsdIndexerModel)
        return model

    @app.post(
        EBSD_INDEX_PATH,
        response_model=ebsd_api.EbsdIndexResponse,
        responses=ERROR_RESPONSES,
        summary="Crystal orientations (Bunge Euler angles, quaternion) of EBSD patterns, optionally refined",
        openapi_extra=ebsd_api.openapi_index_body(),
    )
    async def ebsd_index(self, http_request: Request) -> JSONResponse:
        """Index EBSD patterns of nickel (m-3m): JSON arrays, PNG/TIFF images, NPY arrays or multipart file parts.

        Square patterns of 60 to 1024 px are area-resampled to 60x60; any pattern that cannot be used makes the
        request 422, naming it (``patterns[3]: constant pattern ...``). ``refine=true`` refines each orientation
        against the master pattern (at most 256 patterns per request).
        """
        kind = ebsd_api.media_type(http_request)
        query = dict(http_request.query_params)
        limit, pixels = SETTINGS.max_ebsd_patterns, SETTINGS.max_ebsd_pixels
        sources = None
        if kind == "application/json":
            request = await _parse_body(http_request, ebsd_api.EbsdIndexRequest)
            options = ebsd_api.merge_options(request, query)
            patterns, labels = await anyio.to_thread.run_sync(ebsd_api.decode_json_patterns, request, limit, pixels)
        elif kind == "multipart/form-data":
            files, fields = await ebsd_api.read_form(http_request, limit)
            options = ebsd_api.merge_options(ebsd_api.options_from(fields, "form field"), query)
            patterns, labels, sources = await anyio.to_thread.run_sync(ebsd_api.decode_index_body, kind, b"", files,
                                                                       limit, pixels)  # fmt: skip
            del files
        else:
            body = await ebsd_api.read_body(http_request)
            options = ebsd_api.options_from(query, "query parameter")
            patterns, labels, sources = await anyio.to_thread.run_sync(ebsd_api.decode_index_body, kind, body, [],
                                                                       limit, pixels)  # fmt: skip
            del body
        model = self._ebsd()
        ebsd_api.check_geometry(model.geometry(options.version), options)
        if options.refine:
            check_refine_size(len(patterns), SETTINGS.max_ebsd_refine_patterns)
        run = functools.partial(model.index, patterns, options.pc, options.version, options.refine,
                                options.static_background)  # fmt: skip
        prediction = await anyio.to_thread.run_sync(run)
        del run, patterns
        await anyio.to_thread.run_sync(ebsd_api.release_memory)
        for i, result in enumerate(prediction.results):
            result["source"] = sources[i] if sources else None
        failed = ebsd_api.item_errors(labels, prediction.results)
        if failed is not None:
            raise failed
        return JSONResponse({"model": prediction.model, "version": prediction.version, "results": prediction.results})

    @app.post(
        EBSD_SCAN_PATH,
        response_model=ebsd_api.EbsdScanResponse,
        responses=ERROR_RESPONSES,
        summary="Orientation map of an EBSD scan (4-D NPY or HDF5), with an IPF-Z colour PNG",
        openapi_extra=ebsd_api.openapi_scan_body(),
    )
    async def ebsd_scan(self, http_request: Request) -> JSONResponse:
        """Index a scan pixel by pixel: Euler angles, quaternions, confidence and expected error per pixel (``null``
        and an entry in ``errors`` where a pattern cannot be used), and the IPF-Z map as RGB and PNG."""
        kind = ebsd_api.media_type(http_request)
        query = dict(http_request.query_params)
        if kind == "multipart/form-data":
            files, fields = await ebsd_api.read_form(http_request, 1)
            if len(files) != 1:
                raise InvalidInput("send the scan as exactly one file part (a 4-D .npy or an HDF5 file)")
            data = files[0][1]
            options = ebsd_api.merge_options(ebsd_api.options_from(fields, "form field"), query)
        else:
            data = await ebsd_api.read_body(http_request)
            options = ebsd_api.options_from(query, "query parameter")
        scan, file_pc, file_tilts = await anyio.to_thread.run_sync(ebsd_api.decode_scan, data, kind,
                                                                   SETTINGS.max_ebsd_scan_patterns,
                                                                   SETTINGS.max_ebsd_pixels)  # fmt: skip
        del data
        model = self._ebsd()
        ebsd_api.check_geometry(model.geometry(options.version), options, file_tilts)
        if options.refine:
            check_refine_size(scan.shape[0] * scan.shape[1], SETTINGS.max_ebsd_refine_patterns)
        pc = options.pc if options.pc is not None else file_pc
        run = functools.partial(model.index_scan, scan, pc, options.version, options.refine, options.static_background)
        version, orientations = await anyio.to_thread.run_sync(run)
        del run, scan
        await anyio.to_thread.run_sync(ebsd_api.release_memory)
        body = await anyio.to_thread.run_sync(ebsd_api.scan_response, version, orientations)
        return JSONResponse(body)

    def _scattering(self) -> ScatteringSorterModel:
        model = self._model("scattering_sorter")
        assert isinstance(model, ScatteringSorterModel)
        return model

    @app.post(
        SCATTERING_SORT_PATH,
        response_model=scattering_api.ScatteringSortResponse,
        responses=ERROR_RESPONSES,
        summary="Technique, geometry and features of 2D X-ray scattering images, optionally with a Grad-CAM PNG",
        openapi_extra=scattering_api.openapi_sort_body(),
    )
    async def scattering_sort(self, http_request: Request) -> JSONResponse:
        """Sort detector images: a TIFF, CBF, EDF, HDF5/NeXus, NPY or PNG file as the body (every frame an image),
        multipart file parts (plus an optional ``mask`` part), or JSON ``image``/``images`` arrays.

        One result per frame, in order, named by ``source``; an image that cannot be used (constant, too few valid
        pixels, wrong size) gets an ``error`` while the others are answered. 422 when no image can be used, 415 for
        files in no accepted format, 413 over the body, frame or pixel limits.
        """
        kind = scattering_api.media_type(http_request)
        query = dict(http_request.query_params)
        budget = FrameBudget(SETTINGS.max_scattering_frames, SETTINGS.max_scattering_pixels)
        model = self._scattering()
        if kind == "application/json":
            request = await _parse_body(http_request, scattering_api.ScatteringSortRequest)
            options = scattering_api.merge_options(request, query)
            model.check_options(options.version, options.saliency_label)
            items = await anyio.to_thread.run_sync(scattering_api.decode_json, request, budget)
            del request  # the nested lists: the arrays are in items now
        elif kind == "multipart/form-data":
            files, masks, fields = await scattering_api.read_form(http_request, SETTINGS.max_scattering_frames + 1)
            options = scattering_api.merge_options(scattering_api.options_from(fields, "form field"), query)
            model.check_options(options.version, options.saliency_label)
            items = await anyio.to_thread.run_sync(scattering_api.decode_multipart, files, masks, budget)
            del files, masks
        else:
            options = scattering_api.options_from(query, "query parameter")
            model.check_options(options.version, options.saliency_label)
            body = await http_request.body()
            name = scattering_api.body_filename(http_request)
            items = await anyio.to_thread.run_sync(scattering_api.decode_body, kind, body, budget, name)
            del body
        scattering_api.check_saliency(options, len(items.items))
        run = functools.partial(
            model.sort, items.items, options.version, options.saliency, options.saliency_label, options.setup
        )
        prediction = await anyio.to_thread.run_sync(run)
        del run
        items.items.clear()  # the decoded frames (labels stay for the answer)
        await anyio.to_thread.run_sync(scattering_api.release_memory)
        failed = scattering_api.failures(items, prediction.results)
        if failed is not None:
            raise failed
        results = [{"source": label, **result} for label, result in zip(items.labels, prediction.results, strict=True)]
        return JSONResponse({"model": prediction.model, "version": prediction.version, "results": results})

    def _xrd_response(self, request: XrdRequest, model: str, version: str, results: list[dict]) -> JSONResponse:
        self._raise_item_errors(request, results)
        return JSONResponse({"model": model, "version": version, "results": results})

    @staticmethod
    def _raise_item_errors(request: XrdRequest, results: list[dict[str, Any]]) -> None:
        """422 naming every pattern that could not be used (the first 10 in full)."""
        failed = [(i, r["error"]) for i, r in enumerate(results) if r.get("error")]
        if not failed:
            return
        shown = "; ".join(f"{request.label(i)}: {error}" for i, error in failed[:10])
        more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
        raise InvalidInput(f"{len(failed)} of {len(results)} pattern(s) cannot be used: {shown}{more}. "
                           f"Each pattern is {{\"two_theta_deg\": [...], \"intensity\": [...]}}, e.g. {XRD_EXAMPLE}")  # fmt: skip

    async def _predict(self, name: str, items: list[Any], version: str | None) -> Prediction:
        """Run a model; small in-process batches inline on the event loop, everything else on a worker thread.

        With in-process ONNX Runtime and no network cache, a batch of up to ``INLINE_MAX_ITEMS`` takes a few
        milliseconds of CPU and the thread hand-off would be a large share of it (measured: batch-1 p50 from
        1.05x to 0.95x of direct Triton HTTP). Anything that waits on the network (Triton, Redis) or takes
        longer goes to a thread, so that the event loop never blocks on I/O.
        """
        model = self._model(name)
        if len(items) <= INLINE_MAX_ITEMS and self.inline_ok:
            return model(items, version)
        return await anyio.to_thread.run_sync(model, items, version)

    @app.post(
        JOBS_PATH,
        status_code=202,
        response_model=JobResponse,
        responses=ERROR_RESPONSES,
        summary="Submit a batch job (up to 10⁶ inputs); poll status_url, then read results_url",
        openapi_extra=job_request_body(MODEL_CLASSES, SETTINGS.max_job_items),
    )
    async def submit_job(self, http_request: Request) -> JobResponse:
        """Queue a job; the model version is pinned now (the active one unless ``version`` is given)."""
        request = await _parse_body(http_request, JobRequest)
        return await anyio.to_thread.run_sync(self._submit_job, request)

    def _submit_job(self, request: JobRequest) -> JobResponse:
        model = self._model(request.model)
        version = model.version(request.version).version
        try:
            items = self.item_adapters[model.name].validate_python(request.inputs)
        except ValidationError as error:
            raise item_errors(error, "inputs") from None
        if not self.jobs.durable and not self.workers.threads:
            raise Unavailable(
                "jobs are not run by this server: without REDIS_URL they need MATSERVE_EMBEDDED_WORKERS >= 1"
            )
        job = self.jobs.submit(model.name, version, items, SETTINGS.job_chunk_size)
        JOBS.labels(model=model.name, event="submitted").inc()
        logger.info("job %s: %d %s inputs in %d chunk(s)", job.job_id, job.total, model.name, job.chunks_total)
        return job_response(job)

    @app.get(JOBS_PATH + "/{job_id}", response_model=JobResponse, responses=ERROR_RESPONSES, summary="A job's state")
    def job_status(self, job_id: str) -> JobResponse:
        """State, progress (items done and failed), pinned version and timestamps of a job."""
        return job_response(self._job(job_id))

    @app.get(
        JOBS_PATH + "/{job_id}/results",
        response_model=JobResultsResponse,
        responses=ERROR_RESPONSES,
        summary="A page of a job's results, in input order",
    )
    def job_results(
        self,
        job_id: str,
        offset: int = Query(default=0, ge=0, description="first item (0-based)"),
        limit: int = Query(default=1000, ge=1, le=SETTINGS.max_formulas, description="most items in the page"),
    ) -> JobResultsResponse:
        """Results of items ``offset`` to ``offset + limit``; ``null`` for items whose chunk has not run."""
        job = self._job(job_id)
        results = self.jobs.results(job, offset, limit)
        end = offset + len(results)
        return JobResultsResponse(
            job_id=job.job_id, model=job.model, version=job.version, state=job.state, total=job.total,
            offset=offset, limit=limit, next_offset=end if end < job.total else None, results=results,
        )  # fmt: skip

    @app.delete(JOBS_PATH + "/{job_id}", response_model=JobResponse, responses=ERROR_RESPONSES, summary="Cancel")
    def cancel_job(self, job_id: str) -> JobResponse:
        """Cancel a queued or running job: chunks not yet started are skipped. A finished job is left as it is."""
        self._job(job_id)
        job = self.jobs.cancel(job_id)
        if job is None:  # expired in between
            return job_response(self._job(job_id))
        if job.state == "cancelled":
            JOBS.labels(model=job.model, event="cancelled").inc()
        return job_response(job)

    def _require_admin(self, authorization: str | None) -> None:
        """Admin routes need ``Authorization: Bearer <MATSERVE_ADMIN_TOKEN>``; without the setting they are off."""
        if not SETTINGS.admin_token:
            raise Forbidden("the admin API is off on this server; set MATSERVE_ADMIN_TOKEN to enable it")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), SETTINGS.admin_token.encode()):
            raise Unauthorized("admin routes need the header 'Authorization: Bearer <MATSERVE_ADMIN_TOKEN>'")

    @app.post("/admin/registry/reload", responses=ADMIN_RESPONSES, summary="Admin: re-read the registry folder")
    def reload_registry(self, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Re-verify ``models/`` on this replica: new versions and ``ACTIVE`` changes take effect, tampered
        folders are refused. A model that had no valid version at start-up needs a restart."""
        self._require_admin(authorization)
        self.registry.refresh()
        for model_class in MODEL_CLASSES:
            name = model_class.name
            if name not in self.registry.names():
                continue
            if name not in self.models:  # no valid version at start-up: serve it from now on
                self.models[name] = model_class(self.registry, self.runtime, cache=self.cache)
                self.item_adapters[name] = TypeAdapter(list[model_class.item_type])
            if name not in self.registry.degraded:
                self.models[name].load()  # the new active version's session, before the first request needs it
        self._report_degraded()
        logger.info("registry reloaded by an admin request: %s", {n: self.registry.versions(n) for n in self.models})
        return {"models": self._registry_status(), "refused": self.registry.refused}

    def _registry_status(self) -> dict[str, dict[str, Any]]:
        """Per model: the active version (``None`` without any folder), valid versions, and ``degraded`` (the
        reason, or ``None``)."""
        names = sorted(set(self.registry.names()) | set(self.registry.degraded))
        return {name: {"active_version": self.registry.intended_version(name), "versions": self.registry.versions(name),
                       "degraded": self.registry.degraded.get(name)} for name in names}  # fmt: skip

    def _report_degraded(self) -> None:
        """Set the ``matserve_model_degraded`` gauge of every model."""
        for model_class in MODEL_CLASSES:
            MODEL_DEGRADED.labels(model=model_class.name).set(1 if model_class.name in self.registry.degraded else 0)

    @app.delete("/admin/cache", responses=ADMIN_RESPONSES, summary="Admin: delete cached predictions")
    def clear_cache(
        self,
        model: Annotated[str | None, Query(description="only this model")] = None,
        version: Annotated[str | None, Query(description="only this version (needs model)")] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Delete cached predictions: all, one model's, or one model version's (in Redis: for every replica)."""
        self._require_admin(authorization)
        if version is not None and model is None:
            raise InvalidInput("'version' needs 'model'; e.g. ?model=formation_enthalpy&version=1.0.0")
        if self.cache is None:
            return {"deleted": 0, "backend": "off"}
        try:
            deleted = self.cache.clear(model, version)
        except ConnectionError as error:
            raise Unavailable(str(error)) from None
        logger.info("cache cleared by an admin request (model=%s, version=%s): %d deleted", model, version, deleted)
        return {"deleted": deleted, "backend": self.cache.backend}

    @app.get("/models", summary="Registry: models, versions, card summaries")
    def list_models(self) -> dict[str, Any]:
        """Every model with its active version, the most items one request may carry, and card summaries.

        Also says how predictions are cached (``cache``) and how jobs are stored and run (``jobs``; ``durable``
        is false without Redis: jobs are then lost when the server restarts).
        """
        models = []
        for name, status in self._registry_status().items():
            models.append({
                "name": name,
                "served": name in self.models and status["degraded"] is None,
                "active_version": status["active_version"],
                "degraded": status["degraded"],
                "max_batch_size": SETTINGS.max_formulas,
                "versions": [self.registry.get(name, v).summary() for v in self.registry.versions(name)],
            })  # fmt: skip
        jobs = {**self.jobs.describe(), "embedded_workers": len(self.workers.threads),
                "chunk_size": SETTINGS.job_chunk_size, "max_items": SETTINGS.max_job_items}  # fmt: skip
        cache = self.cache.describe() if self.cache is not None else {"backend": "off"}
        runtime = self.runtime.describe() if hasattr(self.runtime, "describe") else {"name": self.runtime.name}
        return {"models": models, "refused": self.registry.refused, "cache": cache, "jobs": jobs, "runtime": runtime}


def _add_xrd_plots(version: Any, results: list[dict[str, Any]], curves: dict[int, tuple[Any, Any]]) -> None:
    """Render each scored pattern's reconstruction and latent-map PNGs into its result (base64)."""
    from matserve.plots import xrd_latent_map_png, xrd_reconstruction_png

    cal = calibration(version)
    reference_map = cal.to_map(cal.reference_latent)
    for row, (pattern, reconstruction) in curves.items():
        result = results[row]
        verdict = "novel" if result["is_novel"] else "known"
        title = (f"reconstruction error {result['reconstruction_error']:.4f}, "
                 f"percentile {result['novelty_percentile']:.1f} ({verdict})")  # fmt: skip
        reconstruction_png = xrd_reconstruction_png(pattern, reconstruction, title)
        latent_png = xrd_latent_map_png(
            reference_map, cal.reference_label, cal.class_names, np.asarray([result["latent_map"]]),
            f"latent space; nearest known phase {result['nearest_known_phase']}",
        )  # fmt: skip
        result["plots"] = {
            "reconstruction_png": base64.b64encode(reconstruction_png).decode("ascii"),
            "latent_map_png": base64.b64encode(latent_png).decode("ascii"),
        }


http_errors.install(app)  # last: its catch-all route must come after every other route
app.openapi = resolvable_openapi(app)  # type: ignore[method-assign]
MatServe.add_asgi_middleware(ReadinessDetails)
