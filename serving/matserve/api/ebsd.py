"""``POST /v1/ebsd/index`` and ``POST /v1/ebsd/scan``: EBSD patterns or scans in, crystal orientations out.

Sections, as in every model's API module: request schemas, transport parsing, routes. The answers' wire schemas
are :class:`matserve_client.wire.EbsdIndexResponse` and :class:`matserve_client.wire.EbsdScanResponse`.

``POST /v1/ebsd/index`` reads patterns from

* ``application/json``: ``{"pattern": [[...], ...]}`` (one) or ``{"patterns": [[[...]], ...]}`` (many), with
  the options below as body fields;
* ``image/png``, ``image/tiff`` (every page a pattern), ``application/x-npy`` / ``application/octet-stream``
  (an ``.npy`` file: 2-D one pattern, 3-D ``(n, rows, cols)``, 4-D ``(scan rows, scan cols, rows, cols)`` read
  row by row); the format is recognised from the bytes, options come as query parameters;
* ``multipart/form-data``: one or more file parts (PNG, TIFF or NPY, in order), options as form fields or
  query parameters.

``POST /v1/ebsd/scan`` reads one scan: a 4-D ``.npy`` ``(rows, cols, h, w)`` or an h5ebsd file (kikuchipy's own,
EDAX, Bruker Nano or Oxford Instruments H5OINA, read by kikuchipy's readers), as the body (``application/x-npy``,
``application/x-hdf5``, ``application/octet-stream``) or as the one file part of a multipart body.

Every upload is decoded within the request's budget of decoded pixels (``MATSERVE_MAX_EBSD_PIXELS``, summed over
the patterns of ``/v1/ebsd/index`` or the whole scan), checked from the headers before any pixel is decoded
(:mod:`matserve.codecs.ebsd_uploads`; for HDF5 the scan shape kikuchipy reads from the file's header); HDF5 files
are read from memory and must be self-contained (:mod:`matserve.codecs.hdf5_safety`). Patterns are area-resampled
to the model's 60x60 as they are decoded, so full-size pixels are held one TIFF page or one chunk at a time.

Options (query parameters, form fields or JSON fields): ``pc`` (``0.42,0.21,0.50``; JSON also ``[[...], ...]``
one per pattern), ``refine``, ``static_background``, ``version``, ``sample_tilt_deg``, ``detector_tilt_deg``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from matserve import request_options
from matserve.api.common import EBSD_EXAMPLE, ERROR_RESPONSES, answer, parse_body
from matserve.api.context import Context
from matserve.api.transport import media_type, read_body, read_form, release_memory
from matserve.codecs.ebsd import EbsdInputError, Geometry
from matserve.codecs.ebsd_uploads import (
    ACCEPTED_FORMATS,
    DEFAULT_MAX_PIXELS,
    INDEX_ADVICE,
    SCAN_ADVICE,
    PixelBudget,
    decode_npy,
    iter_patterns,
    reduce_scan,
    reduce_stack,
    sniff_format,
)
from matserve.codecs.h5ebsd import read_h5ebsd_scan
from matserve.errors import InvalidInput, PayloadTooLarge
from matserve.models.ebsd_indexer import EbsdIndexerModel, check_refine_size
from matserve.settings import Settings
from matserve_client.wire import EbsdIndexResponse, EbsdScanResponse

INDEX_MEDIA_TYPES = ("application/json", "image/png", "image/tiff", "application/x-npy", "application/octet-stream",
                     "multipart/form-data")  # fmt: skip
SCAN_MEDIA_TYPES = ("application/x-npy", "application/x-hdf5", "application/x-hdf", "application/octet-stream",
                    "multipart/form-data")  # fmt: skip
INDEX_PATH = "/ebsd/index"
SCAN_PATH = "/ebsd/scan"
INDEX_COUNT_ADVICE = "split them (the Python SDK does), or send a scan to POST /v1/ebsd/scan"


# -- request schemas ---------------------------------------------------------------------------------------------


class EbsdOptions(BaseModel):
    """Options of both EBSD endpoints.

    Attributes
    ----------
    pc : list of float, or list of list of float, optional
        Projection centre ``[PCx, PCy, PCz]`` (Bruker convention: fractions of detector width, height, width) for
        every pattern, or one per pattern; default the model's nominal PC (or, for HDF5 scans, the file's).
    refine : bool
        Refine each orientation against the master pattern (slower; at most 256 patterns per request).
    static_background : bool
        With ``refine``: subtract the mean of the request's patterns (a static-background estimate) before the
        refinement's background removal (at least 9 patterns; best with a whole scan).
    version : str, optional
        Registry version of ``ebsd_indexer``.
    sample_tilt_deg, detector_tilt_deg : float, optional
        The measurement's geometry; the model supports 70 and 0 deg (+-0.5 deg) only; other values get a 422.
    """

    model_config = ConfigDict(extra="forbid")

    pc: list[float] | list[list[float]] | list[list[list[float]]] | None = Field(
        default=None, examples=[[0.425, 0.213, 0.501]]
    )
    refine: bool = False
    static_background: bool = False
    version: str | None = Field(default=None, examples=[None])
    sample_tilt_deg: float | None = Field(default=None, examples=[70.0])
    detector_tilt_deg: float | None = Field(default=None, examples=[0.0])

    @field_validator("pc", mode="before")
    @classmethod
    def _pc_from_text(cls, value: Any) -> Any:
        """``"0.42,0.21,0.50"`` (query/form) or a JSON list as text -> a list."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError("pc is not valid JSON; send e.g. 0.425,0.213,0.501") from None
        try:
            return [float(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(
                f"pc must be three numbers separated by commas, e.g. 0.425,0.213,0.501; got {value!r}"
            ) from None


class EbsdIndexRequest(EbsdOptions):
    """A JSON body of ``POST /v1/ebsd/index``: ``pattern`` (one 2-D array) or ``patterns`` (a list of them)."""

    pattern: list[list[float]] | None = None
    patterns: list[list[list[float]]] | None = Field(default=None, min_length=1)


# -- transport parsing -------------------------------------------------------------------------------------------


def _pc_message(name: str, error: dict[str, Any]) -> str | None:
    if name == "pc" and error["type"] != "value_error":
        return ("pc: send [PCx, PCy, PCz] (e.g. 0.425,0.213,0.501), or one such triple per pattern "
                "(per pixel for scans: [rows][cols][3])")  # fmt: skip
    return None


def options_from(values: dict[str, Any], where: str) -> EbsdOptions:
    """Options from query parameters / form fields (strings), with clear messages."""
    return request_options.options_from(EbsdOptions, values, where, _pc_message)


def merge_options(body: EbsdOptions, query: dict[str, str]) -> EbsdOptions:
    """Body options plus query options; the same option in both is refused."""
    return request_options.merge_options(body, query, _pc_message)


def decode_index_body(
    kind: str,
    body: bytes | bytearray,
    files: list[tuple[str, bytes]],
    max_patterns: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[np.ndarray | str], list[str], list[str | None] | None]:
    """Patterns, their labels in messages and (multipart) their sources, from a binary or multipart body.

    Every upload's header is checked against one budget (``max_patterns`` patterns and ``max_pixels`` decoded
    pixels for the whole request) before it is decoded; each pattern is then checked and resampled to 60x60
    float32 as it is decoded (a refused one becomes its reason, a string).
    """
    budget = PixelBudget(max_pixels, max_patterns, INDEX_ADVICE, INDEX_COUNT_ADVICE)
    patterns: list[np.ndarray | str] = []
    labels: list[str] = []
    sources: list[str | None] | None = None
    if kind == "multipart/form-data":
        sources = []
        if not files:
            raise InvalidInput(f"the multipart body has no file part; send patterns as files ({ACCEPTED_FORMATS})")
        for name, data in files:
            first = len(patterns)
            for stack in iter_patterns(data, None, f"file {name!r}", budget):
                patterns.extend(reduce_stack(stack))
            count = len(patterns) - first
            for k in range(count):
                labels.append(f"patterns[{first + k}] (file {name!r}" + (f", pattern {k})" if count > 1 else ")"))
                sources.append(f"{name}[{k}]" if count > 1 else name)
    else:
        for stack in iter_patterns(body, kind, "the body", budget):
            patterns.extend(reduce_stack(stack))
        labels = [f"patterns[{i}]" for i in range(len(patterns))]
    return patterns, labels, sources


def decode_json_patterns(
    request: EbsdIndexRequest, max_patterns: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[list[np.ndarray | str], list[str]]:
    """The patterns of a JSON body, checked and resampled to 60x60 float32 (rows of unequal length, and other
    refused patterns, become per-item errors); at most ``max_pixels`` pixels in all."""
    if (request.pattern is None) == (request.patterns is None):
        raise InvalidInput(
            f"send either 'pattern' (one 2-D array) or 'patterns' (a list of them), not "
            f"{'both' if request.pattern is not None else 'neither'}; e.g. {EBSD_EXAMPLE}"
        )
    items = [request.pattern] if request.pattern is not None else list(request.patterns or [])
    _check_count(len(items), max_patterns)
    budget = PixelBudget(max_pixels, None, INDEX_ADVICE)
    labels = ["pattern"] if request.pattern is not None else [f"patterns[{i}]" for i in range(len(items))]
    patterns: list[np.ndarray | str] = []
    for item, label in zip(items, labels, strict=True):
        try:
            array = np.asarray(item, dtype=np.float32)
        except ValueError:
            patterns.append("pattern rows have different lengths; send a rectangular 2-D array")
            continue
        budget.take(1, *(array.shape if array.ndim == 2 else (1, array.size)), label)
        patterns.extend(reduce_stack(array[None]) if array.ndim == 2 else [array])
    return patterns, labels


def _check_count(count: int, max_patterns: int) -> None:
    if count > max_patterns:
        raise PayloadTooLarge(
            f"too many patterns: at most {max_patterns} per request (got {count} so far); split them (the Python SDK "
            "does), or send a scan to POST /v1/ebsd/scan"
        )


def decode_scan(
    data: bytes | bytearray, declared: str | None, max_patterns: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """A scan ``(rows, cols, h, w)`` from NPY or HDF5 bytes, with the file's PC and tilts (HDF5 only).

    The scan's size (from the NPY header or the h5ebsd header) is checked against ``max_patterns`` and
    ``max_pixels`` before its pixels are decoded. Patterns larger than the model's 60x60 come back resampled to
    60x60 float32 (:func:`~matserve.codecs.ebsd_uploads.reduce_scan`).

    Raises
    ------
    EbsdInputError
        Not NPY or HDF5, not 4-D, unreadable or unsafe; :class:`EbsdTooLarge` over a limit.
    """
    budget = PixelBudget(max_pixels, max_patterns, SCAN_ADVICE)
    kind = sniff_format(data)
    if kind == "npy":
        scan = decode_npy(data, "the scan", budget)
        if scan.ndim != 4:
            raise EbsdInputError(
                f"a scan is a 4-D array (scan rows, scan cols, pattern rows, pattern cols); got shape "
                f"{list(scan.shape)}" + ("; send single patterns to POST /v1/ebsd/index" if scan.ndim < 4 else "")
            )
        return reduce_scan(scan), None, {}
    if kind == "hdf5":
        return read_h5ebsd_scan(data, budget)
    declared_text = f" (declared {declared})" if declared else ""
    if kind in ("png", "tiff"):
        raise EbsdInputError(f"the body is a {kind.upper()} image{declared_text}; a scan is a 4-D NPY array or an "
                             "HDF5 file; send single images to POST /v1/ebsd/index")  # fmt: skip
    raise EbsdInputError(
        f"the body{declared_text} is neither a 4-D NPY array nor an HDF5 file ({'empty' if not data else repr(data[:16])}); "
        "accepted: .npy (scan rows, scan cols, rows, cols) or an HDF5 file kikuchipy reads (h5ebsd, EDAX, Bruker, Oxford)"
    )


def check_geometry(geometry: Geometry, options: EbsdOptions, file_tilts: dict[str, float] | None = None) -> None:
    """Refuse tilts the model was not trained for (the request's, then the file's)."""
    geometry.check_tilts(options.sample_tilt_deg, options.detector_tilt_deg)
    if file_tilts and options.sample_tilt_deg is None and options.detector_tilt_deg is None:
        try:
            geometry.check_tilts(file_tilts.get("sample_tilt_deg"), file_tilts.get("detector_tilt_deg"))
        except EbsdInputError as error:
            raise EbsdInputError(f"the file's detector geometry: {error}") from None


def item_errors(labels: list[str], results: list[dict[str, Any]]) -> InvalidInput | None:
    """422 naming every pattern that could not be used (the first 10 in full; one line if they all agree)."""
    failed = [(labels[i], r["error"]) for i, r in enumerate(results) if r.get("error")]
    if not failed:
        return None
    messages = {error for _, error in failed}
    if len(failed) > 1 and len(messages) == 1:
        shown = f"all of {failed[0][0]} to {failed[-1][0]}: {failed[0][1]}"
    else:
        shown = "; ".join(f"{label}: {error}" for label, error in failed[:10])
        shown += f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
    return InvalidInput(f"{len(failed)} of {len(results)} pattern(s) cannot be used: {shown}")


def openapi_index_body() -> dict[str, Any]:
    """OpenAPI request body and query parameters of ``POST /v1/ebsd/index``."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    multipart = {"schema": {"type": "object", "properties": {"files": {"type": "array", "items": {"type": "string",
                 "format": "binary"}}, **{k: {"type": "string"} for k in EbsdOptions.model_fields}}}}  # fmt: skip
    return {
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": EbsdIndexRequest.model_json_schema()}, "image/png": binary,
            "image/tiff": binary, "application/x-npy": binary, "application/octet-stream": binary,
            "multipart/form-data": multipart}},
        "parameters": _query_parameters(),
    }  # fmt: skip


def openapi_scan_body() -> dict[str, Any]:
    """OpenAPI request body and query parameters of ``POST /v1/ebsd/scan``."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {"required": True, "content": {t: binary for t in SCAN_MEDIA_TYPES if t != "multipart/form-data"}
                        | {"multipart/form-data": {"schema": {"type": "object", "properties": {"file": {
                            "type": "string", "format": "binary"}}}}}},
        "parameters": _query_parameters(),
    }  # fmt: skip


def _query_parameters() -> list[dict[str, Any]]:
    descriptions = {
        "pc": "projection centre PCx,PCy,PCz (Bruker convention), e.g. 0.425,0.213,0.501",
        "refine": "true: refine each orientation against the master pattern (at most 256 patterns)",
        "static_background": "true: with refine, subtract the request's mean pattern first (>= 9 patterns)",
        "version": "registry version of ebsd_indexer",
        "sample_tilt_deg": "sample tilt, degrees (70 supported)",
        "detector_tilt_deg": "detector tilt, degrees (0 supported)",
    }
    return [{"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
            for name, text in descriptions.items()]  # fmt: skip


def scan_response(model: Any, scan: Any) -> dict[str, Any]:
    """The JSON answer of ``POST /v1/ebsd/scan`` (maps, per-pixel errors, IPF-Z colours and PNG).

    Parameters
    ----------
    model : ModelVersion
        The version that answered.
    scan : ScanOrientations
        From :meth:`~matserve.models.ebsd_indexer.EbsdIndexerModel.index_scan`.
    """
    import base64

    from matserve.plots import ipf_scale, ipf_z_rgb, rgb_png

    rows, cols = scan.rows, scan.cols
    found = scan.orientations
    indexed = np.flatnonzero(scan.indexed)

    def grid(values: np.ndarray | None, decimals: int) -> list[Any] | None:
        """Per-pixel values (``(m,)`` or ``(m, k)`` over the indexed pixels) as ``[rows][cols]`` with nulls."""
        if values is None:
            return None
        flat: list[Any] = [None] * (rows * cols)
        for index, value in zip(indexed.tolist(), np.round(values, decimals).tolist(), strict=True):
            flat[index] = value
        return [flat[r * cols : (r + 1) * cols] for r in range(rows)]

    rgb = np.zeros((rows * cols, 3), dtype=np.uint8)
    rgb[indexed] = ipf_z_rgb(found.quaternion)
    rgb_map = rgb.reshape(rows, cols, 3)
    scale = ipf_scale(rows, cols)
    return {
        "model": model.name, "version": model.version, "rows": rows, "cols": cols,
        "refined": found.refinement_score is not None, "indexed": len(indexed), "failed": len(scan.errors),
        "pc": np.round(scan.pc.mean(axis=0).astype(np.float64), 6).tolist(),
        "euler_bunge_deg": grid(np.degrees(found.euler_bunge_rad), 6),
        "quaternion": grid(found.quaternion, 8),
        "confidence": grid(found.confidence, 6),
        "expected_error_deg": grid(found.expected_error_deg, 6),
        "refinement_score": grid(found.refinement_score, 6),
        "errors": [{"row": i // cols, "col": i % cols, "error": e} for i, e in sorted(scan.errors.items())],
        "ipf_z_rgb": rgb_map.tolist(),
        "ipf_z_png": base64.b64encode(rgb_png(rgb_map, scale)).decode("ascii"),
        "ipf_z_png_scale": scale,
    }  # fmt: skip


# -- routes ------------------------------------------------------------------------------------------------------


def router(settings: Settings) -> APIRouter:
    """The routes of the EBSD indexer, with the limits of ``settings``."""
    routes = APIRouter()

    @routes.post(
        INDEX_PATH,
        response_model=EbsdIndexResponse,
        responses=ERROR_RESPONSES,
        summary="Crystal orientations (Bunge Euler angles, quaternion) of EBSD patterns, optionally refined",
        openapi_extra=openapi_index_body(),
    )
    async def ebsd_index(http_request: Request, context: Context) -> Response:
        """Index EBSD patterns of nickel (m-3m): JSON arrays, PNG/TIFF images, NPY arrays or multipart file parts.

        Square patterns of 60 to 1024 px are area-resampled to 60x60; any pattern that cannot be used makes the
        request 422, naming it (``patterns[3]: constant pattern ...``). ``refine=true`` refines each orientation
        against the master pattern (at most 256 patterns per request).
        """
        kind = media_type(http_request)
        query = dict(http_request.query_params)
        limit, pixels = settings.max_ebsd_patterns, settings.max_ebsd_pixels
        sources = None
        if kind == "application/json":
            request = await parse_body(http_request, EbsdIndexRequest)
            options = merge_options(request, query)
            patterns, labels = await anyio.to_thread.run_sync(decode_json_patterns, request, limit, pixels)
        elif kind == "multipart/form-data":
            form = await read_form(http_request, limit)
            options = merge_options(options_from(form.fields, "form field"), query)
            patterns, labels, sources = await anyio.to_thread.run_sync(decode_index_body, kind, b"", form.named(),
                                                                       limit, pixels)  # fmt: skip
            del form
        else:
            body = await read_body(http_request)
            options = options_from(query, "query parameter")
            patterns, labels, sources = await anyio.to_thread.run_sync(decode_index_body, kind, body, [],
                                                                       limit, pixels)  # fmt: skip
            del body
        model = context.typed_model("ebsd_indexer", EbsdIndexerModel)
        check_geometry(model.geometry(options.version), options)
        if options.refine:
            check_refine_size(len(patterns), settings.max_ebsd_refine_patterns)
        run = functools.partial(model.index, patterns, pc=options.pc, version=options.version,
                                refine=options.refine, static_background=options.static_background)  # fmt: skip
        prediction = await anyio.to_thread.run_sync(run)
        del run, patterns
        await anyio.to_thread.run_sync(release_memory)
        for i, result in enumerate(prediction.results):
            result["source"] = sources[i] if sources else None
        failed = item_errors(labels, prediction.results)
        if failed is not None:
            raise failed
        body = {"model": prediction.model, "version": prediction.version, "results": prediction.results}
        return answer(EbsdIndexResponse, body)

    @routes.post(
        SCAN_PATH,
        response_model=EbsdScanResponse,
        responses=ERROR_RESPONSES,
        summary="Orientation map of an EBSD scan (4-D NPY or HDF5), with an IPF-Z colour PNG",
        openapi_extra=openapi_scan_body(),
    )
    async def ebsd_scan(http_request: Request, context: Context) -> Response:
        """Index a scan pixel by pixel: Euler angles, quaternions, confidence and expected error per pixel (``null``
        and an entry in ``errors`` where a pattern cannot be used), and the IPF-Z map as RGB and PNG."""
        kind = media_type(http_request)
        query = dict(http_request.query_params)
        if kind == "multipart/form-data":
            form = await read_form(http_request, 1)
            if len(form.files) != 1:
                raise InvalidInput("send the scan as exactly one file part (a 4-D .npy or an HDF5 file)")
            data = form.files[0][2]
            options = merge_options(options_from(form.fields, "form field"), query)
            del form
        else:
            data = await read_body(http_request)
            options = options_from(query, "query parameter")
        scan, file_pc, file_tilts = await anyio.to_thread.run_sync(decode_scan, data, kind,
                                                                   settings.max_ebsd_scan_patterns,
                                                                   settings.max_ebsd_pixels)  # fmt: skip
        del data
        model = context.typed_model("ebsd_indexer", EbsdIndexerModel)
        check_geometry(model.geometry(options.version), options, file_tilts)
        if options.refine:
            check_refine_size(scan.shape[0] * scan.shape[1], settings.max_ebsd_refine_patterns)
        pc = options.pc if options.pc is not None else file_pc
        run = functools.partial(model.index_scan, scan, pc=pc, version=options.version, refine=options.refine,
                                static_background=options.static_background)  # fmt: skip
        version, orientations = await anyio.to_thread.run_sync(run)
        del run, scan
        await anyio.to_thread.run_sync(release_memory)
        body = await anyio.to_thread.run_sync(scan_response, version, orientations)
        return answer(EbsdScanResponse, body)

    return routes
