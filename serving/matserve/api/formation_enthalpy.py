"""``POST /v1/formation-enthalpy``: chemical formulas in, formation enthalpy (eV/atom) with uncertainty out.

Sections, as in every model's API module: request schema, transport parsing, routes. The answer's wire schema
is :class:`matserve_client.wire.FormationEnthalpyResponse`.
"""

from __future__ import annotations

import functools

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from matserve.api.common import ERROR_RESPONSES, answer, json_body, parse_body
from matserve.api.context import Context
from matserve.models.formation_enthalpy import Formula
from matserve.settings import Settings
from matserve_client.wire import FormationEnthalpyResponse

PATH = "/formation-enthalpy"
MODEL = "formation_enthalpy"

# -- request schema ----------------------------------------------------------------------------------------------


@functools.cache
def request_schema(max_formulas: int) -> type[BaseModel]:
    """The request body, with the server's limit of formulas per request (``MATSERVE_MAX_FORMULAS``)."""

    class FormationEnthalpyRequest(BaseModel):
        """Formulas to predict; ``version`` pins a registry version (default: the active one)."""

        model_config = ConfigDict(extra="forbid")

        formulas: list[Formula] = Field(min_length=1, max_length=max_formulas, examples=[["NaCl", "Fe2O3"]])
        version: str | None = Field(default=None, examples=["1.0.0"])

    return FormationEnthalpyRequest


# -- routes ------------------------------------------------------------------------------------------------------


def router(settings: Settings) -> APIRouter:
    """The routes of this model, with the limits of ``settings``."""
    routes = APIRouter()
    schema = request_schema(settings.max_formulas)

    @routes.post(
        PATH,
        response_model=FormationEnthalpyResponse,
        responses=ERROR_RESPONSES,
        summary="Formation enthalpy (eV/atom) of chemical formulas",
        openapi_extra=json_body(schema),
    )
    async def formation_enthalpy(http_request: Request, context: Context) -> Response:
        """Predict formation enthalpy per formula; per-item ``error`` for formulas that cannot be predicted."""
        request = await parse_body(http_request, schema)
        prediction = await context.predict(MODEL, request.formulas, request.version)  # type: ignore[attr-defined]
        body = {"model": prediction.model, "version": prediction.version, "results": prediction.results}
        return answer(FormationEnthalpyResponse, body)

    return routes
