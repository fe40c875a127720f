"""Admin routes (``Authorization: Bearer <MATSERVE_ADMIN_TOKEN>``; off without the setting): re-read the registry,
delete cached predictions."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from pydantic import TypeAdapter

from matserve.api.common import ADMIN_RESPONSES
from matserve.api.context import Context, ServingContext
from matserve.errors import Forbidden, InvalidInput, Unauthorized, Unavailable
from matserve.settings import Settings
from matserve.worker import MODEL_CLASSES

logger = logging.getLogger("matserve.service")


def require_admin(settings: Settings, authorization: str | None) -> None:
    """Admin routes need ``Authorization: Bearer <MATSERVE_ADMIN_TOKEN>``; without the setting they are off."""
    if not settings.admin_token:
        raise Forbidden("the admin API is off on this server; set MATSERVE_ADMIN_TOKEN to enable it")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.admin_token.encode()):
        raise Unauthorized("admin routes need the header 'Authorization: Bearer <MATSERVE_ADMIN_TOKEN>'")


def reload(context: ServingContext) -> dict[str, Any]:
    """Re-verify the registry folder and load what changed (see :func:`router`'s ``reload_registry``)."""
    context.registry.refresh()
    for model_class in MODEL_CLASSES:
        name = model_class.name
        if name not in context.registry.names():
            continue
        if name not in context.models:  # no valid version at start-up: serve it from now on
            context.models[name] = model_class(context.registry, context.runtime, cache=context.cache)
            context.item_adapters[name] = TypeAdapter(list[model_class.item_type])
        if name not in context.registry.degraded:
            context.models[name].load()  # the new active version's session, before the first request needs it
    context.report_degraded()
    logger.info("registry reloaded by an admin request: %s",
                {n: context.registry.versions(n) for n in context.models})  # fmt: skip
    return {"models": context.registry_status(), "refused": context.registry.refused}


def router(settings: Settings) -> APIRouter:
    """The admin routes."""
    routes = APIRouter()

    @routes.post("/admin/registry/reload", responses=ADMIN_RESPONSES, summary="Admin: re-read the registry folder")
    def reload_registry(context: Context, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Re-verify ``models/`` on this replica: new versions and ``ACTIVE`` changes take effect, tampered
        folders are refused. A model that had no valid version at start-up needs a restart."""
        require_admin(settings, authorization)
        return reload(context)

    @routes.delete("/admin/cache", responses=ADMIN_RESPONSES, summary="Admin: delete cached predictions")
    def clear_cache(
        context: Context,
        model: Annotated[str | None, Query(description="only this model")] = None,
        version: Annotated[str | None, Query(description="only this version (needs model)")] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Delete cached predictions: all, one model's, or one model version's (in Redis: for every replica)."""
        require_admin(settings, authorization)
        if version is not None and model is None:
            raise InvalidInput("'version' needs 'model'; e.g. ?model=formation_enthalpy&version=1.0.0")
        if context.cache is None:
            return {"deleted": 0, "backend": "off"}
        try:
            deleted = context.cache.clear(model, version)
        except ConnectionError as error:
            raise Unavailable(str(error)) from None
        logger.info("cache cleared by an admin request (model=%s, version=%s): %d deleted", model, version, deleted)
        return {"deleted": deleted, "backend": context.cache.backend}

    return routes
