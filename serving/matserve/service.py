"""The BentoML service: every registered model behind one typed HTTP API.

Routes (the domain API is a FastAPI app mounted at ``/v1`` inside the BentoML
service, so that every error, validation and size limit answers with the same
``{"error": {"type", "message"}}`` body; BentoML supplies ``/readyz``,
``/livez``, ``/metrics`` and the process model):

* ``POST /v1/formation-enthalpy``: ``{"formulas": [...], "version": optional}``
* ``GET /v1/models``: registry listing with card summaries
* ``GET /v1/docs``, ``GET /v1/openapi.json``: OpenAPI documentation

Run: ``matserve serve`` or ``bentoml serve matserve.service:MatServe``.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import bentoml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from matserve.codecs.formation_enthalpy import MAX_FORMULA_LENGTH
from matserve.errors import (
    InvalidInput,
    MalformedRequest,
    MatserveError,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from matserve.models.base import ServedModel
from matserve.models.formation_enthalpy import FormationEnthalpyModel
from matserve.registry import Registry
from matserve.runtimes import make_runtime
from matserve.settings import Settings

logger = logging.getLogger("matserve.service")
SETTINGS = Settings()

Formula = Annotated[str, StringConstraints(strict=True, max_length=MAX_FORMULA_LENGTH)]


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


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 503)
}


class RequestLimits:
    """ASGI middleware: POST bodies must be JSON and at most ``max_body_bytes`` (415 / 413 otherwise)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            error: MatserveError = UnsupportedMediaType(
                f"content type {media_type or '(none)'!r} is not accepted; send JSON with 'Content-Type: application/json'"
            )
            await _send_error(error, send)
            return
        if int(headers.get("content-length", 0) or 0) > self.max_body_bytes:
            await _send_error(self._too_large(), send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _send_error(self._too_large(), send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than the limit of {self.max_body_bytes} bytes")


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


def validation_error(exc: RequestValidationError) -> MatserveError:
    """Turn FastAPI/pydantic validation errors into one clear message (and the right status)."""
    errors = exc.errors()
    if any(e["type"] == "json_invalid" for e in errors):
        detail = next(e for e in errors if e["type"] == "json_invalid").get("ctx", {}).get("error", "")
        return MalformedRequest(f'body is not valid JSON ({detail}); expected e.g. {{"formulas": ["NaCl"]}}')
    for e in errors:
        if e["type"] == "too_long" and _location(e["loc"]) == "formulas":
            return PayloadTooLarge(
                f"too many formulas: at most {SETTINGS.max_formulas} per request; split the list "
                "(the Python SDK does this for you)"
            )
    shown = [f"{_location(e['loc'])}: {e['msg']}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    more += '; expected a JSON object like {"formulas": ["NaCl", "Fe2O3"], "version": null}'
    return InvalidInput("; ".join(shown) + more)


app = FastAPI(
    title="matserve",
    version="1",
    description="Versioned prediction services for materials characterisation.",
    docs_url="/docs",
    openapi_url="/openapi.json",
)
app.add_middleware(RequestLimits, max_body_bytes=SETTINGS.max_body_bytes)


@app.exception_handler(MatserveError)
async def _matserve_error(_: Request, exc: MatserveError) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    error = validation_error(exc)
    return JSONResponse(error.to_body(), status_code=error.status)


@bentoml.service(name="matserve", traffic={"timeout": 300}, workers=1)
@bentoml.asgi_app(app, path="/v1")
class MatServe:
    """All registry models in one process: in-process ONNX Runtime by default."""

    def __init__(self) -> None:
        self.registry = Registry(SETTINGS.models_dir)
        self.runtime = make_runtime(SETTINGS)
        self.models: dict[str, ServedModel] = {}
        for model_class in (FormationEnthalpyModel,):
            served = model_class(self.registry, self.runtime)
            if model_class.name not in self.registry.names():
                logger.error(
                    "model %s has no valid version in %s; it is not served", model_class.name, SETTINGS.models_dir
                )
                continue
            try:
                served.load()
            except Exception:  # a broken graph must not stop the other models
                logger.exception("model %s failed to load; it is not served", model_class.name)
                continue
            self.models[model_class.name] = served
        logger.info("serving %s from %s", ", ".join(self.models) or "nothing", SETTINGS.models_dir)

    def __is_ready__(self) -> bool:
        return bool(self.models)

    def _model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise Unavailable(f"model {name!r} is not loaded on this server; see GET /v1/models")
        return self.models[name]

    @app.post(
        "/formation-enthalpy",
        response_model=FormationEnthalpyResponse,
        responses=ERROR_RESPONSES,
        summary="Formation enthalpy (eV/atom) of chemical formulas",
    )
    def formation_enthalpy(self, request: FormationEnthalpyRequest) -> FormationEnthalpyResponse:
        """Predict formation enthalpy per formula; per-item ``error`` for formulas that cannot be predicted."""
        prediction = self._model("formation_enthalpy")(request.formulas, request.version)
        return FormationEnthalpyResponse(model=prediction.model, version=prediction.version,
                                         results=prediction.results)  # fmt: skip

    @app.get("/models", summary="Registry: models, versions, card summaries")
    def list_models(self) -> dict[str, Any]:
        """Every model with its active version, the most items one request may carry, and card summaries."""
        models = []
        for name in self.registry.names():
            models.append({
                "name": name,
                "served": name in self.models,
                "active_version": self.registry.active_version(name),
                "max_batch_size": SETTINGS.max_formulas,
                "versions": [self.registry.get(name, v).summary() for v in self.registry.versions(name)],
            })  # fmt: skip
        return {"models": models, "refused": self.registry.refused}
