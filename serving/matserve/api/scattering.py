"""The scattering sorter's transport: detector files, arrays or multipart uploads in, typed answers out.

``POST /v1/scattering/sort`` reads images from

* a file as the body: TIFF (incl. MarCCD/Rayonix ``.mccd``), CBF, EDF, HDF5/NeXus, NPY or PNG, any of them
  gzip/bzip2-compressed, or headerless raw pixels (content type ``image/tiff``, ``image/png``,
  ``application/x-npy``, ``application/x-hdf5``, ``application/gzip``, ``application/x-bzip2`` or
  ``application/octet-stream``; the format is recognised from the bytes, see
  :mod:`matserve.codecs.detector_files`); every frame of the file is an image; options come as query parameters;
* ``multipart/form-data``: one or more file parts (images, in order), optionally a part named ``mask`` (a file
  holding one 2D mask, nonzero = bad pixel, applied to every image of its shape), options as form fields or
  query parameters;
* ``application/json``: ``{"image": [[...], ...]}`` (one) or ``{"images": [[[...]], ...]}`` (several), with
  optional ``"mask"`` (one 2D mask for every image) or ``"masks"`` (one per image, ``null`` for none), and the
  options as body fields.

Options: ``saliency`` (``true``: a Grad-CAM PNG per image), ``saliency_label`` (whose map: any technique,
geometry or feature label; implies ``saliency``), ``version``; the measurement setup ``distance_m``,
``wavelength_angstrom``, ``pixel_size_um`` (each overrides the file header's value, for every image of the
request; see :mod:`matserve.models.scattering_sorter`); ``shape`` (``rows x cols``) and ``dtype`` (``uint16``,
``int32``, ``>f4``...) for headerless raw files (given together; used only for bytes in no other format, see
:mod:`matserve.codecs.raw_frames`; refused with JSON bodies, which carry arrays).

Every image gets a result, in order, with ``source`` naming it (``file.tif[frame 2]``, ``images[3]``, ``body``);
an image that cannot be used gets an ``error`` and the others are answered (200). When no image of the request
can be used the answer is 422 naming each (415 when no file was in a readable format).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from matserve import request_options
from matserve.api.common import ERROR_RESPONSES, SCATTERING_EXAMPLE, answer, parse_body
from matserve.api.context import Context
from matserve.api.transport import body_filename, media_type, read_form, release_memory
from matserve.codecs.detector_files import (
    ACCEPTED_FORMATS,
    Frame,
    FrameBudget,
    TooManyFrames,
    UnsupportedFormat,
    read_frames,
)
from matserve.codecs.raw_frames import RAW_DTYPES, RawLayout, parse_dtype, parse_shape
from matserve.codecs.scattering import SETUP_LIMITS, ImageError, Setup, as_image_array, check_shape
from matserve.errors import InvalidInput, MatserveError, UnsupportedMediaType
from matserve.models.scattering_sorter import WIRE_SETUP, ScatteringSorterModel, setup_of, thread_map
from matserve.settings import Settings
from matserve_client.wire import ScatteringSortResponse

SORT_MEDIA_TYPES = ("application/json", "image/tiff", "image/png", "application/x-npy", "application/x-hdf5",
                    "application/x-hdf", "application/gzip", "application/x-gzip", "application/x-bzip2",
                    "application/octet-stream", "multipart/form-data")  # fmt: skip
SORT_PATH = "/scattering/sort"
MAX_SALIENCY_IMAGES = 64
"""Saliency PNGs are drawn for at most this many images per request (each is up to ~200 kB of base64)."""
MASK_PART = "mask"
"""Name of the multipart file part holding a mask for every image."""

# -- request schemas ---------------------------------------------------------------------------------------------


class ScatteringOptions(BaseModel):
    """Options of ``POST /v1/scattering/sort``.

    Attributes
    ----------
    saliency : bool
        Add a Grad-CAM PNG (base64) per image; at most :data:`MAX_SALIENCY_IMAGES` images per request then.
    saliency_label : str, optional
        Draw this label's map (a technique, geometry or feature label); implies ``saliency``. Default: each
        image's predicted technique.
    version : str, optional
        Registry version of ``scattering_sorter``.
    distance_m : float, optional
        Sample-detector distance, metres (0.01-100).
    wavelength_angstrom : float, optional
        X-ray wavelength, Angstrom (0.05-20; ``12.398 / energy_kev``).
    pixel_size_um : float, optional
        Detector pixel size, micrometres (1-2000; Pilatus 172, Eiger 75).
    shape : str, optional
        ``rows x cols`` (``"1043x981"`` or ``"1043,981"``) of a headerless raw file's frames; with ``dtype``.
    dtype : str, optional
        Pixel type of a headerless raw file (:data:`~matserve.codecs.raw_frames.RAW_DTYPES`, little-endian; ``>``
        prefix or ``be`` suffix for big-endian); with ``shape``.
    """

    model_config = ConfigDict(extra="forbid")

    saliency: bool = False
    saliency_label: str | None = Field(default=None, examples=["saxs"])
    version: str | None = Field(default=None, examples=[None])
    distance_m: float | None = Field(
        default=None, ge=SETUP_LIMITS["distance_m"][0], le=SETUP_LIMITS["distance_m"][1], examples=[None]
    )
    wavelength_angstrom: float | None = Field(
        default=None,
        ge=SETUP_LIMITS["wavelength_angstrom"][0],
        le=SETUP_LIMITS["wavelength_angstrom"][1],
        examples=[None],
    )
    pixel_size_um: float | None = Field(
        default=None,
        ge=SETUP_LIMITS["pixel_size_m"][0] * 1e6,
        le=SETUP_LIMITS["pixel_size_m"][1] * 1e6,
        examples=[None],
    )
    shape: str | None = Field(
        default=None,
        max_length=40,
        examples=[None],
        description="rows x cols of headerless raw files (with dtype; files only, not JSON)",
    )
    dtype: str | None = Field(
        default=None,
        max_length=16,
        examples=[None],
        description="pixel type of headerless raw files (with shape; files only, not JSON)",
    )

    @field_validator("shape")
    @classmethod
    def _shape(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_shape(value)
            except ImageError as error:
                raise ValueError(str(error)) from None
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_dtype(value)
            except ImageError as error:
                raise ValueError(str(error)) from None
        return value

    @model_validator(mode="after")
    def _shape_with_dtype(self) -> ScatteringOptions:
        if (self.shape is None) != (self.dtype is None):
            raise ValueError("shape and dtype describe a headerless raw file together: give both (e.g. shape=1043x981 "
                             "and dtype=int32) or neither")  # fmt: skip
        return self

    @property
    def raw(self) -> RawLayout | None:
        """The raw-file layout of ``shape`` and ``dtype`` (``None`` when not given)."""
        if self.shape is None or self.dtype is None:
            return None
        return RawLayout.parse(self.shape, self.dtype)

    @property
    def setup(self) -> Setup:
        """The request's setup values (``None`` where not given)."""
        return setup_of(self.model_dump(include={wire for wire, _, _ in WIRE_SETUP}), "request")


_ARRAY_2D = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}


class ScatteringSortRequest(ScatteringOptions):
    """A JSON body: ``image`` (one 2D array of counts, rows x cols) or ``images`` (a list of them)."""

    image: Any = Field(default=None, json_schema_extra={**_ARRAY_2D, "examples": [[[0, 3, 5], [2, 7, 1], [1, 4, 2]]]})
    images: list[Any] | None = Field(default=None, min_length=1, json_schema_extra={"items": _ARRAY_2D})
    mask: Any = Field(default=None, description="one 2D mask (nonzero = bad pixel) for every image",
                      json_schema_extra=_ARRAY_2D)  # fmt: skip
    masks: list[Any] | None = Field(default=None, description="one 2D mask (or null) per image")


# -- transport parsing -------------------------------------------------------------------------------------------


@dataclass
class Items:
    """The images of a request, decoded.

    Attributes
    ----------
    items : list of Frame or str
        A frame, or why the image (or its file) could not be read.
    labels : list of str
        Each item's name in messages and results (``source``).
    unsupported : list of bool
        Whether an item failed because its file was in no accepted format.
    """

    items: list[Frame | str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    unsupported: list[bool] = field(default_factory=list)

    def add_frames(self, frames: list[Frame]) -> None:
        self.items.extend(frames)
        self.labels.extend(frame.label for frame in frames)
        self.unsupported.extend(False for _ in frames)

    def add_error(self, label: str, error: ImageError) -> None:
        self.items.append(str(error))
        self.labels.append(label)
        self.unsupported.append(isinstance(error, UnsupportedFormat))


def options_from(values: dict[str, str], where: str) -> ScatteringOptions:
    """Options from query parameters or form fields (strings), with clear messages."""
    return request_options.options_from(ScatteringOptions, values, where)


def merge_options(body: ScatteringOptions, query: dict[str, str]) -> ScatteringOptions:
    """Body (JSON or form) options plus query options; the same option in both is refused."""
    return request_options.merge_options(body, query)


def decode_body(
    kind: str, body: bytes, budget: FrameBudget, filename: str | None = None, raw: RawLayout | None = None
) -> Items:
    """Every frame of a file sent as the body (any failure fails the request: it is the only file); ``raw``: the
    request's ``shape`` and ``dtype`` for headerless bytes."""
    items = Items()
    items.add_frames(read_frames(body, filename, budget, declared=kind, raw=raw))
    return items


def decode_multipart(
    files: list[tuple[str, bytes]],
    mask_files: list[tuple[str, bytes]],
    budget: FrameBudget,
    raw: RawLayout | None = None,
) -> Items:
    """Every frame of every file part, in order; a part that cannot be read becomes one item with its error.

    Parameters
    ----------
    files : list of (str, bytes)
        Image file parts ``(filename, bytes)``.
    mask_files : list of (str, bytes)
        At most one part ``mask``: one 2D mask (nonzero = bad) for every image of its shape.
    budget : FrameBudget
        Frames and pixels of the request.
    raw : RawLayout, optional
        The request's ``shape`` and ``dtype``, for parts (and the mask) that are headerless raw pixels.

    Raises
    ------
    TooManyFrames
        Over the budget (the whole request: 413).
    InvalidInput
        No image part, several masks, or a mask that cannot be read.
    """
    if not files:
        raise InvalidInput(f"the multipart body has no file part; send images as files ({ACCEPTED_FORMATS})")
    mask = _read_mask(mask_files, budget, raw)

    def read(part: tuple[str, bytes]) -> list[Frame] | ImageError:
        try:
            return read_frames(part[1], part[0], budget, raw=raw)
        except TooManyFrames:
            raise
        except ImageError as error:
            return error

    items = Items()
    for (name, _), frames in zip(files, thread_map(read, files), strict=True):  # files read on the encode threads
        if isinstance(frames, ImageError):
            items.add_error(name, frames)
        else:
            items.add_frames([_with_mask(frame, mask) for frame in frames])
    return items


def _read_mask(mask_files: list[tuple[str, bytes]], budget: FrameBudget, raw: RawLayout | None) -> np.ndarray | None:
    if not mask_files:
        return None
    if len(mask_files) > 1:
        raise InvalidInput(f"send at most one '{MASK_PART}' part (one 2D mask for every image); got {len(mask_files)}")
    name, data = mask_files[0]
    try:
        frames = read_frames(data, name, budget, raw=raw)
    except TooManyFrames:
        raise
    except ImageError as error:
        raise InvalidInput(f"the mask part: {error}") from None
    if len(frames) != 1:
        raise InvalidInput(f"the mask part {name!r} holds {len(frames)} frames; a mask is one 2D image")
    return frames[0].image


def _with_mask(frame: Frame, mask: np.ndarray | None) -> Frame:
    """The frame with ``mask`` or'ed into its own (a mask of another shape is left to the codec's message)."""
    if mask is None:
        return frame
    if frame.mask is not None and frame.mask.shape == mask.shape:
        return Frame(frame.image, frame.mask.astype(bool) | mask.astype(bool), frame.label)
    return Frame(frame.image, mask, frame.label)


def decode_json(request: ScatteringSortRequest, budget: FrameBudget) -> Items:
    """The images of a JSON body as arrays (malformed ones become per-item errors).

    Raises
    ------
    InvalidInput
        Neither or both of ``image`` and ``images``; both ``mask`` and ``masks``; ``masks`` of the wrong length.
    TooManyFrames
        More images than the budget allows.
    """
    if (request.image is None) == (request.images is None):
        raise InvalidInput(f"send either 'image' (one 2D array) or 'images' (a list of them), not "
                           f"{'both' if request.image is not None else 'neither'}; e.g. {SCATTERING_EXAMPLE}")  # fmt: skip
    values = [request.image] if request.image is not None else list(request.images or [])
    labels = ["image"] if request.image is not None else [f"images[{i}]" for i in range(len(values))]
    if request.mask is not None and request.masks is not None:
        raise InvalidInput("send either 'mask' (one for every image) or 'masks' (one per image), not both")
    if request.masks is not None and len(request.masks) != len(values):
        raise InvalidInput(f"'masks' has {len(request.masks)} entries for {len(values)} image(s); send one per image "
                           "(null for none)")  # fmt: skip
    if len(values) > budget.max_frames:
        raise TooManyFrames(f"too many images: at most {budget.max_frames} per request (got {len(values)}); split them")
    masks = request.masks if request.masks is not None else [request.mask] * len(values)
    items = Items()
    for value, mask_value, label in zip(values, masks, labels, strict=True):
        try:
            image = as_image_array(value, label)
            mask = None if mask_value is None else as_image_array(mask_value, f"the mask of {label}")
            check_shape(image.shape)
        except ImageError as error:
            items.add_error(label, error)
            continue
        budget.take(1, image.shape, label)
        items.add_frames([Frame(image, mask, label)])
    return items


def check_saliency(options: ScatteringOptions, count: int) -> None:
    """Refuse saliency PNGs for more than :data:`MAX_SALIENCY_IMAGES` images (422)."""
    if (options.saliency or options.saliency_label is not None) and count > MAX_SALIENCY_IMAGES:
        raise InvalidInput(f"saliency PNGs are drawn for at most {MAX_SALIENCY_IMAGES} images per request; got "
                           f"{count}: send fewer, or leave saliency off")  # fmt: skip


def failures(items: Items, results: list[dict[str, Any]]) -> MatserveError | None:
    """When no image could be used: 422 naming each (the first 10; one line if they agree), or 415 when no file
    was in a readable format. ``None`` when at least one image was sorted (the others carry their ``error``)."""
    failed = [(items.labels[i], r["error"]) for i, r in enumerate(results) if r.get("error")]
    if not results or len(failed) < len(results):
        return None
    messages = {error for _, error in failed}
    if len(failed) > 1 and len(messages) == 1:
        shown = f"all of {failed[0][0]} to {failed[-1][0]}: {failed[0][1]}"
    else:
        shown = "; ".join(f"{label}: {error}" for label, error in failed[:10])
        shown += f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
    message = f"no image of the request can be sorted ({len(failed)} of {len(results)} failed): {shown}"
    if all(items.unsupported):
        return UnsupportedMediaType(message)
    return InvalidInput(message)


def openapi_sort_body() -> dict[str, Any]:
    """OpenAPI request body and query parameters of ``POST /v1/scattering/sort``."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    multipart = {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        MASK_PART: {"type": "string", "format": "binary", "description": "optional 2D mask file, nonzero = bad"},
        **{k: {"type": "string"} for k in ScatteringOptions.model_fields}}}}  # fmt: skip
    json_body = {"schema": ScatteringSortRequest.model_json_schema(),
                 "example": {"image": [[0, 3, 5, 2], [2, 7, 1, 0], [1, 4, 2, 3]], "saliency": True}}  # fmt: skip
    content = {"application/json": json_body, "multipart/form-data": multipart}
    content.update({t: binary for t in SORT_MEDIA_TYPES if t not in content})
    descriptions = {
        "saliency": "true: add a Grad-CAM PNG (base64) per image (at most 64 images)",
        "saliency_label": "label whose map the PNG shows (technique, geometry or feature); default the technique",
        "version": "registry version of scattering_sorter",
        "distance_m": "sample-detector distance, m (overrides the file header)",
        "wavelength_angstrom": "X-ray wavelength, Angstrom (overrides the file header)",
        "pixel_size_um": "detector pixel size, micrometres (overrides the file header)",
        "shape": "rows x cols of a headerless raw file's frames, e.g. 1043x981 (with dtype)",
        "dtype": f"pixel type of a headerless raw file: {', '.join(RAW_DTYPES)} ('>' prefix: big-endian; with shape)",
    }
    parameters = [{"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
                  for name, text in descriptions.items()]  # fmt: skip
    return {"requestBody": {"required": True, "content": content}, "parameters": parameters}


# -- routes ------------------------------------------------------------------------------------------------------


def router(settings: Settings) -> APIRouter:
    """The routes of the scattering sorter, with the limits of ``settings``."""
    routes = APIRouter()

    @routes.post(
        SORT_PATH,
        response_model=ScatteringSortResponse,
        responses=ERROR_RESPONSES,
        summary="Technique, geometry and features of 2D X-ray scattering images, optionally with a Grad-CAM PNG",
        openapi_extra=openapi_sort_body(),
    )
    async def scattering_sort(http_request: Request, context: Context) -> Response:
        """Sort detector images: a TIFF (incl. MarCCD), CBF, EDF, HDF5/NeXus, NPY or PNG file as the body (every frame
        an image; gzip/bzip2-compressed too; headerless raw pixels with ``shape`` and ``dtype``, or of a known
        detector's frame size), multipart file parts (plus an optional ``mask`` part), or JSON ``image``/``images``
        arrays.

        One result per frame, in order, named by ``source``; an image that cannot be used (constant, too few valid
        pixels, wrong size) gets an ``error`` while the others are answered. 422 when no image can be used, 415 for
        files in no accepted format, 413 over the body, frame or pixel limits.
        """
        kind = media_type(http_request)
        query = dict(http_request.query_params)
        budget = FrameBudget(settings.max_scattering_frames, settings.max_scattering_pixels)
        model = context.typed_model("scattering_sorter", ScatteringSorterModel)
        if kind == "application/json":
            request = await parse_body(http_request, ScatteringSortRequest)
            options = merge_options(request, query)
            model.check_options(options.version, options.saliency_label)
            if options.raw is not None:
                raise InvalidInput("shape and dtype describe headerless raw files; a JSON body carries arrays, whose "
                                   "shape and type are their own: leave them out")  # fmt: skip
            items = await anyio.to_thread.run_sync(decode_json, request, budget)
            del request  # the nested lists: the arrays are in items now
        elif kind == "multipart/form-data":
            form = await read_form(http_request, settings.max_scattering_frames + 1)
            options = merge_options(options_from(form.fields, "form field"), query)
            model.check_options(options.version, options.saliency_label)
            files, masks = form.named(without=MASK_PART), form.named(only=MASK_PART)
            del form
            items = await anyio.to_thread.run_sync(decode_multipart, files, masks, budget, options.raw)
            del files, masks
        else:
            options = options_from(query, "query parameter")
            model.check_options(options.version, options.saliency_label)
            body = await http_request.body()
            name = body_filename(http_request)
            items = await anyio.to_thread.run_sync(decode_body, kind, body, budget, name, options.raw)
            del body
        check_saliency(options, len(items.items))
        run = functools.partial(model.sort, items.items, version=options.version, saliency=options.saliency,
                                saliency_label=options.saliency_label, setup=options.setup)  # fmt: skip
        prediction = await anyio.to_thread.run_sync(run)
        del run
        items.items.clear()  # the decoded frames (labels stay for the answer)
        await anyio.to_thread.run_sync(release_memory)
        failed = failures(items, prediction.results)
        if failed is not None:
            raise failed
        results = [{"source": label, **result} for label, result in zip(items.labels, prediction.results, strict=True)]
        return answer(ScatteringSortResponse, {"model": prediction.model, "version": prediction.version,
                                               "results": results})  # fmt: skip

    return routes
