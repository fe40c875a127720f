"""NPY uploads read from their header first: shape and dtype known before anything is allocated.

Both the EBSD and the scattering codecs take ``.npy`` bodies. :func:`read_header` parses the header alone (numpy
headers are at most a few kB), so that callers check the shape against their budgets; :func:`array_view` then
checks that the body holds the bytes the header announces and returns the array as a view of the body (no copy).
Errors are :class:`NpyError` with a message that names the upload; callers turn them into their own error types.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from tokenize import TokenError

import numpy as np

HEAD_BYTES = 16 + 2**16
"""Bytes read for the header: numpy writes headers far shorter, and refuses to read longer ones by default."""


class NpyError(ValueError):
    """An NPY body whose header is broken, or that holds fewer bytes than its header announces."""


@dataclass(frozen=True)
class NpyHeader:
    """What an NPY header declares.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype
    fortran_order : bool
    offset : int
        Where the data starts, bytes from the start of the file.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def data_bytes(self) -> int:
        """Bytes of data the header announces."""
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(data: bytes | bytearray, what: str) -> NpyHeader:
    """The header of an ``.npy`` body (nothing else is read); :class:`NpyError` naming ``what`` if it is broken."""
    buffer = io.BytesIO(bytes(data[:HEAD_BYTES]))
    try:
        major, _ = np.lib.format.read_magic(buffer)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(buffer)
        return NpyHeader(tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran_order), buffer.tell())
    except (ValueError, SyntaxError, TokenError, TypeError) as error:  # numpy parses the header with the tokenizer
        raise NpyError(f"{what} has a broken NPY header ({type(error).__name__}: {error})") from None


def array_view(data: bytes | bytearray, header: NpyHeader, what: str) -> np.ndarray:
    """The array of ``data`` as a view of it (read-only for ``bytes``), once it is known to hold enough bytes."""
    available = len(data) - header.offset
    if available < header.data_bytes:
        raise NpyError(f"{what} is truncated: its NPY header announces {header.data_bytes} bytes of data, the body "
                       f"holds {available}; is the upload complete?")  # fmt: skip
    flat = np.frombuffer(data, dtype=header.dtype, count=math.prod(header.shape), offset=header.offset)
    return flat.reshape(header.shape[::-1]).transpose() if header.fortran_order else flat.reshape(header.shape)
