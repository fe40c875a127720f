"""EBSD inputs for the SDK: arrays and files cut into requests, and a tiny PNG writer (standard library only).

numpy is imported only when arrays or ``.npy`` files are given (``pip install 'matserve-client[ebsd]'``); PNG and
TIFF files are sent as they are (the server decodes them), so they need nothing beyond httpx.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EBSD_MAX_PIXELS", "EbsdChunk", "ebsd_chunks", "encode_npy", "load_scan", "png_rgb", "scan_kind"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
HDF5_SUFFIXES = (".h5", ".hdf5", ".h5ebsd", ".hdf")
MAX_MULTIPART_BYTES = 32 * 2**20
"""Image files are grouped into multipart requests of at most this many bytes (one larger file goes alone)."""
EBSD_MAX_PIXELS = 2**26
"""Decoded pixels per EBSD request the server accepts by default (``MATSERVE_MAX_EBSD_PIXELS``): array requests
and scan row blocks are cut to at most this many (or one pattern / one row, whatever its size)."""


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as error:  # pragma: no cover - numpy is everywhere arrays are
        raise ImportError("arrays and .npy files need numpy: pip install 'matserve-client[ebsd]'") from error
    return numpy


@dataclass
class EbsdChunk:
    """One request's worth of patterns.

    Attributes
    ----------
    array : numpy.ndarray or None
        ``(k, rows, cols)`` patterns sent as an ``.npy`` body, or ``None`` for a multipart request of files.
    files : list of Path
        PNG/TIFF files of a multipart request (each may hold several patterns: TIFF pages).
    sources : list of str or None
        For array chunks: the source of each pattern (``path[k]`` for ``.npy`` files, ``None`` for arrays).
    """

    array: Any = None
    files: list[Path] = field(default_factory=list)
    sources: list[str | None] = field(default_factory=list)

    @property
    def count(self) -> int | None:
        """Patterns in the chunk (``None`` for files: TIFF pages are counted by the server)."""
        return None if self.array is None else len(self.array)


def _as_stack(array: Any, what: str) -> Any:
    np = _numpy()
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind not in "uifb":
        raise TypeError(f"{what} is not a numeric array (dtype {array.dtype})")
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        return array
    if array.ndim == 4:
        return array.reshape(-1, *array.shape[2:])
    raise ValueError(f"{what} has shape {list(array.shape)}; send 2-D (one pattern), 3-D (n, rows, cols) or 4-D "
                     "(scan rows, scan cols, rows, cols) arrays")  # fmt: skip


def _units(patterns: Any) -> list[tuple[str, Any, str | None]]:
    """``("array", stack, source)`` and ``("file", path, None)`` units, in the caller's order."""
    if isinstance(patterns, str | os.PathLike) or hasattr(patterns, "__array_interface__"):
        items: Sequence[Any] = [patterns]
    elif isinstance(patterns, Sequence) and patterns and _is_number_grid(patterns):
        items = [patterns]  # one pattern as nested lists
    else:
        items = list(patterns)
    if not items:
        raise ValueError("no patterns given")
    units: list[tuple[str, Any, str | None]] = []
    for index, item in enumerate(items):
        if isinstance(item, str | os.PathLike):
            path = Path(item)
            suffix = path.suffix.lower()
            if suffix in NPY_SUFFIXES:
                units.append(("array", _as_stack(_numpy().load(path, mmap_mode="r"), str(path)), str(path)))
            elif suffix in IMAGE_SUFFIXES:
                if not path.is_file():
                    raise FileNotFoundError(f"no such file: {path}")
                units.append(("file", path, None))
            elif suffix in HDF5_SUFFIXES:
                raise ValueError(f"{path} is an HDF5 scan: use index_ebsd_scan() for scans")
            else:
                raise ValueError(f"{path}: unknown pattern file type; accepted: .png, .tif, .tiff, .npy")
        else:
            units.append(("array", _as_stack(item, f"pattern {index}"), None))
    return units


def _is_number_grid(value: Sequence[Any]) -> bool:
    """A 2-D nested list of numbers (one pattern), as opposed to a list of patterns."""
    first = value[0]
    return isinstance(first, Sequence) and not isinstance(first, str) and bool(first) and isinstance(
        first[0], int | float)  # fmt: skip


def ebsd_chunks(patterns: Any, chunk_size: int, max_pixels: int = EBSD_MAX_PIXELS) -> Iterator[EbsdChunk]:
    """Cut the caller's patterns into requests of at most ``chunk_size`` patterns (arrays) or files.

    Consecutive arrays of the same pattern shape share requests of at most ``max_pixels`` pixels (the server's
    pixel budget; at least one pattern); PNG/TIFF files go in multipart requests of at most ``chunk_size`` files
    and :data:`MAX_MULTIPART_BYTES`.
    """
    run: list[tuple[Any, str | None]] = []  # consecutive arrays of one pattern shape: (stack, source)
    files: list[Path] = []
    files_bytes = 0

    def flush_run() -> Iterator[EbsdChunk]:
        parts: list[Any] = []
        sources: list[str | None] = []
        size = min(chunk_size, max(1, max_pixels // max(1, run[0][0].shape[1] * run[0][0].shape[2]))) if run else 1
        for stack, source in run:
            offset = 0
            while offset < len(stack):
                take = min(size - len(sources), len(stack) - offset)
                parts.append(stack[offset : offset + take])
                sources.extend(None if source is None else f"{source}[{offset + k}]" for k in range(take))
                offset += take
                if len(sources) == size:
                    yield _array_chunk(parts, sources)
                    parts, sources = [], []
        if sources:
            yield _array_chunk(parts, sources)
        run.clear()

    def flush_files() -> Iterator[EbsdChunk]:
        nonlocal files, files_bytes
        if files:
            yield EbsdChunk(files=files)
            files, files_bytes = [], 0

    for kind, value, source in _units(patterns):
        if kind == "array":
            yield from flush_files()
            if run and run[-1][0].shape[1:] != value.shape[1:]:
                yield from flush_run()
            run.append((value, source))
        else:
            yield from flush_run()
            size = value.stat().st_size
            if files and (len(files) >= chunk_size or files_bytes + size > MAX_MULTIPART_BYTES):
                yield from flush_files()
            files.append(value)
            files_bytes += size
    yield from flush_run()
    yield from flush_files()


def _array_chunk(parts: list[Any], sources: list[str | None]) -> EbsdChunk:
    np = _numpy()
    array = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return EbsdChunk(array=np.ascontiguousarray(array), sources=list(sources))


def encode_npy(array: Any) -> bytes:
    """``.npy`` bytes of an array (C order)."""
    np = _numpy()
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def scan_kind(path_or_array: Any) -> str:
    """``"array"`` (an array or ``.npy`` file) or ``"hdf5"`` (a file uploaded as it is)."""
    if isinstance(path_or_array, str | os.PathLike):
        suffix = Path(path_or_array).suffix.lower()
        if suffix in HDF5_SUFFIXES:
            return "hdf5"
        if suffix in NPY_SUFFIXES:
            return "array"
        raise ValueError(f"{path_or_array}: a scan is a .npy file (rows, cols, h, w) or an HDF5 file (.h5, .hdf5)")
    return "array"


def load_scan(path_or_array: Any) -> Any:
    """A 4-D scan ``(rows, cols, h, w)`` from an array or a ``.npy`` file (memory-mapped)."""
    np = _numpy()
    if isinstance(path_or_array, str | os.PathLike):
        array = np.load(Path(path_or_array), mmap_mode="r")
    else:
        array = np.asarray(path_or_array)
    if array.ndim != 4:
        raise ValueError(f"a scan is a 4-D array (scan rows, scan cols, pattern rows, pattern cols); got shape "
                         f"{list(array.shape)}")  # fmt: skip
    return array


def png_rgb(rgb: Sequence[Sequence[Sequence[int]]], scale: int = 1) -> bytes:
    """PNG bytes of an 8-bit RGB image given as ``[rows][cols][3]`` lists, each pixel ``scale`` x ``scale``.

    Written with :mod:`zlib` and :mod:`struct` only (no Pillow).
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    rows = len(rgb)
    cols = len(rgb[0]) if rows else 0
    lines = []
    for row in rgb:
        line = b"\x00" + bytes(value for pixel in row for _ in range(scale) for value in pixel)  # filter 0: none
        lines.extend([line] * scale)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", cols * scale, rows * scale, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(lines), 6))
            + chunk(b"IEND", b""))  # fmt: skip
