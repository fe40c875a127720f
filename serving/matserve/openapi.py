"""The OpenAPI document of ``/v1``: every reference resolvable, and request schemas as strict as the server.

Routes that parse their own bodies (pydantic's JSON parser is much faster on large batches) declare them with
``model_json_schema()``, whose nested models sit in that schema's own ``$defs``: ``#/$defs/X`` does not resolve
from the document's root, so generators and fuzzers skipped those bodies. :func:`resolvable_openapi` moves every
``$defs`` into ``components/schemas``. :func:`job_request_body` gives ``POST /v1/jobs`` one alternative per model,
with that model's input items, instead of "a list of anything".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from pydantic import TypeAdapter


def json_request_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose JSON body has ``schema``."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def job_request_body(model_classes: Iterable[Any], max_items: int) -> dict[str, Any]:
    """``openapi_extra`` of ``POST /v1/jobs``: ``oneOf`` a ``{"model", "inputs", "version"}`` object per model.

    Parameters
    ----------
    model_classes : iterable
        Served model classes (``name`` and ``item_type`` attributes).
    max_items : int
        Most inputs per job.
    """
    alternatives = []
    for model_class in model_classes:
        alternatives.append({
            "type": "object",
            "title": f"JobRequest[{model_class.name}]",
            "properties": {
                "model": {"const": model_class.name, "type": "string"},
                "inputs": {"type": "array", "items": TypeAdapter(model_class.item_type).json_schema(), "minItems": 1,
                           "maxItems": max_items},
                "version": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            },
            "required": ["model", "inputs"],
            "additionalProperties": False,
        })  # fmt: skip
    return json_request_body({"oneOf": alternatives})


def hoist_defs(node: Any, components: dict[str, Any]) -> None:
    """Move every nested ``$defs`` into ``components`` and point ``#/$defs/X`` references there (in place)."""
    if isinstance(node, dict):
        for name, schema in node.pop("$defs", {}).items():
            components.setdefault(name, schema)
            hoist_defs(schema, components)
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
        for value in node.values():
            hoist_defs(value, components)
    elif isinstance(node, list):
        for value in node:
            hoist_defs(value, components)


def resolvable_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """A replacement of ``app.openapi``: FastAPI's document, built once, with every ``$defs`` hoisted."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            hoist_defs(schema["paths"], components)
            for value in list(components.values()):
                hoist_defs(value, components)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
