"""Headerless raw detector images: pixels only, described by the request (``shape``, ``dtype``) or by their size.

A raw file is read when its bytes are in no other format :mod:`matserve.codecs.detector_files` recognises:

* with the request's ``shape`` (``rows x cols``) and ``dtype`` (:data:`RAW_DTYPES`, little-endian unless
  prefixed ``>`` or suffixed ``be``): the byte count must be a whole number ``k >= 1`` of such frames (``k``
  frames, in order);
* without them, when the byte count is exactly one frame of a known detector in a dtype it writes
  (:data:`matserve.codecs.detector_layouts.LAYOUTS`: Pilatus int32, Eiger uint16/uint32, MarCCD/Rayonix
  2048 x 2048 and 4096 x 4096 uint16); several matches are refused as ambiguous (send ``shape`` and ``dtype``).

Sizes are checked (:func:`matserve.codecs.scattering.check_shape`, the request's frame budget) before the pixels
are copied out of the upload; nothing is read beyond it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from matserve.codecs.detector_layouts import LAYOUTS
from matserve.codecs.frame_budget import FrameBudget
from matserve.codecs.scattering import ImageError, check_shape

RAW_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")
"""dtypes accepted for raw files (also as numpy codes ``u2``, ``<i4``, ``>f4``...)."""
_CODES = {np.dtype(name).str[1:]: name for name in RAW_DTYPES}
_SHAPE = re.compile(r"^\s*\(?\s*(\d{1,9})\s*[x×,*]\s*(\d{1,9})\s*\)?\s*$", re.IGNORECASE)
ACCEPTED_RAW = (
    "headerless raw pixels with the request's shape (rows x cols) and dtype (" + ", ".join(RAW_DTYPES) + "; "
    "'>' or a 'be' suffix for big-endian), or of the exact byte size of a known detector frame (Pilatus int32, "
    "Eiger uint16/uint32, MarCCD/Rayonix 2048/4096 uint16)"
)
"""What raw input is accepted, for messages."""


class RawLayoutError(ImageError):
    """A raw ``shape``/``dtype`` option that cannot be used (HTTP 422)."""


@dataclass(frozen=True)
class RawLayout:
    """How to read a headerless raw file.

    Attributes
    ----------
    shape : tuple of int
        ``(rows, cols)`` of one frame, pixels.
    dtype : numpy.dtype
        The pixel type with its byte order.
    """

    shape: tuple[int, int]
    dtype: np.dtype

    @classmethod
    def parse(cls, shape: str | tuple[int, int] | list[int], dtype: str) -> RawLayout:
        """From option values: ``shape`` ``"1043x981"`` / ``"1043,981"`` / ``(1043, 981)``, ``dtype`` ``"int32"``.

        Raises
        ------
        RawLayoutError
            A shape that is not two whole numbers within the accepted detector sizes, or an unknown dtype.
        """
        return cls(parse_shape(shape), parse_dtype(dtype))

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame."""
        return math.prod(self.shape) * self.dtype.itemsize

    def describe(self) -> str:
        """``"1043 x 981 int32"`` (``">int32"`` for big-endian)."""
        order = ">" if self.dtype.byteorder == ">" else ""
        return f"{self.shape[0]} x {self.shape[1]} {order}{self.dtype.name}"


def parse_shape(shape: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``(rows, cols)`` of a raw ``shape`` option (see :meth:`RawLayout.parse`)."""
    if isinstance(shape, str):
        match = _SHAPE.match(shape)
        if match is None:
            raise RawLayoutError(f"shape {shape!r} is not 'rows x cols' (e.g. '1043x981' or '1043,981')")
        rows, cols = int(match.group(1)), int(match.group(2))
    else:
        values = list(shape)
        if len(values) != 2 or not all(isinstance(v, int | np.integer) for v in values):
            raise RawLayoutError(f"shape {shape!r} is not two whole numbers (rows, cols)")
        rows, cols = int(values[0]), int(values[1])
    try:
        check_shape((rows, cols))
    except ImageError as error:
        raise RawLayoutError(f"shape {rows} x {cols}: {error}") from None
    return rows, cols


def parse_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of a raw ``dtype`` option (see :data:`RAW_DTYPES`)."""
    text = str(dtype).strip().lower()
    order = "<"
    if text[:1] in "<>=|" and text:
        order, text = (">" if text[0] == ">" else "<"), text[1:]
    for suffix, suffix_order in (("_be", ">"), ("be", ">"), ("_le", "<"), ("le", "<")):
        if text.endswith(suffix) and text[: -len(suffix)] in RAW_DTYPES:
            order, text = suffix_order, text[: -len(suffix)]
            break
    name = _CODES.get(text, text)
    if name not in RAW_DTYPES:
        raise RawLayoutError(f"dtype {dtype!r} is not accepted for raw files; accepted: {', '.join(RAW_DTYPES)} "
                             "(little-endian; '>' prefix or 'be' suffix for big-endian, e.g. '>uint16')")  # fmt: skip
    return np.dtype(name).newbyteorder(order)


def known_layouts(size: int) -> list[RawLayout]:
    """The known detector frames (shape, dtype) exactly ``size`` bytes long."""
    found = []
    for layout in LAYOUTS:
        for dtype in layout.dtypes:
            raw = RawLayout(layout.shape, np.dtype(dtype).newbyteorder("<"))
            if raw.frame_bytes == size and raw not in found:
                found.append(raw)
    return found


def read_raw(
    data: bytes, name: str, budget: FrameBudget, raw: RawLayout | None
) -> tuple[list[np.ndarray], RawLayout] | None:
    """The frames of a headerless raw file, or ``None`` when it is not one (no options, no known size).

    Parameters
    ----------
    data : bytes
        The upload.
    name : str
        Names the file in messages.
    budget : FrameBudget
        Frames and pixels of the request (taken before the pixels are copied).
    raw : RawLayout or None
        The request's ``shape`` and ``dtype``; ``None``: recognise a known detector's frame size.

    Returns
    -------
    (list of numpy.ndarray, RawLayout) or None
        The frames (native byte order, writable) and the layout they were read with.

    Raises
    ------
    ImageError
        A byte count that is not a whole number of frames of ``raw``, or that fits several known detectors.
    """
    if raw is None:
        candidates = known_layouts(len(data))
        if not candidates:
            return None
        if len(candidates) > 1:
            fits = "; ".join(c.describe() for c in candidates)
            raise ImageError(f"{name}: {len(data)} bytes of headerless data fit several detector frames ({fits}); "
                             "send shape and dtype to say which")  # fmt: skip
        raw = candidates[0]
    if not data or len(data) % raw.frame_bytes:
        frames = len(data) / raw.frame_bytes
        raise ImageError(f"{name} has {len(data)} bytes, not a whole number of {raw.describe()} frames "
                         f"({raw.frame_bytes} bytes each; {frames:.3g} frames); check shape and dtype, or whether the "
                         "file has a header (accepted: " + ACCEPTED_RAW + ")")  # fmt: skip
    count = len(data) // raw.frame_bytes
    budget.take(count, raw.shape, name)
    stack = np.frombuffer(data, dtype=raw.dtype, count=count * math.prod(raw.shape)).reshape(count, *raw.shape)
    native = raw.dtype.newbyteorder("=")
    return [np.array(frame, dtype=native) for frame in stack], raw
