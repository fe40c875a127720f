"""Scattering-sorter inputs for the SDK: files sent as they are, arrays as ``.npy``, folders listed.

Detector files (TIFF incl. MarCCD ``.mccd``, CBF, EDF, HDF5/NeXus, NPY, PNG; gzip/bzip2-compressed ones; headerless
``.raw``/``.bin`` pixels) are uploaded byte for byte (the server decodes them and recognises the format from the
bytes), so they need nothing beyond httpx; numpy is imported only when an array
is given (``pip install 'matserve-client[ebsd]'``).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SCATTERING_SUFFIXES", "ScatteringUpload", "scattering_files", "scattering_upload"]

SCATTERING_SUFFIXES: dict[str, str] = {
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".png": "image/png",
    ".npy": "application/x-npy",
    ".h5": "application/x-hdf5",
    ".hdf5": "application/x-hdf5",
    ".hdf": "application/x-hdf5",
    ".nxs": "application/x-hdf5",
    ".nx5": "application/x-hdf5",
    ".cbf": "application/octet-stream",
    ".edf": "application/octet-stream",
    ".mccd": "image/tiff",
    ".gz": "application/gzip",
    ".bz2": "application/x-bzip2",
    ".raw": "application/octet-stream",
    ".bin": "application/octet-stream",
}
"""File suffixes the scattering sorter reads, with the content type they are sent with."""


@dataclass(frozen=True)
class ScatteringUpload:
    """One request body.

    Attributes
    ----------
    data : bytes
        The file's bytes, or an array as ``.npy``.
    content_type : str
        Sent as ``Content-Type``.
    name : str or None
        The path the bytes came from (results' ``source`` names it), ``None`` for arrays and bytes.
    """

    data: bytes
    content_type: str
    name: str | None


def scattering_upload(path_or_array: Any) -> ScatteringUpload:
    """The request body for a path (sent as it is), ``bytes`` (sent as ``application/octet-stream``) or a 2D array
    (sent as ``.npy``).

    Raises
    ------
    FileNotFoundError
        A path that is not a file.
    ValueError
        An array that is not 2D (send stacks as multi-frame files, or frame by frame).
    TypeError
        Anything else.
    """
    if isinstance(path_or_array, str | os.PathLike):
        path = Path(path_or_array)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        return ScatteringUpload(path.read_bytes(), SCATTERING_SUFFIXES.get(path.suffix.lower(),
                                                                           "application/octet-stream"), str(path))  # fmt: skip
    if isinstance(path_or_array, bytes | bytearray | memoryview):
        return ScatteringUpload(bytes(path_or_array), "application/octet-stream", None)
    if hasattr(path_or_array, "__array_interface__") or isinstance(path_or_array, list | tuple):
        from .ebsd_files import _numpy, encode_npy

        array = _numpy().asarray(path_or_array)
        if array.dtype == object or array.dtype.kind not in "uifb":
            raise TypeError(f"the image is not a numeric array (dtype {array.dtype})")
        if array.ndim != 2:
            raise ValueError(f"an image is a 2D array (rows x cols); got shape {list(array.shape)}: send stacks as "
                             "multi-frame files (TIFF, EDF, HDF5) or one 2D array per call")  # fmt: skip
        return ScatteringUpload(encode_npy(array), "application/x-npy", None)
    raise TypeError(f"expected a file path, bytes or a 2D numpy array; got {type(path_or_array).__name__}")


def scattering_files(folder: str | os.PathLike[str], pattern: str = "*", recursive: bool = False) -> list[Path]:
    """The files of ``folder`` (and its subfolders when ``recursive``) that match ``pattern`` (a glob on the name)
    and have a :data:`SCATTERING_SUFFIXES` suffix, sorted by path.

    Raises
    ------
    NotADirectoryError
        ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    candidates = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in SCATTERING_SUFFIXES
                  and fnmatch.fnmatch(p.name, pattern))  # fmt: skip
