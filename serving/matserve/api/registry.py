"""``GET /v1/models``: the registry as this server serves it (health is BentoML's ``/readyz`` and ``/livez``,
with degraded models named by :class:`matserve.http_errors.ReadinessDetails`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from matserve.api.context import Context
from matserve.settings import Settings


def router(settings: Settings) -> APIRouter:
    """The registry route."""
    routes = APIRouter()

    @routes.get("/models", summary="Registry: models, versions, card summaries")
    def list_models(context: Context) -> dict[str, Any]:
        """Every model with its active version, the most items one request may carry, and card summaries.

        Also says how predictions are cached (``cache``) and how jobs are stored and run (``jobs``; ``durable``
        is false without Redis: jobs are then lost when the server restarts).
        """
        registry = context.registry
        models = []
        for name, status in context.registry_status().items():
            models.append({
                "name": name,
                "served": name in context.models and status["degraded"] is None,
                "active_version": status["active_version"],
                "degraded": status["degraded"],
                "max_batch_size": settings.max_formulas,
                "versions": [registry.get(name, v).summary() for v in registry.versions(name)],
            })  # fmt: skip
        jobs = {**context.jobs.describe(), "embedded_workers": len(context.workers.threads),
                "chunk_size": settings.job_chunk_size, "max_items": settings.max_job_items}  # fmt: skip
        cache = context.cache.describe() if context.cache is not None else {"backend": "off"}
        runtime = context.runtime.describe() if hasattr(context.runtime, "describe") else {"name": context.runtime.name}
        return {"models": models, "refused": registry.refused, "cache": cache, "jobs": jobs, "runtime": runtime}

    return routes
