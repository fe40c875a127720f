"""The BentoML service: every registered model behind one typed HTTP API. This module only composes.

The domain API is a FastAPI app mounted at ``/v1`` inside the BentoML service, so that every error, validation and
size limit answers with the same ``{"error": {"type", "message"}}`` body; BentoML supplies ``/readyz``,
``/livez``, ``/metrics`` and the process model. One API module per model, plus jobs, admin and the registry
(:mod:`matserve.api`), each with its schemas, transport parsing and routes:

* ``POST /v1/formation-enthalpy`` (:mod:`matserve.api.formation_enthalpy`)
* ``POST /v1/xrd/phase``, ``POST /v1/xrd/novelty`` (:mod:`matserve.api.xrd`)
* ``POST /v1/ebsd/index``, ``POST /v1/ebsd/scan`` (:mod:`matserve.api.ebsd`)
* ``POST /v1/scattering/sort`` (:mod:`matserve.api.scattering`)
* ``POST /v1/jobs``, ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/results``, ``DELETE /v1/jobs/{id}``
  (:mod:`matserve.api.jobs`)
* ``POST /v1/admin/registry/reload``, ``DELETE /v1/admin/cache`` (:mod:`matserve.api.admin`)
* ``GET /v1/models`` (:mod:`matserve.api.registry`); ``GET /v1/docs``, ``GET /v1/openapi.json``

Settings are read when the app is built (:func:`build_app`): this module builds the served app from the
environment at import, as BentoML needs it; tests build their own apps with other settings and serve them
in-process (``httpx.ASGITransport``) with a :class:`~matserve.api.context.ServingContext`.

Predictions are cached per item (:mod:`matserve.cache`); batch jobs (:mod:`matserve.jobs`) are run by worker
threads embedded in this process (``MATSERVE_EMBEDDED_WORKERS``, default 1) and/or by separate
``matserve worker`` processes. Both use Redis when ``REDIS_URL`` is set, else this process's memory (jobs are
then not durable and run only by the embedded workers; this needs the single API worker process configured
below, as each process would have its own jobs).

Run: ``matserve serve`` or ``bentoml serve matserve.service:MatServe``.
"""

from __future__ import annotations

import bentoml
from fastapi import FastAPI

from matserve import http_errors, http_timeouts, rate_limit
from matserve.api import admin, ebsd, formation_enthalpy, jobs, registry, scattering, xrd
from matserve.api.common import install_error_handlers
from matserve.api.context import ServingContext
from matserve.api.limits import RequestLimits
from matserve.http_errors import READINESS, ReadinessDetails
from matserve.openapi import resolvable_openapi
from matserve.settings import Settings

API_MODULES = (formation_enthalpy, xrd, ebsd, scattering, jobs, admin, registry)
"""Every API module, in the order of the documentation; each has ``router(settings) -> APIRouter``."""


def build_app(settings: Settings) -> FastAPI:
    """The ``/v1`` app with the limits of ``settings``: routes of every API module, request limits, rate limits,
    the one error envelope and a resolvable OpenAPI document. Its routes need ``app.state.context`` (a
    :class:`~matserve.api.context.ServingContext`), set when the service starts."""
    app = FastAPI(
        title="matserve",
        version="1",
        description="Versioned prediction services for materials characterisation.",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.max_body_bytes,
        route_max_body_bytes={
            jobs.PATH: settings.max_job_body_bytes,
            xrd.PHASE_PATH: settings.max_xrd_body_bytes,
            xrd.NOVELTY_PATH: settings.max_xrd_body_bytes,
            ebsd.INDEX_PATH: settings.max_ebsd_body_bytes,
            ebsd.SCAN_PATH: settings.max_ebsd_body_bytes,
            scattering.SORT_PATH: settings.max_scattering_body_bytes,
        },
        route_json_max_body_bytes={
            ebsd.INDEX_PATH: settings.max_image_json_body_bytes,
            ebsd.SCAN_PATH: settings.max_image_json_body_bytes,
            scattering.SORT_PATH: settings.max_image_json_body_bytes,
        },
        route_media_types={
            xrd.PHASE_PATH: xrd.MEDIA_TYPES,
            xrd.NOVELTY_PATH: xrd.MEDIA_TYPES,
            ebsd.INDEX_PATH: ebsd.INDEX_MEDIA_TYPES,
            ebsd.SCAN_PATH: ebsd.SCAN_MEDIA_TYPES,
            scattering.SORT_PATH: scattering.SORT_MEDIA_TYPES,
        },
    )
    app.add_middleware(rate_limit.RateLimit, settings=settings)  # outermost: a 429 costs no body read
    install_error_handlers(app, settings)
    for module in API_MODULES:
        app.include_router(module.router(settings))
    http_errors.install(app)  # last: its catch-all route must come after every other route
    app.openapi = resolvable_openapi(app)  # type: ignore[method-assign]
    return app


SETTINGS = Settings()
app = build_app(SETTINGS)
http_timeouts.install(SETTINGS)  # header and body read timeouts of uvicorn's connections (no BentoML hook for them)


@bentoml.service(name="matserve", traffic={"timeout": 300}, workers=1, logging={"access": {"enabled": False}})
@bentoml.asgi_app(app, path="/v1")
class MatServe:
    """All registry models in one process: in-process ONNX Runtime by default, plus embedded job workers."""

    def __init__(self) -> None:
        self.context = ServingContext.start(app.state.settings)
        app.state.context = self.context
        READINESS.registry = self.context.registry  # for GET /readyz (http_errors.ReadinessDetails)

    @bentoml.on_shutdown
    def _stop_workers(self) -> None:
        self.context.stop()

    def __is_ready__(self) -> bool:
        return bool(self.context.models)


MatServe.add_asgi_middleware(ReadinessDetails)
