"""Endpoint options given as query parameters, form fields or JSON body fields: parsed once, clearly refused.

Used by the EBSD and scattering endpoints, whose options may come in any of the three places.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from matserve.errors import InvalidInput

Options = TypeVar("Options", bound=BaseModel)
SpecialMessage = Callable[[str, dict[str, Any]], str | None]
"""``(option name, pydantic error) -> message`` for options that deserve a tailored message, else ``None``."""


def option_errors(
    error: ValidationError, where: str, cls: type[BaseModel], special: SpecialMessage | None = None
) -> str:
    """At most five messages, one per wrong option, naming where it came from and what is accepted."""
    parts: list[str] = []
    for e in error.errors():
        name = str(e["loc"][0]) if e["loc"] else "body"
        message = special(name, dict(e)) if special else None
        if message is None and e["type"] == "extra_forbidden":
            message = f"unknown {where} {name!r}; accepted: {', '.join(cls.model_fields)}"
        message = message or f"{name}: {e['msg']}"
        if message not in parts:
            parts.append(message)
    return "; ".join(parts[:5])


def options_from(
    cls: type[Options], values: dict[str, Any], where: str, special: SpecialMessage | None = None
) -> Options:
    """Options from query parameters or form fields (strings, converted by pydantic), or a 422 saying why not."""
    try:
        return cls.model_validate(values)
    except ValidationError as error:
        raise InvalidInput(option_errors(error, where, cls, special)) from None


def merge_options(body: Options, query: dict[str, str], special: SpecialMessage | None = None) -> Options:
    """Body (JSON or form) options plus query options; the same option in both places is refused."""
    if not query:
        return body
    cls = type(body)
    from_query = options_from(cls, query, "query parameter", special)
    given = body.model_fields_set & from_query.model_fields_set
    if given:
        raise InvalidInput(f"{', '.join(sorted(given))}: given both in the body and in the query; give each once")
    values = {name: getattr(body, name) for name in body.model_fields_set if name in cls.model_fields}
    values.update({name: getattr(from_query, name) for name in from_query.model_fields_set})
    return cls.model_validate(values)
