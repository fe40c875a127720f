"""What the Triton domain models do between their tensors and the served models (plain Python, no Triton import).

The python-backend ``model.py`` (:mod:`matserve.triton.python_models.domain_model`) reads a request's tensors
into numpy arrays and calls one handler of :data:`HANDLERS`, which turns them into the inputs of the served
model's public entry point (the HTTP API's decoders and option models, reused, not copied), runs it, and applies
the HTTP route's request rules, so a request answers what the HTTP API answers:

* ``xrd``: ``two_theta_deg`` ``(1, m)`` (one grid for every pattern) or ``(n, m)``, ``intensity`` ``(n, m)``,
  optional ``points`` ``(n,)`` (leading values used per row, for patterns of different lengths padded to ``m``)
  and ``wavelength_angstrom`` ``(1,)`` or ``(n,)`` (NaN: not given, Cu K-alpha), JSON ``options``
  (``{"plots": true}``, novelty only) -> ``model(items, version)``; a pattern that cannot be used makes the request fail naming it, as ``POST /v1/xrd/*`` does;
* ``ebsd``: ``patterns`` ``(n, h, w)`` or ``files`` (PNG/TIFF/NPY bytes, as the HTTP multipart upload), optional
  ``pc`` ``(1, 3)`` or ``(n, 3)`` and JSON ``options`` (:class:`~matserve.api.ebsd.EbsdOptions` without
  ``version``, plus ``file_names``) -> ``model.index(patterns, pc=..., version=..., refine=...,
  static_background=...)``;
* ``scattering``: ``images`` ``(n, h, w)`` (with an optional ``mask`` ``(h, w)`` for all) or ``files`` (detector
  files, as the HTTP body or multipart upload) and JSON ``options``
  (:class:`~matserve.api.scattering.ScatteringOptions` without ``version``, plus ``file_names`` and
  ``content_type``) -> ``model.sort(frames, version=..., saliency=..., saliency_label=..., setup=...)``.

Each handler returns the :class:`~matserve.models.base.Prediction` (the registry version that answered and one
result dict per item, exactly the HTTP API's). Request-level problems raise a
:class:`~matserve.errors.MatserveError` (:func:`as_matserve_error` maps the codecs' own exceptions), whose
``status`` the model turns into a Triton error code.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from matserve.errors import InvalidInput, MatserveError, PayloadTooLarge
from matserve.models.base import Prediction, ServedModel
from matserve.registry import ModelVersion
from matserve.settings import Settings

MAX_OPTIONS_BYTES = 64 * 1024
"""Largest JSON ``options`` input accepted, bytes."""
XRD_EXAMPLE = "two_theta_deg FP64 [1, m] or [n, m], intensity FP64 [n, m]"


class OneVersionRegistry:
    """The registry a served model sees inside Triton: the one version folder of this Triton model version.

    Parameters
    ----------
    model : ModelVersion
        The version (its ``card.json`` and side files are copied next to ``model.py``; the graph runs in the
        tensor model, through BLS).
    """

    def __init__(self, model: ModelVersion) -> None:
        self.model = model

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The version, if ``name`` and ``version`` (``None``: this one) name it; else :class:`KeyError`."""
        if name != self.model.name or version not in (None, self.model.version):
            raise KeyError(f"this Triton model version serves {self.model.name} {self.model.version} only, not "
                           f"{name} {version}; pick the registry version with the Triton model version")  # fmt: skip
        return self.model


def parse_options(raw: np.ndarray | None) -> dict[str, Any]:
    """The JSON object of a BYTES ``options`` input of shape ``(1,)`` (``{}`` when absent).

    Raises
    ------
    InvalidInput
        More than one element, not UTF-8, not JSON, not an object, or over :data:`MAX_OPTIONS_BYTES`.
    """
    if raw is None:
        return {}
    values = np.asarray(raw, dtype=object).reshape(-1)
    if len(values) != 1:
        raise InvalidInput(f"options: send one JSON object (BYTES of shape [1]); got {len(values)} elements")
    value = values[0]
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    if len(data) > MAX_OPTIONS_BYTES:
        raise InvalidInput(f"options: at most {MAX_OPTIONS_BYTES} bytes of JSON; got {len(data)}")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidInput(f'options: not a UTF-8 JSON object ({error}); e.g. {{"saliency": true}}') from None
    if not isinstance(parsed, dict):
        raise InvalidInput(f"options: a JSON object is expected, got {type(parsed).__name__}")
    return parsed


def as_matserve_error(error: Exception) -> MatserveError | None:
    """The HTTP API's error for a domain error (:func:`matserve.api.common.http_error`, the one place that maps
    them: the codecs' ``PatternError``, ``EbsdInputError``, ``ImageError`` and the lifecycle's
    :class:`~matserve.errors.DomainError`); ``None`` for anything else (an internal error)."""
    from matserve import errors
    from matserve.codecs.ebsd import EbsdInputError
    from matserve.codecs.scattering import ImageError
    from matserve.codecs.xrd import PatternError

    domain_error = getattr(errors, "DomainError", MatserveError)
    if isinstance(error, MatserveError | domain_error | EbsdInputError | ImageError | PatternError):
        from matserve.api.common import http_error

        return http_error(error)
    return None


def _files(raw: np.ndarray) -> list[bytes]:
    """The elements of a BYTES ``files`` input."""
    return [bytes(v) if isinstance(v, bytes | bytearray) else str(v).encode("utf-8") for v in raw.reshape(-1)]


def _file_names(options: dict[str, Any], count: int) -> list[str] | None:
    """``options["file_names"]`` (one name per file; removed from ``options``), or ``None`` when not given."""
    names = options.pop("file_names", None)
    if names is None:
        return None
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, str) for n in names):
        raise InvalidInput(f"options.file_names: a list of {count} string(s), one per element of 'files'")
    return names


def _exactly_one(inputs: dict[str, np.ndarray], names: tuple[str, str]) -> str:
    given = [name for name in names if inputs.get(name) is not None]
    if len(given) != 1:
        raise InvalidInput(f"send either '{names[0]}' or '{names[1]}', not {'both' if given else 'neither'}")
    return given[0]


def _no_version(options: dict[str, Any]) -> None:
    if "version" in options:
        raise InvalidInput("options.version: the Triton model version picks the registry version (see the config's "
                           "matserve_versions); leave 'version' out of the options")  # fmt: skip


# -- XRD -----------------------------------------------------------------------------------------------------------


def xrd_items(inputs: dict[str, np.ndarray], max_patterns: int) -> list[dict[str, Any]]:
    """The patterns of an XRD request as the served model's items (``{"two_theta_deg", "intensity",
    "wavelength_angstrom"}``, numpy arrays in float64, as the HTTP API's JSON numbers).

    Raises
    ------
    InvalidInput
        Inconsistent shapes, ``points`` out of range, or a missing input.
    PayloadTooLarge
        More than ``max_patterns`` patterns.
    """
    from matserve.codecs.xrd import MAX_POINTS

    if inputs.get("intensity") is None or inputs.get("two_theta_deg") is None:
        raise InvalidInput(f"send both 'two_theta_deg' and 'intensity' ({XRD_EXAMPLE})")
    intensity = np.asarray(inputs["intensity"], dtype=np.float64)
    grid = np.asarray(inputs["two_theta_deg"], dtype=np.float64)
    if intensity.ndim != 2 or grid.ndim != 2:
        raise InvalidInput(f"two_theta_deg and intensity are 2-D ({XRD_EXAMPLE})")
    n, m = intensity.shape
    if n == 0:
        raise InvalidInput("no patterns: intensity has 0 rows")
    if n > max_patterns:
        raise PayloadTooLarge(f"too many patterns: at most {max_patterns} per request (got {n}); split them")
    if m > MAX_POINTS:
        raise InvalidInput(f"at most {MAX_POINTS} points per pattern; got {m}")
    if grid.shape not in ((1, m), (n, m)):
        raise InvalidInput(f"two_theta_deg has shape {list(grid.shape)}; expected [1, {m}] (one grid for every "
                           f"pattern) or [{n}, {m}] (intensity is [{n}, {m}])")  # fmt: skip
    points = inputs.get("points")
    if points is None:
        lengths = [m] * n
    else:
        lengths = [int(p) for p in np.asarray(points).reshape(-1)]
        if len(lengths) != n or any(p < 0 or p > m for p in lengths):
            raise InvalidInput(f"points: one count per pattern ({n}), each 0 to {m} (the values of a row used)")
    wavelengths: list[float | None] = [None] * n
    if inputs.get("wavelength_angstrom") is not None:
        given = np.asarray(inputs["wavelength_angstrom"], dtype=np.float64).reshape(-1)
        if len(given) not in (1, n):
            raise InvalidInput(f"wavelength_angstrom: one value for every pattern or one per pattern ({n}); "
                               f"got {len(given)}")  # fmt: skip
        wavelengths = [None if math.isnan(v) else float(v) for v in np.broadcast_to(given, (n,))]
    return [
        {"two_theta_deg": grid[0 if len(grid) == 1 else i, : lengths[i]], "intensity": intensity[i, : lengths[i]],
         "wavelength_angstrom": wavelengths[i]}
        for i in range(n)
    ]  # fmt: skip


def run_xrd(
    served: ServedModel, inputs: dict[str, np.ndarray], options: dict[str, Any], settings: Settings
) -> Prediction:
    """``model(items, version)`` (novelty with ``{"plots": true}``: the HTTP API's PNGs too); a pattern that cannot
    be used fails the request naming it, as the HTTP API does."""
    from matserve.api.xrd import MAX_PLOT_PATTERNS, raise_item_errors

    plots = options.pop("plots", False)
    if options or not isinstance(plots, bool) or (plots and served.name != "xrd_novelty"):
        allowed = "'plots' (true/false)" if served.name == "xrd_novelty" else "none"
        raise InvalidInput(f"options: {served.name} takes {allowed}; got {json.dumps({**options, 'plots': plots})}")
    items = xrd_items(inputs, settings.max_patterns)
    labels = [f"patterns[{i}]" for i in range(len(items))]
    if not plots:
        prediction = served(items, None)
        raise_item_errors(labels, prediction.results)
        return prediction
    if len(items) > MAX_PLOT_PATTERNS:
        raise InvalidInput(f"plots are rendered for at most {MAX_PLOT_PATTERNS} patterns per request; "
                           f"got {len(items)}: send fewer, or leave 'plots' false")  # fmt: skip
    version, results, curves = served.with_reconstructions(items, version=None)  # type: ignore[attr-defined]
    raise_item_errors(labels, results)
    from matserve.plots import add_xrd_novelty_plots

    add_xrd_novelty_plots(version, results, curves)
    return Prediction(model=version.name, version=version.version, results=results)


# -- EBSD ----------------------------------------------------------------------------------------------------------


def run_ebsd(
    served: ServedModel, inputs: dict[str, np.ndarray], options: dict[str, Any], settings: Settings
) -> Prediction:
    """``model.index(patterns, pc=..., version=..., refine=..., static_background=...)`` on arrays or files."""
    from matserve import request_options
    from matserve.api import ebsd as ebsd_api
    from matserve.models.ebsd_indexer import check_refine_size

    source = _exactly_one(inputs, ("patterns", "files"))
    files = _files(inputs["files"]) if source == "files" else []
    names = (_file_names(options, len(files)) or [f"file{i}" for i in range(len(files))]) if files else []
    _no_version(options)
    opts = request_options.options_from(ebsd_api.EbsdOptions, options, "options")
    if inputs.get("pc") is not None and opts.pc is not None:
        raise InvalidInput("pc: given both as the 'pc' input and in the options; give it once")
    labels: list[str]
    sources: list[str | None] | None = None
    limits = (settings.max_ebsd_patterns, settings.max_ebsd_pixels)
    if source == "patterns":  # as the HTTP API's NPY body (the SDK's way of sending arrays): same checks, same path
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(inputs["patterns"]), allow_pickle=False)
        patterns, labels, _ = ebsd_api.decode_index_body("application/x-npy", buffer.getvalue(), [], *limits)
    else:  # as the HTTP API's multipart upload of PNG/TIFF/NPY files
        files_named = list(zip(names, files, strict=True))
        patterns, labels, sources = ebsd_api.decode_index_body("multipart/form-data", b"", files_named, *limits)
    if not patterns:
        raise InvalidInput("no patterns in the request")
    pc: Any = opts.pc
    if inputs.get("pc") is not None:
        rows = np.asarray(inputs["pc"], dtype=np.float64).reshape(-1, 3)
        pc = rows[0] if len(rows) == 1 else rows
    served_version = served.version(None)
    ebsd_api.check_geometry(served.geometry(served_version.version), opts)  # type: ignore[attr-defined]
    if opts.refine:
        check_refine_size(len(patterns), settings.max_ebsd_refine_patterns)
    prediction = served.index(  # type: ignore[attr-defined]
        patterns, pc=pc, version=served_version.version, refine=opts.refine, static_background=opts.static_background
    )
    for i, result in enumerate(prediction.results):
        result["source"] = sources[i] if sources else None
    failed = ebsd_api.item_errors(labels, prediction.results)
    if failed is not None:
        raise failed
    return prediction


# -- scattering ----------------------------------------------------------------------------------------------------


def run_scattering(
    served: ServedModel, inputs: dict[str, np.ndarray], options: dict[str, Any], settings: Settings
) -> Prediction:
    """``model.sort(frames, version=..., saliency=..., saliency_label=..., setup=...)`` on arrays or files."""
    from matserve import request_options
    from matserve.api import scattering as scattering_api
    from matserve.codecs.detector_files import FrameBudget

    source = _exactly_one(inputs, ("images", "files"))
    files = _files(inputs["files"]) if source == "files" else []
    names = _file_names(options, len(files)) if files else None
    content_type = options.pop("content_type", None)
    if content_type is not None and not isinstance(content_type, str):
        raise InvalidInput("options.content_type: a string (e.g. 'image/tiff'), used in messages only")
    _no_version(options)
    opts = request_options.options_from(scattering_api.ScatteringOptions, options, "options")
    model_version = served.check_options(None, opts.saliency_label)  # type: ignore[attr-defined]
    budget = FrameBudget(settings.max_scattering_frames, settings.max_scattering_pixels)
    if source == "images":
        if opts.raw is not None:
            raise InvalidInput("options.shape and options.dtype describe headerless raw files: send them as 'files'")
        if inputs.get("mask") is not None and np.asarray(inputs["mask"]).ndim != 2:
            raise InvalidInput("mask: one 2D mask (rows x cols, nonzero = bad pixel) for every image")
        images = np.asarray(inputs["images"])
        request = scattering_api.ScatteringSortRequest.model_construct(images=list(images), mask=inputs.get("mask"))
        items = scattering_api.decode_json(request, budget)
    else:
        if inputs.get("mask") is not None:
            raise InvalidInput("mask: goes with 'images'; a detector file brings its own mask")
        if len(files) == 1:  # as the HTTP API's file body: frames named after the file (else 'body')
            kind = content_type or "application/octet-stream"
            items = scattering_api.decode_body(kind, files[0], budget, names[0] if names else None, opts.raw)
        else:  # as a multipart upload of several files
            names = names or [f"file{i}" for i in range(len(files))]
            items = scattering_api.decode_multipart(list(zip(names, files, strict=True)), [], budget, opts.raw)
    scattering_api.check_saliency(opts, len(items.items))
    prediction = served.sort(  # type: ignore[attr-defined]
        items.items,
        version=model_version.version,
        saliency=opts.saliency,
        saliency_label=opts.saliency_label,
        setup=opts.setup,
    )
    failed = scattering_api.failures(items, prediction.results)
    if failed is not None:
        raise failed
    results = [{"source": label, **result} for label, result in zip(items.labels, prediction.results, strict=True)]
    return Prediction(model=prediction.model, version=prediction.version, results=results)


Handler = Callable[[ServedModel, dict[str, np.ndarray], dict[str, Any], Settings], Prediction]
HANDLERS: dict[str, Handler] = {"xrd": run_xrd, "ebsd": run_ebsd, "scattering": run_scattering}
"""Handler name (a domain model's ``domain_handler`` parameter) -> handler."""


def run(
    handler: str, served: ServedModel, inputs: dict[str, np.ndarray], settings: Settings | None = None
) -> Prediction:
    """Run one request: ``inputs`` are the request's tensors by name (absent optional inputs left out); a BYTES
    ``options`` input is parsed as JSON. Raises :class:`~matserve.errors.MatserveError` for request errors."""
    options = parse_options(inputs.pop("options", None))
    try:
        return HANDLERS[handler](served, inputs, options, settings or Settings())
    except ModuleNotFoundError as error:  # e.g. EBSD refinement without kikuchipy in Triton's environment
        raise MatserveError(f"this Triton cannot run the request: {error} (install it in Triton's environment, "
                            "or use the HTTP API)") from None  # fmt: skip
    except Exception as error:
        mapped = as_matserve_error(error)
        if mapped is None or mapped is error:
            raise
        raise mapped from None
