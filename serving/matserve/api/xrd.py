"""``POST /v1/xrd/phase`` and ``POST /v1/xrd/novelty``: powder diffraction patterns in, phases or novelty out.

Patterns come as JSON (``{"patterns": [{"two_theta_deg": [...], "intensity": [...]}]}`` or ``{"pattern": ...}``)
or, for array batches, as binary bodies (:mod:`matserve.codecs.xrd_uploads`): ``application/x-npy`` (an
``(n, 2048)`` array on the model grid, or ``(n, 2, m)`` 2θ and intensity) or ``multipart/form-data`` ``.xy`` files,
with the options ``wavelength_angstrom``, ``version`` (and ``plots`` for novelty) as query parameters or form fields.

Sections, as in every model's API module: request schemas, transport parsing, routes. The answers' wire schemas
are :class:`matserve_client.wire.XrdPhaseResponse` and :class:`matserve_client.wire.XrdNoveltyResponse`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from matserve import request_options
from matserve.api.common import ERROR_RESPONSES, XRD_EXAMPLE, answer, json_body, parse_body
from matserve.api.context import Context
from matserve.api.transport import media_type, read_form
from matserve.codecs.xrd import WAVELENGTH_RANGE_ANGSTROM, PatternInput
from matserve.codecs.xrd_uploads import decode_xrd_files, decode_xrd_npy
from matserve.errors import InvalidInput
from matserve.models.xrd_novelty import XrdNoveltyModel
from matserve.settings import Settings
from matserve_client.wire import XrdNoveltyResponse, XrdPhaseResponse

PHASE_PATH = "/xrd/phase"
NOVELTY_PATH = "/xrd/novelty"
MAX_PLOT_PATTERNS = 16
MEDIA_TYPES = ("application/json", "application/x-npy", "application/octet-stream", "multipart/form-data")
FILE_PARTS = 10_000
"""Most file parts of a multipart body (each one pattern; the pattern limit applies too)."""

# -- request schemas ---------------------------------------------------------------------------------------------


def _one_of_pattern_or_patterns_schema(schema: dict[str, Any]) -> None:
    """JSON schema of the request: exactly one of ``pattern`` and ``patterns``, neither null."""
    for name in ("pattern", "patterns"):
        field_schema = schema["properties"][name]
        options = [option for option in field_schema.pop("anyOf", []) if option.get("type") != "null"]
        if options:
            field_schema.update(options[0])
        field_schema.pop("default", None)
    schema["oneOf"] = [{"required": ["pattern"]}, {"required": ["patterns"]}]


class XrdRequestBase(BaseModel):
    """Shared behaviour of the XRD request bodies (their ``patterns`` limit is set per server, see
    :func:`request_schemas`)."""

    pattern: PatternInput | None = None
    patterns: list[PatternInput] | None = None
    wavelength_angstrom: float | None = None
    version: str | None = None

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
    def _one_of_pattern_or_patterns(self) -> XrdRequestBase:
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

    def labels(self) -> list[str]:
        """How the request names each item in error messages."""
        return ["pattern"] if self.pattern is not None else [f"patterns[{i}]" for i in range(len(self.patterns or []))]


@functools.cache
def request_schemas(max_patterns: int) -> tuple[type[XrdRequestBase], type[XrdRequestBase]]:
    """The phase and novelty request bodies, with the server's limit of patterns per request."""

    class XrdRequest(XrdRequestBase):
        """One pattern (``pattern``) or many (``patterns``), on any 2θ grid; the server resamples them.

        ``wavelength_angstrom`` applies to every pattern that does not give its own (default Cu Kα, 1.54184 Å;
        accepted 0.1-3.0 Å: patterns are mapped to the Cu Kα 2θ scale through Bragg's law). ``version`` pins a
        registry version (default: the active one).
        """

        model_config = ConfigDict(extra="forbid", json_schema_extra=_one_of_pattern_or_patterns_schema)

        pattern: PatternInput | None = Field(default=None)
        patterns: list[PatternInput] | None = Field(default=None, min_length=1, max_length=max_patterns)
        wavelength_angstrom: float | None = Field(
            default=None, ge=WAVELENGTH_RANGE_ANGSTROM[0], le=WAVELENGTH_RANGE_ANGSTROM[1], examples=[1.54184]
        )
        version: str | None = Field(default=None, examples=[None])

    class XrdNoveltyRequest(XrdRequest):
        """As :class:`XrdRequest`; ``plots: true`` adds two PNGs per pattern (at most 16 patterns then)."""

        plots: bool = False

    return XrdRequest, XrdNoveltyRequest


class XrdOptions(BaseModel):
    """Options of a binary (NPY) or multipart body, as query parameters or form fields.

    Attributes
    ----------
    wavelength_angstrom : float, optional
        X-ray wavelength of every pattern, Å (default Cu Kα, 1.54184 Å; accepted 0.1-3.0 Å).
    version : str, optional
        Registry version (default: the active one).
    """

    model_config = ConfigDict(extra="forbid")

    wavelength_angstrom: float | None = Field(
        default=None, ge=WAVELENGTH_RANGE_ANGSTROM[0], le=WAVELENGTH_RANGE_ANGSTROM[1]
    )
    version: str | None = None


class XrdNoveltyOptions(XrdOptions):
    """As :class:`XrdOptions`; ``plots`` adds two PNGs per pattern (at most 16 patterns then)."""

    plots: bool = False


def openapi_body(schema: type[BaseModel], options: type[XrdOptions]) -> dict[str, Any]:
    """OpenAPI request body (JSON, NPY, multipart ``.xy`` files) and query parameters of an XRD route."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    files = {"type": "array", "items": {"type": "string", "format": "binary"}}
    multipart = {"schema": {"type": "object", "properties": {"files": files,
                 **{name: {"type": "string"} for name in options.model_fields}}}}  # fmt: skip
    body = json_body(schema)
    body["requestBody"]["content"].update({"application/x-npy": binary, "application/octet-stream": binary,
                                           "multipart/form-data": multipart})  # fmt: skip
    descriptions = {
        "wavelength_angstrom": "NPY and multipart bodies: X-ray wavelength of every pattern, Angstrom (default Cu Ka)",
        "version": "NPY and multipart bodies: registry version",
        "plots": "NPY and multipart bodies: true adds the reconstruction and latent-map PNGs (at most 16 patterns)",
    }
    body["parameters"] = [{"name": name, "in": "query", "required": False, "description": descriptions[name],
                           "schema": {"type": "string"}} for name in options.model_fields]  # fmt: skip
    return body


# -- transport parsing -------------------------------------------------------------------------------------------


def raise_item_errors(labels: list[str], results: list[dict[str, Any]]) -> None:
    """422 naming every pattern that could not be used (the first 10 in full)."""
    failed = [(i, r["error"]) for i, r in enumerate(results) if r.get("error")]
    if not failed:
        return
    shown = "; ".join(f"{labels[i]}: {error}" for i, error in failed[:10])
    more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
    raise InvalidInput(f"{len(failed)} of {len(results)} pattern(s) cannot be used: {shown}{more}. "
                       f"Each pattern is {{\"two_theta_deg\": [...], \"intensity\": [...]}}, e.g. {XRD_EXAMPLE}")  # fmt: skip


@dataclass
class XrdPatterns:
    """The patterns of a request, whatever their transport.

    Attributes
    ----------
    items : list of dict
        :class:`~matserve.codecs.xrd.PatternInput` mappings (lists or arrays), each with its wavelength.
    labels : list of str
        Each item's name in messages (``patterns[3]``, or a file name).
    version : str, optional
        The registry version asked for.
    plots : bool
        Novelty only: add the PNGs.
    sources : list of str, optional
        File names of a multipart body; each result's ``source``.
    """

    items: list[dict[str, Any]]
    labels: list[str]
    version: str | None
    plots: bool = False
    sources: list[str] | None = None


async def read_patterns(
    http_request: Request, schema: type[XrdRequestBase], options_schema: type[XrdOptions], max_patterns: int
) -> XrdPatterns:
    """The patterns and options of a JSON, NPY or multipart body (options of binary bodies: query parameters or
    form fields; the same option in both places is refused)."""
    kind = media_type(http_request)
    if kind == "application/json":
        request = await parse_body(http_request, schema)
        return XrdPatterns(request.items(), request.labels(), request.version, bool(getattr(request, "plots", False)))
    query = dict(http_request.query_params)
    if kind == "multipart/form-data":
        form = await read_form(http_request, FILE_PARTS)
        options = request_options.merge_options(request_options.options_from(options_schema, form.fields,
                                                                             "form field"), query)  # fmt: skip
        files = form.named()
        del form
        items, labels = await anyio.to_thread.run_sync(functools.partial(
            decode_xrd_files, files, max_patterns=max_patterns, wavelength_angstrom=options.wavelength_angstrom))  # fmt: skip
        return XrdPatterns(items, labels, options.version, bool(getattr(options, "plots", False)), sources=labels)
    options = request_options.options_from(options_schema, query, "query parameter")
    body = await http_request.body()
    items = await anyio.to_thread.run_sync(functools.partial(
        decode_xrd_npy, body, max_patterns=max_patterns, wavelength_angstrom=options.wavelength_angstrom))  # fmt: skip
    labels = [f"patterns[{i}]" for i in range(len(items))]
    return XrdPatterns(items, labels, options.version, bool(getattr(options, "plots", False)))


def with_sources(results: list[dict[str, Any]], sources: list[str] | None) -> list[dict[str, Any]]:
    """Each result named by the file it came from (multipart bodies only)."""
    if sources is not None:
        for result, source in zip(results, sources, strict=True):
            result["source"] = source
    return results


# -- routes ------------------------------------------------------------------------------------------------------


def router(settings: Settings) -> APIRouter:
    """The routes of both XRD models, with the limits of ``settings``."""
    routes = APIRouter()
    phase_schema, novelty_schema = request_schemas(settings.max_patterns)
    limit = settings.max_patterns

    @routes.post(
        PHASE_PATH,
        response_model=XrdPhaseResponse,
        responses=ERROR_RESPONSES,
        summary="Phase (structure type) probabilities of powder XRD patterns",
        openapi_extra=openapi_body(phase_schema, XrdOptions),
    )
    async def xrd_phase(http_request: Request, context: Context) -> Response:
        """Classify each pattern among the known phases; any pattern that cannot be used makes the request 422,
        with one message per failing pattern (``patterns[3]: ...``)."""
        patterns = await read_patterns(http_request, phase_schema, XrdOptions, limit)
        prediction = await context.predict("xrd_phase", patterns.items, patterns.version)
        raise_item_errors(patterns.labels, prediction.results)
        results = with_sources(prediction.results, patterns.sources)
        body = {"model": prediction.model, "version": prediction.version, "results": results}
        return answer(XrdPhaseResponse, body)

    @routes.post(
        NOVELTY_PATH,
        response_model=XrdNoveltyResponse,
        responses=ERROR_RESPONSES,
        summary="Novelty of powder XRD patterns (VAE reconstruction error, calibrated), optional PNGs",
        openapi_extra=openapi_body(novelty_schema, XrdNoveltyOptions),
    )
    async def xrd_novelty(http_request: Request, context: Context) -> Response:
        """Score each pattern's novelty; ``plots: true`` adds a reconstruction PNG and a latent-map PNG."""
        patterns = await read_patterns(http_request, novelty_schema, XrdNoveltyOptions, limit)
        if not patterns.plots:
            prediction = await context.predict("xrd_novelty", patterns.items, patterns.version)
            raise_item_errors(patterns.labels, prediction.results)
            results = with_sources(prediction.results, patterns.sources)
            body = {"model": prediction.model, "version": prediction.version, "results": results}
            return answer(XrdNoveltyResponse, body)
        if len(patterns.items) > MAX_PLOT_PATTERNS:
            raise InvalidInput(f"plots are rendered for at most {MAX_PLOT_PATTERNS} patterns per request; "
                               f"got {len(patterns.items)}: send fewer, or leave 'plots' false")  # fmt: skip
        model = context.typed_model("xrd_novelty", XrdNoveltyModel)
        run = functools.partial(model.with_reconstructions, patterns.items, version=patterns.version)
        version, results, curves = await anyio.to_thread.run_sync(run)
        raise_item_errors(patterns.labels, results)
        from matserve.plots import add_xrd_novelty_plots  # matplotlib: imported on the first plot, not at start-up

        await anyio.to_thread.run_sync(add_xrd_novelty_plots, version, results, curves)
        with_sources(results, patterns.sources)
        return answer(XrdNoveltyResponse, {"model": version.name, "version": version.version, "results": results})

    return routes
