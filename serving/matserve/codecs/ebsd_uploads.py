"""EBSD uploads -> patterns, within the request's decoded-pixel budget (checked from headers before decoding).

:func:`iter_patterns` reads PNG (8/16-bit grey, palette, RGB(A) -> grey), TIFF (every page a pattern) and NPY
(2-D: one pattern, 3-D: ``(n, rows, cols)``, 4-D: a scan read row by row) bytes; the format is recognised from
the bytes. Before a pixel is decoded, the header's claim is checked against :class:`PixelBudget` (patterns and
decoded pixels per request, ``MATSERVE_MAX_EBSD_PIXELS``) and the pattern side (:data:`MAX_PATTERN_SIDE`): the
PNG's IHDR size, every TIFF page's shape (all pages counted before the first is decoded), the NPY header's shape
and dtype (and whether the body holds the bytes it announces). NPY patterns are views of the body (no copy).

:func:`reduce_stack` and :func:`reduce_scan` check each pattern and area-resample it to the model's 60x60 as soon
as it is decoded, so a request holds full-size pixels one TIFF page (or one resampling chunk) at a time; the
result is what :func:`~matserve.codecs.ebsd.encode_patterns` would compute from the full-size patterns.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

from matserve.codecs.ebsd import (
    MAX_PATTERN_SIDE,
    PATTERN_SIDE_PX,
    RESAMPLE_CHUNK_PIXELS,
    SIZE_RULE,
    EbsdInputError,
    EbsdTooLarge,
    pattern_errors,
    pattern_shape_error,
    resample_patterns,
)
from matserve.codecs.npy import NpyError, array_view, read_header

ACCEPTED_FORMATS = (
    "PNG (8/16-bit grey or RGB), TIFF (8/16-bit or float, grey or RGB, one pattern per page), "
    "NPY (2-D: one pattern, 3-D: (n, rows, cols) patterns, 4-D: (scan rows, scan cols, rows, cols))"
)
"""What the EBSD endpoints read, for error messages."""
DEFAULT_MAX_PIXELS = 2**26
"""Default decoded pixels per request (67 M: 64 patterns of 1024x1024 or 18,641 of 60x60; 256 MiB as float32)."""
PIXELS_SETTING = "MATSERVE_MAX_EBSD_PIXELS"
"""The server setting of the pixel budget, named in its 413 message."""
INDEX_ADVICE = "send fewer or smaller patterns per request (the Python SDK splits them)"
SCAN_ADVICE = "send the scan in row blocks (the Python SDK's index_ebsd_scan does)"

_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"II+\x00": "tiff",  # BigTIFF
    b"MM\x00+": "tiff",
    b"\x93NUMPY": "npy",
    b"\x89HDF\r\n\x1a\n": "hdf5",
}


class PixelBudget:
    """Patterns and decoded pixels one EBSD request may still take; reserved from headers before decoding.

    Parameters
    ----------
    max_pixels : int
        Most decoded pixels per request, summed over every pattern (``MATSERVE_MAX_EBSD_PIXELS``).
    max_patterns : int, optional
        Most patterns per request; ``None``: only the pixels are bounded.
    advice : str
        How to split a request with too many pixels (ends the 413 message).
    count_advice : str, optional
        How to split a request with too many patterns; default ``advice``.
    """

    def __init__(
        self,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_patterns: int | None = None,
        advice: str = INDEX_ADVICE,
        count_advice: str | None = None,
    ) -> None:
        self.max_pixels = max_pixels
        self.max_patterns = max_patterns
        self.advice = advice
        self.count_advice = count_advice or advice
        self.patterns = 0
        self.pixels = 0

    def take(self, count: int, rows: int, cols: int, what: str, at_least: bool = False) -> None:
        """Reserve ``count`` patterns of ``rows`` x ``cols`` pixels.

        Parameters
        ----------
        count, rows, cols : int
            Patterns and their size, pixels, as the header declares them.
        what : str
            Names the upload in the message.
        at_least : bool
            The upload may hold more (TIFF pages counted so far): the message says "at least".

        Raises
        ------
        EbsdTooLarge
            Over either limit; the message states the limit, its setting and how to split.
        """
        patterns = self.patterns + count
        more = "at least " if at_least else ""
        if self.max_patterns is not None and patterns > self.max_patterns:
            raise EbsdTooLarge(f"too many patterns: at most {self.max_patterns} per request (got {more}{patterns} so "
                               f"far, in {what}); {self.count_advice}")  # fmt: skip
        pixels = self.pixels + count * rows * cols
        if pixels > self.max_pixels:
            raise EbsdTooLarge(
                f"{what}: too many pixels: at most {self.max_pixels} decoded pixels per request ({PIXELS_SETTING}); "
                f"this request would have {more}{pixels} ({more}{patterns} pattern(s), these of {rows}x{cols} px); "
                f"{self.advice}"
            )
        self.patterns, self.pixels = patterns, pixels


def sniff_format(data: bytes) -> str | None:
    """``"png"``, ``"tiff"``, ``"npy"`` or ``"hdf5"`` from the first bytes, else ``None``."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def _describe_bytes(data: bytes) -> str:
    if not data:
        return "the body is empty"
    return f"it starts with {data[:16]!r}"


def _check_side(rows: int, cols: int, what: str) -> None:
    if rows > MAX_PATTERN_SIDE or cols > MAX_PATTERN_SIDE:
        raise EbsdTooLarge(f"{what} is {rows}x{cols} px, over the limit of {MAX_PATTERN_SIDE}x{MAX_PATTERN_SIDE}; "
                           + SIZE_RULE)  # fmt: skip


def _grey(image: np.ndarray, what: str) -> np.ndarray:
    """2-D grey from 2-D, or from RGB(A) ``(rows, cols, 3|4)`` by ITU-R 601 luma (float32)."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        rgb = image[..., :3].astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    raise EbsdInputError(f"{what} has shape {list(image.shape)}; expected a grey or RGB image")


def decode_png(data: bytes, what: str = "the PNG image", budget: PixelBudget | None = None) -> np.ndarray:
    """One pattern ``(1, rows, cols)`` from PNG bytes (8/16-bit grey, palette, RGB(A) -> grey).

    The size the IHDR chunk declares is checked (side, budget) before Pillow decodes anything.
    """
    from PIL import Image, UnidentifiedImageError

    budget = budget or PixelBudget()
    declared = len(data) >= 24 and data[12:16] == b"IHDR"  # the first chunk, as the PNG standard requires
    if declared:
        cols, rows = struct.unpack(">II", data[16:24])
        _check_side(rows, cols, what)
        budget.take(1, rows, cols, what)
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only; pixels are decoded by np.asarray
            cols, rows = image.size
            _check_side(rows, cols, what)
            if not declared:
                budget.take(1, rows, cols, what)
            if image.mode in ("P", "PA", "LA", "1", "CMYK", "YCbCr"):
                image = image.convert("RGB" if image.mode in ("P", "PA", "CMYK", "YCbCr") else "L")
            array = np.asarray(image)
    except Image.DecompressionBombError:  # a size Pillow refuses (no IHDR first): far over any pattern limit
        raise EbsdTooLarge(f"{what} is a PNG of more than {2 * Image.MAX_IMAGE_PIXELS} pixels, over the limit of "
                           f"{MAX_PATTERN_SIDE}x{MAX_PATTERN_SIDE} px per pattern and of {budget.max_pixels} decoded "
                           f"pixels per request ({PIXELS_SETTING})") from None  # fmt: skip
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise EbsdInputError(f"{what} cannot be decoded as PNG ({error})") from None
    return _grey(array, what)[None]


def iter_tiff(data: bytes, what: str = "the TIFF image", budget: PixelBudget | None = None) -> Iterator[np.ndarray]:
    """Every page of a TIFF as a pattern ``(1, rows, cols)`` (grey; RGB -> grey), decoded one page at a time.

    Every page is counted and its shape checked (side, budget) before the first page is decoded.
    """
    import tifffile

    budget = budget or PixelBudget()
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            pages: list[tuple[Any, bool, str]] = []  # (page, planar RGB, label)
            for page in tiff.pages:
                shape = page.shape
                where = f"{what}, page {len(pages)}"
                if len(shape) < 2:
                    raise EbsdInputError(f"{where} has shape {list(shape)}; expected a 2-D image")
                planar = len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4)  # RGB in planes
                rows, cols = (int(shape[1]), int(shape[2])) if planar else (int(shape[0]), int(shape[1]))
                _check_side(rows, cols, where)
                budget.take(1, rows, cols, what, at_least=True)
                pages.append((page, planar, where))
            if not pages:
                raise EbsdInputError(f"{what} has no pages")
            for page, planar, where in pages:
                where = what if len(pages) == 1 else where
                image = np.asarray(page.asarray())
                yield _grey(np.moveaxis(image, 0, -1) if planar else image, where)[None]
    except EbsdInputError:
        raise
    except Exception as error:  # tifffile raises many types on corrupt files
        raise EbsdInputError(f"{what} cannot be decoded as TIFF ({type(error).__name__}: {error})") from None


def decode_npy(data: bytes | bytearray, what: str = "the NPY array", budget: PixelBudget | None = None) -> np.ndarray:
    """The array of an ``.npy`` file, a view of ``data`` (numeric dtypes, 2 to 4 dimensions).

    The header is checked before anything is allocated: dtype, dimensions, pattern side, the budget (the last two
    axes are a pattern), and that the body holds the bytes the header announces.
    """
    budget = budget or PixelBudget()
    try:
        header = read_header(data, what)
    except NpyError as error:
        raise EbsdInputError(str(error)) from None
    shape, dtype = header.shape, header.dtype
    if dtype.kind not in "uif":
        raise EbsdInputError(f"{what} has dtype {dtype}; send integer or floating-point intensities")
    if not 2 <= len(shape) <= 4:
        raise EbsdInputError(
            f"{what} has {len(shape)} dimensions (shape {list(shape)}); send 2-D (one pattern), 3-D "
            "(n, rows, cols) or 4-D (scan rows, scan cols, rows, cols)"
        )
    rows, cols = shape[-2], shape[-1]
    _check_side(rows, cols, f"{what} (patterns)")
    budget.take(math.prod(shape[:-2]), rows, cols, what)
    try:
        return array_view(data, header, what)
    except NpyError as error:
        raise EbsdInputError(str(error)) from None


def as_pattern_stack(array: np.ndarray, what: str) -> np.ndarray:
    """2-D (one pattern), 3-D (n patterns) or 4-D (a scan, flattened row by row) -> ``(n, rows, cols)``."""
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        return array
    if array.ndim == 4:
        return array.reshape(-1, *array.shape[2:])
    raise EbsdInputError(
        f"{what} has {array.ndim} dimensions (shape {list(array.shape)}); send 2-D (one pattern), 3-D "
        "(n, rows, cols) or 4-D (scan rows, scan cols, rows, cols)"
    )


def iter_patterns(
    data: bytes | bytearray, declared: str | None = None, what: str = "the body", budget: PixelBudget | None = None
) -> Iterator[np.ndarray]:
    """Patterns of an upload as ``(n, rows, cols)`` stacks: one per PNG or NPY, one per TIFF page (decoded lazily).

    Parameters
    ----------
    data : bytes or bytearray
        PNG, TIFF or NPY bytes; the format is recognised from them (``declared`` is only used in messages).
    declared : str, optional
        The declared content type.
    what : str
        How messages name this upload.
    budget : PixelBudget, optional
        What the request may still take (shared by the files of a multipart request); default
        :data:`DEFAULT_MAX_PIXELS` for this upload alone.

    Raises
    ------
    EbsdInputError
        Bytes that are none of the accepted formats or cannot be decoded (the message names the accepted
        formats); :class:`~matserve.codecs.ebsd.EbsdTooLarge` over :data:`MAX_PATTERN_SIDE` or the budget, raised
        before the first stack is produced.
    """
    budget = budget or PixelBudget()
    kind = sniff_format(data)
    if kind == "png":
        yield decode_png(data, what, budget)
    elif kind == "tiff":
        yield from iter_tiff(data, what, budget)
    elif kind == "npy":
        yield as_pattern_stack(decode_npy(data, what, budget), what)
    else:
        declared_text = f" (declared {declared})" if declared else ""
        if kind == "hdf5":
            raise EbsdInputError(f"{what} is an HDF5 file{declared_text}; send HDF5 scans to POST /v1/ebsd/scan")
        raise EbsdInputError(f"{what}{declared_text} is not a PNG, TIFF or NPY file ({_describe_bytes(data)}); "
                             f"accepted: {ACCEPTED_FORMATS}")  # fmt: skip


def decode_patterns(
    data: bytes, declared: str | None = None, what: str = "the body", budget: PixelBudget | None = None
) -> list[np.ndarray]:
    """Every stack of :func:`iter_patterns` (full-size patterns: for tests and small uploads)."""
    return list(iter_patterns(data, declared, what, budget))


def reduce_stack(stack: np.ndarray) -> list[np.ndarray | str]:
    """Check each pattern of ``(n, rows, cols)`` and area-resample it to 60x60 float32, a chunk at a time.

    Returns
    -------
    list of numpy.ndarray or str
        Per pattern: the resampled ``(60, 60)`` float32 pattern, or why it is refused (wrong shape or dtype,
        NaN/inf, constant: the message :func:`~matserve.codecs.ebsd.encode_patterns` gives for the full-size one).
    """
    if len(stack) == 0:
        return []
    shape_error = pattern_shape_error(stack[0])
    if shape_error is not None:
        return [shape_error] * len(stack)
    reduced: list[np.ndarray | str] = []
    per = max(1, RESAMPLE_CHUNK_PIXELS // (stack.shape[-1] * stack.shape[-2]))
    for start in range(0, len(stack), per):
        chunk = stack[start : start + per]
        resampled = resample_patterns(chunk)
        for error, pattern in zip(pattern_errors(chunk), resampled, strict=True):
            reduced.append(pattern if error is None else error)
    return reduced


def reduce_scan(scan: np.ndarray) -> np.ndarray:
    """A scan ``(rows, cols, s, s)`` area-resampled to ``(rows, cols, 60, 60)`` float32 when that takes less memory.

    A constant pattern stays exactly constant (its value) and NaN/inf stay non-finite, so the model refuses them
    with the messages it gives for the full-size scan. A scan of another shape, or whose patterns are no larger
    than the resampled ones, is returned as it is.
    """
    rows, cols = int(scan.shape[0]), int(scan.shape[1])
    if rows * cols == 0 or pattern_shape_error(scan[0, 0]) is not None:
        return scan
    side = int(scan.shape[-1])
    if side * side * scan.dtype.itemsize <= PATTERN_SIDE_PX * PATTERN_SIDE_PX * 4:
        return scan
    flat = scan.reshape(rows * cols, side, side)
    out = np.empty((rows * cols, PATTERN_SIDE_PX, PATTERN_SIDE_PX), dtype=np.float32)
    per = max(1, RESAMPLE_CHUNK_PIXELS // (side * side))
    for start in range(0, len(flat), per):
        chunk = flat[start : start + per]
        out[start : start + len(chunk)] = resample_patterns(chunk)
        values = chunk.reshape(len(chunk), -1)
        low, high = values.min(axis=1), values.max(axis=1)
        for k in np.flatnonzero(low == high):
            out[start + k] = low[k]
    return out.reshape(rows, cols, PATTERN_SIDE_PX, PATTERN_SIDE_PX)
