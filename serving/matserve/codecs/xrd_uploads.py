"""XRD uploads -> pattern items for :func:`~matserve.codecs.xrd.encode_batch`, bounded before anything is allocated.

Two binary forms of the ``/v1/xrd/phase`` and ``/v1/xrd/novelty`` bodies:

* :func:`decode_xrd_npy` reads an ``application/x-npy`` body. Its header is read first
  (:func:`~matserve.codecs.npy.read_header`): dtype, shape, pattern count and points per pattern are checked
  before the data is touched, and the patterns are views of the body (no copy). Accepted arrays:
  ``(n, 2048)`` intensities on the model grid (:data:`~matserve.codecs.xrd.MODEL_GRID_DEG`), ``(n, 2, m)`` 2θ
  (degrees) and intensity, one grid for all rows or one per row; one pattern as ``(2048,)`` or ``(2, m)``.
  A ``(2, 2048)`` array is one pattern when its row 0 is the model grid, else two rows of intensities.
* :func:`decode_xrd_files` reads the files of a ``multipart/form-data`` body: two-column text (``.xy``,
  ``.xye``, ``.csv``, ``.txt``, ``.dat``), parsed by the SDK's own parser
  (:func:`matserve_client.xrd_files.parse_pattern`, so client and server read a file alike), one pattern per
  file, size and line count checked first.

Refusals raise :class:`~matserve.codecs.xrd.PatternError` (HTTP 422) saying what was wrong and what is accepted;
size limits raise its subclass :class:`XrdUploadTooLarge` (HTTP 413). The checks of each pattern's values
(increasing 2θ, NaN, negative intensities, coverage) are :func:`~matserve.codecs.xrd.encode_batch`'s, per item.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from matserve.codecs.npy import NpyError, array_view, read_header
from matserve.codecs.xrd import MAX_POINTS, MIN_POINTS, MODEL_GRID_DEG, N_POINTS, PatternError
from matserve_client.xrd_files import PatternFileError, parse_pattern

NPY_ACCEPTED = (
    f"an NPY array of float32/float64 (or integer) values: (n, {N_POINTS}) intensities on the model grid "
    f"({N_POINTS} points, 20-90° 2θ), or (n, 2, m) 2θ (degrees) and intensity with {MIN_POINTS} <= m <= "
    f"{MAX_POINTS}; one pattern as ({N_POINTS},) or (2, m); C or Fortran order, no object or structured dtypes"
)
"""What :func:`decode_xrd_npy` reads, for error messages."""
TEXT_SUFFIXES = (".xy", ".xye", ".csv", ".txt", ".dat")
"""File name suffixes :func:`decode_xrd_files` reads as two-column text (a name without a suffix is read too)."""
FILES_ACCEPTED = (
    f"two-column text files ({', '.join(TEXT_SUFFIXES)}): one point per line, 2θ (degrees) then intensity, "
    f"optionally a third column, separated by spaces, tabs, commas or semicolons; at most {MAX_POINTS} points"
)
"""What :func:`decode_xrd_files` reads, for error messages."""
MAX_VALUES = 2**24
"""Most numbers (2θ and intensity) per NPY body: 16.8 M, 128 MiB as float64."""
MAX_LINE_BYTES = 128
"""Average bytes per line a text file may have (so at most ``MAX_LINE_BYTES * (MAX_POINTS + 1024)`` bytes)."""
MAX_TEXT_BYTES = MAX_LINE_BYTES * (MAX_POINTS + 1024)
MAX_LABEL_CHARS = 200
_GRID_ATOL_DEG = 1e-5
"""A shared 2θ row this close to the model grid is taken as the model grid (float32 rounds 90° by 5.4e-6°)."""


class XrdUploadTooLarge(PatternError):
    """An upload over a size limit (patterns per request, points per pattern, values, file size): HTTP 413."""


def _item(two_theta_deg: np.ndarray, intensity: np.ndarray, wavelength_angstrom: float | None) -> dict[str, Any]:
    return {"two_theta_deg": two_theta_deg, "intensity": intensity, "wavelength_angstrom": wavelength_angstrom}


def _check_count(n: int, max_patterns: int, what: str) -> None:
    if n < 1:
        raise PatternError(f"{what} holds no pattern; send at least one ({NPY_ACCEPTED})")
    if n > max_patterns:
        raise XrdUploadTooLarge(f"{what} holds {n} patterns, over the limit of {max_patterns} per request; send "
                                "fewer per request (the Python SDK splits them)")  # fmt: skip


def _check_points(m: int, what: str) -> None:
    if m > MAX_POINTS:
        raise XrdUploadTooLarge(f"{what} has {m} points per pattern, over the limit of {MAX_POINTS}")
    if m < MIN_POINTS:
        raise PatternError(f"{what} has {m} points per pattern; at least {MIN_POINTS} are needed ({NPY_ACCEPTED})")


def _shared_grid(grid: np.ndarray, what: str) -> np.ndarray:
    """A 2θ row shared by every pattern, checked once: the model grid itself when it is that, else float64."""
    if len(grid) == N_POINTS and np.allclose(grid, MODEL_GRID_DEG, rtol=0.0, atol=_GRID_ATOL_DEG):
        return MODEL_GRID_DEG
    values = grid.astype(np.float64)
    if not np.isfinite(values).all():
        raise PatternError(f"{what}: the 2θ row contains NaN or infinite values; send finite degrees")
    if not (np.diff(values) > 0).all():
        first = int(np.argmax(np.diff(values) <= 0))
        raise PatternError(f"{what}: 2θ must be strictly increasing; it is not at index {first + 1} "
                           f"({values[first]:g} then {values[first + 1]:g})")  # fmt: skip
    return values


def decode_xrd_npy(body: bytes, *, max_patterns: int, wavelength_angstrom: float | None) -> list[dict[str, Any]]:
    """Patterns of an ``application/x-npy`` body, as items of :func:`~matserve.codecs.xrd.encode_batch`.

    Parameters
    ----------
    body : bytes
        The request body: an ``.npy`` file (see the module docstring for the accepted shapes).
    max_patterns : int
        Most patterns per request.
    wavelength_angstrom : float or None
        X-ray wavelength of every pattern, Å; ``None``: Cu Kα (checked per item by the encoder).

    Returns
    -------
    list of dict
        ``{"two_theta_deg": ndarray, "intensity": ndarray, "wavelength_angstrom": float | None}`` per pattern, in
        row order. Intensities are views of ``body``; a 2θ grid shared by all rows is one array object (the model
        grid itself for ``(n, 2048)`` arrays).

    Raises
    ------
    XrdUploadTooLarge
        More than ``max_patterns`` patterns, more than :data:`~matserve.codecs.xrd.MAX_POINTS` points per
        pattern, or more than :data:`MAX_VALUES` numbers (all from the header, before the data is read).
    PatternError
        A broken or truncated NPY, an unaccepted dtype or shape, no patterns, too few points, or a shared 2θ row
        that is not finite and strictly increasing.
    """
    what = "the NPY body"
    try:
        header = read_header(body, what)
    except NpyError as error:
        raise PatternError(f"{error}; expected {NPY_ACCEPTED}") from None
    dtype, shape = header.dtype, header.shape
    if (
        dtype.hasobject
        or dtype.fields is not None
        or not (dtype.kind in "iu" or (dtype.kind == "f" and dtype.itemsize in (4, 8)))
    ):
        raise PatternError(f"{what} has dtype {dtype.str!r}; expected {NPY_ACCEPTED}")
    if len(shape) == 1 and shape[0] == N_POINTS:
        form, n, m = "grid", 1, N_POINTS
    elif len(shape) == 2 and shape[0] == 2 and shape[1] != N_POINTS:
        form, n, m = "pair", 1, shape[1]
    elif len(shape) == 2 and shape[1] == N_POINTS:
        form, n, m = "grid", shape[0], N_POINTS  # (2, 2048): decided from the data below
    elif len(shape) == 3 and shape[1] == 2:
        form, n, m = "pairs", shape[0], shape[2]
    else:
        raise PatternError(f"{what} has shape {shape}; expected {NPY_ACCEPTED}")
    _check_count(1 if shape == (2, N_POINTS) else n, max_patterns, what)  # (2, 2048): one or two, see below
    _check_points(m, what)
    if n * m * (1 if form == "grid" else 2) > MAX_VALUES:
        raise XrdUploadTooLarge(f"{what} holds {n} x {m} points, over the limit of {MAX_VALUES} numbers per request; "
                                "send fewer patterns per request")  # fmt: skip
    try:
        array = array_view(body, header, what)
    except NpyError as error:
        raise PatternError(str(error)) from None
    if shape == (2, N_POINTS) and np.allclose(array[0], MODEL_GRID_DEG, rtol=0.0, atol=_GRID_ATOL_DEG):
        form, n = "pair", 1  # one pattern given with its 2θ, which is the model grid
    elif shape == (2, N_POINTS):
        _check_count(2, max_patterns, what)
    if form == "grid":
        rows = array.reshape(n, N_POINTS)
        return [_item(MODEL_GRID_DEG, row, wavelength_angstrom) for row in rows]
    pairs = array.reshape(n, 2, m)
    grids = pairs[:, 0, :]
    first = grids[0]
    if n == 1 or bool(((grids == first) | ((grids != grids) & (first != first))).all()):  # NaN equal to NaN
        grid = _shared_grid(first, what)
        return [_item(grid, pair[1], wavelength_angstrom) for pair in pairs]
    return [_item(pair[0], pair[1], wavelength_angstrom) for pair in pairs]


def _label(name: str, index: int) -> str:
    """The file's base name (no client directories), at most :data:`MAX_LABEL_CHARS`; ``files[i]`` if none."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return base[:MAX_LABEL_CHARS] if base else f"files[{index}]"


def _suffix(label: str) -> str:
    dot = label.rfind(".")
    return label[dot:].lower() if dot > 0 else ""


def decode_xrd_files(
    files: list[tuple[str, bytes]], *, max_patterns: int, wavelength_angstrom: float | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Patterns of the text files of a multipart body, one per file, with the file names as labels.

    Parameters
    ----------
    files : list of (str, bytes)
        ``(file name, content)`` per uploaded file, in upload order.
    max_patterns : int
        Most files (patterns) per request.
    wavelength_angstrom : float or None
        X-ray wavelength of every pattern, Å; ``None``: Cu Kα.

    Returns
    -------
    items : list of dict
        As :func:`decode_xrd_npy` (float64 arrays).
    labels : list of str
        Each file's base name (``files[i]`` when it has none), for the results' ``source``.

    Raises
    ------
    XrdUploadTooLarge
        More than ``max_patterns`` files, or a file over :data:`MAX_TEXT_BYTES` bytes or
        :data:`~matserve.codecs.xrd.MAX_POINTS` lines of data (checked before parsing), naming the file.
    PatternError
        No files, an unaccepted suffix, or a file that is not two-column text, naming the file and the line.
    """
    if not files:
        raise PatternError(f"no files in the request; send {FILES_ACCEPTED}")
    if len(files) > max_patterns:
        raise XrdUploadTooLarge(f"{len(files)} files, over the limit of {max_patterns} per request; send fewer per "
                                "request (the Python SDK splits them)")  # fmt: skip
    items: list[dict[str, Any]] = []
    labels: list[str] = []
    for index, (name, data) in enumerate(files):
        label = _label(name, index)
        if _suffix(label) not in ("", *TEXT_SUFFIXES):
            raise PatternError(f"{label}: unsupported file type {_suffix(label)!r}; expected {FILES_ACCEPTED}")
        if len(data) > MAX_TEXT_BYTES:
            raise XrdUploadTooLarge(f"{label} is {len(data)} bytes, over the limit of {MAX_TEXT_BYTES} for a "
                                    f"pattern file of at most {MAX_POINTS} points")  # fmt: skip
        lines = data.count(b"\n")
        if lines > MAX_POINTS + 1024:
            raise XrdUploadTooLarge(f"{label} has {lines} lines, over the limit of {MAX_POINTS} points per pattern "
                                    "(plus 1024 header or comment lines)")  # fmt: skip
        if b"\x00" in data:
            raise PatternError(f"{label} is not a text file (it holds NUL bytes); expected {FILES_ACCEPTED}")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        try:
            x, y = parse_pattern(text, source=label)
        except PatternFileError as error:
            raise PatternError(f"{error}; expected {FILES_ACCEPTED}") from None
        if len(x) > MAX_POINTS:
            raise XrdUploadTooLarge(f"{label} has {len(x)} points, over the limit of {MAX_POINTS}")
        two_theta_deg = np.asarray(x, dtype=np.float64)
        intensity = np.asarray(y, dtype=np.float64)
        items.append(_item(two_theta_deg, intensity, wavelength_angstrom))
        labels.append(label)
    return items, labels
