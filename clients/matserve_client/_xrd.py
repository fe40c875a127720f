"""XRD phase classifier and novelty scorer (``POST /v1/xrd/phase``, ``/v1/xrd/novelty``): flows, helpers, methods.

Patterns go as a JSON body (``{"patterns": [...]}``), or, when they are numpy arrays of one length, as one
``application/x-npy`` body per chunk: ``(n, 2048)`` float32 intensities on the model grid, or ``(n, 2, m)`` float32
2θ and intensity (options as query parameters). ``binary=None`` (the default of the public methods) picks NPY by
itself when :data:`XRD_BINARY_AUTO` is true and the patterns allow it; ``binary=True`` insists, ``False`` sends JSON.
"""

from __future__ import annotations

import base64
import io
import numbers
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx

from . import wire
from ._base import (
    AsyncDriver,
    BaseClient,
    Flow,
    SyncDriver,
    check_answer,
    open_progress_bar,
    parse_body,
    results_of,
    same_doc,
)
from .exceptions import InvalidInputError
from .models import XrdNoveltyResult, XrdPhaseResult
from .xrd_files import XrdPattern, read_pattern

WIRE_RESPONSES: dict[str, type[wire.XrdPhaseResponse] | type[wire.XrdNoveltyResponse]] = {
    "/v1/xrd/phase": wire.XrdPhaseResponse,
    "/v1/xrd/novelty": wire.XrdNoveltyResponse,
}
"""The answer's schema of each XRD route."""
XRD_CHUNK_PATTERNS = 256
"""Patterns per XRD request when a long list is split (the server accepts up to 1024 by default)."""
XRD_PLOT_CHUNK_PATTERNS = 16
"""Patterns per request when plots are asked for (the server renders at most 16 per request)."""
XRD_BINARY_AUTO = True
"""Whether ``binary=None`` sends ``application/x-npy`` bodies when the patterns are arrays of one length (servers
before issue 19 answer such bodies 415: pass ``binary=False`` to talk to them)."""
TWO_THETA_MIN_DEG = 20.0
TWO_THETA_MAX_DEG = 90.0
MODEL_POINTS = 2048
"""The models' grid: :data:`MODEL_POINTS` points from :data:`TWO_THETA_MIN_DEG` to :data:`TWO_THETA_MAX_DEG`, 2θ
degrees (Cu Kα), as ``matserve.codecs.xrd.MODEL_GRID_DEG``."""
NPY_CONTENT_TYPE = "application/x-npy"

PatternLike = Any
"""One diffraction pattern: an :class:`~matserve_client.xrd_files.XrdPattern`, a path of a two-column file
(``.xy``, ``.xye``, ``.csv``, ...), a mapping ``{"two_theta_deg": [...], "intensity": [...]}`` (optionally
``"wavelength_angstrom"``), or a pair ``(two_theta_deg, intensity)`` of sequences or numpy arrays. Many patterns
may also be one numpy array: ``(n, 2048)`` intensities on the model grid, or ``(n, 2, m)`` 2θ and intensity
(one pattern: ``(2048,)`` or ``(2, m)``; a ``(2, 2048)`` array is one pattern if its row 0 is the model grid)."""


def _floats(values: Any) -> list[float]:
    return values.tolist() if hasattr(values, "tolist") else [float(v) for v in values]


def _is_pair(value: Any) -> bool:
    """A ``(two_theta_deg, intensity)`` pair of number sequences (not a list of two patterns)."""
    if not isinstance(value, tuple | list) or len(value) != 2 or any(isinstance(part, Mapping) for part in value):
        return False
    try:
        return all(len(part) > 0 and isinstance(part[0], numbers.Real) for part in value)
    except (TypeError, KeyError):
        return False


@cache
def model_grid_deg() -> Any:
    """The models' 2θ grid, degrees: a float64 ``(2048,)`` array (needs numpy)."""
    import numpy as np

    return np.linspace(TWO_THETA_MIN_DEG, TWO_THETA_MAX_DEG, MODEL_POINTS)


def _on_model_grid(two_theta_deg: Any) -> bool:
    """Whether a 1-D array is the model grid to 1e-6 of a step (the server's own test)."""
    import numpy as np

    step = (TWO_THETA_MAX_DEG - TWO_THETA_MIN_DEG) / (MODEL_POINTS - 1)
    if two_theta_deg.shape != (MODEL_POINTS,):
        return False
    return bool(np.abs(two_theta_deg.astype(np.float64) - model_grid_deg()).max() < 1e-6 * step)


@dataclass(frozen=True)
class XrdArrays:
    """Patterns of one length as arrays: what one NPY body per chunk carries.

    Attributes
    ----------
    intensity : numpy.ndarray
        ``(n, m)`` intensities.
    two_theta_deg : numpy.ndarray or None
        2θ, degrees: ``(m,)`` shared by every pattern, ``(n, m)`` one row per pattern, or ``None`` for the model
        grid (``m == 2048``).
    """

    intensity: Any
    two_theta_deg: Any | None

    def __len__(self) -> int:
        return int(self.intensity.shape[0])

    def npy(self, start: int, stop: int) -> bytes:
        """``np.save`` bytes of patterns ``start:stop``: ``(k, 2048)`` on the model grid, else ``(k, 2, m)``.

        float32 when that holds the caller's values exactly (float32 arrays, integer counts below 2^24, on the model
        grid or a float32 grid), else float64: the server then sees exactly what the caller has, as in JSON. Two
        rows on the model grid go as ``(2, 2, 2048)``: a ``(2, 2048)`` array could read as one pattern.
        """
        import numpy as np

        rows = self.intensity[start:stop]
        exact = rows.dtype == np.float32 or (rows.dtype.kind in "iu" and (not rows.size or np.abs(rows).max() < 2**24))
        grid_exact = self.two_theta_deg is None or self.two_theta_deg.dtype == np.float32
        dtype = np.float32 if exact and grid_exact else np.float64
        if self.two_theta_deg is None and len(rows) != 2:
            array = rows.astype(dtype)
        else:  # (2, 2048) would read as one (2θ, intensity) pair if row 0 were the grid: (2, 2, 2048) is unambiguous
            array = np.empty((len(rows), 2, rows.shape[1]), dtype)
            grid = model_grid_deg() if self.two_theta_deg is None else self.two_theta_deg
            array[:, 0] = grid if grid.ndim == 1 else grid[start:stop]
            array[:, 1] = rows
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()

    def json_items(self) -> list[tuple[dict[str, Any], str | None]]:
        """The patterns as JSON items (no source file)."""
        grid = model_grid_deg() if self.two_theta_deg is None else self.two_theta_deg
        shared = grid.tolist() if grid.ndim == 1 else None
        return [
            ({"two_theta_deg": shared if shared is not None else grid[i].tolist(), "intensity": row.tolist()}, None)
            for i, row in enumerate(self.intensity)
        ]


def _shared_or_rows(grids: Any, intensity: Any) -> XrdArrays:
    """``(n, m)`` grids: one row when all are equal (``None`` when that is the model grid), else all rows."""
    first = grids[0]
    if bool((grids == first).all()):
        return XrdArrays(intensity, None if _on_model_grid(first) else first)
    return XrdArrays(intensity, grids)


def array_patterns(array: Any) -> XrdArrays:
    """The patterns of one numpy array (see :data:`PatternLike` for the accepted shapes).

    Raises
    ------
    TypeError
        A non-numeric array.
    ValueError
        A shape that is none of ``(2048,)``, ``(n, 2048)``, ``(2, m)``, ``(n, 2, m)``, or no patterns.
    """
    if array.dtype.kind not in "fiu":
        raise TypeError(f"patterns must be a numeric array (float or integer); got dtype {array.dtype}")
    shape = array.shape
    accepted = "(2048,) or (n, 2048) intensities on the model grid, or (2, m) or (n, 2, m) 2θ and intensity"
    if 0 in shape:
        raise ValueError(f"no patterns: the array's shape is {shape}")
    if array.ndim == 1 and shape[0] == MODEL_POINTS:
        return XrdArrays(array[None, :], None)
    if array.ndim == 2 and shape[0] == 2 and (shape[1] != MODEL_POINTS or _on_model_grid(array[0])):
        return XrdArrays(array[1:2], None if _on_model_grid(array[0]) else array[0])
    if array.ndim == 2 and shape[1] == MODEL_POINTS:
        return XrdArrays(array, None)
    if array.ndim == 3 and shape[1] == 2:
        return _shared_or_rows(array[:, 0, :], array[:, 1, :])
    raise ValueError(f"an array of patterns is {accepted}; got shape {shape}")


def xrd_arrays(patterns: Any) -> XrdArrays | None:
    """The patterns as arrays of one length for an NPY body, or ``None`` when they are not all arrays like that.

    Accepted: one numpy array (see :data:`PatternLike`), or ``(two_theta_deg, intensity)`` pairs or mappings of
    1-D numpy arrays of one length, without their own ``wavelength_angstrom`` (the NPY body has one for all).
    """
    np = sys.modules.get("numpy")
    if np is None:  # numpy was never imported: the patterns cannot be arrays
        return None
    if isinstance(patterns, np.ndarray):
        return array_patterns(patterns)
    if isinstance(patterns, str | os.PathLike | XrdPattern):
        return None
    single = isinstance(patterns, Mapping) or _is_pair(patterns)
    items = [patterns] if single else list(patterns)
    grids, rows = [], []
    for item in items:
        if isinstance(item, Mapping) and "two_theta_deg" in item and "intensity" in item:
            if item.get("wavelength_angstrom") is not None:
                return None
            x, y = item["two_theta_deg"], item["intensity"]
        elif _is_pair(item):
            x, y = item
        else:
            return None
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.ndim == 1 and y.shape == x.shape):
            return None
        if x.dtype.kind not in "fiu" or y.dtype.kind not in "fiu":
            return None
        grids.append(x)
        rows.append(y)
    if not rows or len({len(x) for x in grids}) != 1:
        return None
    first = grids[0]
    intensity = np.stack(rows)
    if all(x is first or np.array_equal(x, first) for x in grids):
        return XrdArrays(intensity, None if _on_model_grid(first) else first)
    return XrdArrays(intensity, np.stack(grids))


def as_pattern_list(patterns: PatternLike | Sequence[PatternLike]) -> list[tuple[dict[str, Any], str | None]]:
    """Each pattern as (JSON item, source file or ``None``); one pattern or a sequence of them.

    Raises
    ------
    TypeError
        An item that is none of the accepted forms (see :data:`PatternLike`).
    ValueError
        No patterns; or :class:`~matserve_client.xrd_files.PatternFileError` for an unreadable file.
    """
    np = sys.modules.get("numpy")
    if np is not None and isinstance(patterns, np.ndarray):
        return array_patterns(patterns).json_items()
    single = isinstance(patterns, XrdPattern | Mapping | str | os.PathLike) or _is_pair(patterns)
    items = [patterns] if single else list(patterns)
    if not items:
        raise ValueError("no patterns given")
    out: list[tuple[dict[str, Any], str | None]] = []
    for index, item in enumerate(items):
        if isinstance(item, str | os.PathLike):
            out.append((read_pattern(item).to_request(), os.fspath(item)))
        elif isinstance(item, XrdPattern):
            out.append((item.to_request(), None))
        elif isinstance(item, Mapping) and "two_theta_deg" in item and "intensity" in item:
            body = {"two_theta_deg": _floats(item["two_theta_deg"]), "intensity": _floats(item["intensity"])}
            if item.get("wavelength_angstrom") is not None:
                body["wavelength_angstrom"] = float(item["wavelength_angstrom"])
            out.append((body, None))
        elif _is_pair(item):
            out.append(({"two_theta_deg": _floats(item[0]), "intensity": _floats(item[1])}, None))
        else:
            raise TypeError(
                f"pattern {index} is a {type(item).__name__}; expected an XrdPattern, a file path, a mapping with "
                "'two_theta_deg' and 'intensity', or a (two_theta_deg, intensity) pair"
            )
    return out


def xrd_params(version: str | None, wavelength_angstrom: float | None, plots: bool) -> dict[str, str]:
    """Query parameters of an NPY request."""
    params: dict[str, str] = {}
    if version is not None:
        params["version"] = version
    if wavelength_angstrom is not None:
        params["wavelength_angstrom"] = repr(float(wavelength_angstrom))
    if plots:
        params["plots"] = "true"
    return params


class _XrdFlows(BaseClient):
    """The XRD flow (no I/O)."""

    def _xrd_flow(
        self,
        path: str,
        result_type: type[XrdPhaseResult] | type[XrdNoveltyResult],
        patterns: PatternLike | Sequence[PatternLike],
        version: str | None,
        wavelength_angstrom: float | None,
        plots: bool,
        progress: bool,
        binary: bool | None = None,
    ) -> Flow[list[Any]]:
        """POST patterns in chunks (version pinned after the first), results in input order.

        ``binary``: ``True`` NPY bodies (``ValueError`` if the patterns are not arrays of one length), ``False``
        JSON, ``None`` NPY when :data:`XRD_BINARY_AUTO` is true and the patterns allow it.
        """
        if isinstance(patterns, Iterator):  # a generator: read once, by whichever body is chosen
            patterns = list(patterns)
        arrays = xrd_arrays(patterns) if binary or (binary is None and XRD_BINARY_AUTO) else None
        if binary and arrays is None:
            raise ValueError(
                "binary=True needs numpy arrays of one length: an (n, 2048) array on the model grid, an (n, 2, m) "
                "array, or (two_theta_deg, intensity) pairs of 1-D arrays without their own wavelength_angstrom"
            )
        items = as_pattern_list(patterns) if arrays is None else None
        total = len(arrays) if arrays is not None else len(items or [])
        size = XRD_PLOT_CHUNK_PATTERNS if plots else min(self._chunk_size or XRD_CHUNK_PATTERNS, XRD_CHUNK_PATTERNS)
        bar = open_progress_bar(total, unit="pattern", desc=path.rsplit("/", 1)[-1]) if progress else None
        results: list[Any] = []
        pinned = version
        try:
            for start in range(0, total, size):
                stop = min(start + size, total)
                if arrays is not None:
                    build = self._npy_request(path, arrays.npy(start, stop), xrd_params(pinned, wavelength_angstrom,
                                                                                        plots))  # fmt: skip
                    sources: list[str | None] = [None] * (stop - start)
                else:
                    chunk = (items or [])[start:stop]
                    sources = [source for _, source in chunk]
                    body: dict[str, Any] = {"patterns": [item for item, _ in chunk], "version": pinned}
                    if wavelength_angstrom is not None:
                        body["wavelength_angstrom"] = wavelength_angstrom
                    if plots:
                        body["plots"] = True
                    build = self._json_request(path, body)
                try:
                    response = yield from self._request("POST", path, build=build)
                except InvalidInputError as exc:
                    if total <= size:
                        raise
                    raise InvalidInputError(
                        exc.status_code, exc.error_type,
                        f"in the request of patterns {start}-{stop - 1} (its patterns[0] is your "
                        f"pattern {start}): {exc.message}", response=exc.response,
                    ) from exc  # fmt: skip
                payload = parse_body(response, WIRE_RESPONSES[path])
                check_answer(response, stop - start, "patterns", len(payload.results), pinned, payload.version)
                pinned = payload.version
                for source, fields in zip(sources, results_of(payload), strict=True):
                    fields.pop("source", None)  # the caller's name of the pattern wins
                    encoded = fields.pop("plots", None) or {}
                    for key, value in encoded.items():
                        fields[key] = base64.b64decode(value)
                    results.append(result_type(**fields, source=source, model=payload.model, version=payload.version))
                if bar is not None:
                    bar.update(stop - start)
            return results
        finally:
            if bar is not None:
                bar.close()

    def _json_request(self, path: str, body: dict[str, Any]) -> Callable[[], httpx.Request]:
        return lambda: self._http.build_request("POST", path, json=body)

    def _npy_request(self, path: str, data: bytes, params: dict[str, str]) -> Callable[[], httpx.Request]:
        headers = {"Content-Type": NPY_CONTENT_TYPE}
        return lambda: self._http.build_request("POST", path, content=data, params=params, headers=headers)


class XrdMethods(_XrdFlows, SyncDriver):
    """The XRD methods of :class:`~matserve_client.Client`."""

    def classify_xrd(
        self,
        patterns: PatternLike | Sequence[PatternLike],
        *,
        version: str | None = None,
        wavelength_angstrom: float | None = None,
        progress: bool = False,
        binary: bool | None = None,
    ) -> list[XrdPhaseResult]:
        """Classify powder XRD patterns among the known phases (``POST /v1/xrd/phase``).

        Parameters
        ----------
        patterns : pattern or sequence of patterns
            One pattern or many, each an :class:`~matserve_client.xrd_files.XrdPattern`, a path of a two-column
            file (``.xy``, ``.xye``, ``.csv``, ``.txt``), a mapping ``{"two_theta_deg": [...], "intensity": [...]}``
            or a ``(two_theta_deg, intensity)`` pair of sequences/arrays; or one numpy array of many: ``(n, 2048)``
            intensities on the model grid (2048 points, 20-90° 2θ) or ``(n, 2, m)`` 2θ and intensity. Any 2θ
            grid: the server resamples.
        version : str, optional
            Model version, e.g. ``"1.0.0"``; default the active one (pinned after the first chunk).
        wavelength_angstrom : float, optional
            X-ray wavelength of patterns that do not give their own, Å (default Cu Kα, 1.54184; 0.1-3.0 accepted).
        progress : bool, default False
            Show a tqdm progress bar over patterns (``pip install 'matserve-client[progress]'``).
        binary : bool, optional
            Body format: ``True`` one ``application/x-npy`` array per chunk (float32; the patterns must be numpy
            arrays of one length, else :class:`ValueError`), ``False`` JSON; default: NPY when the patterns allow it
            and :data:`~matserve_client._xrd.XRD_BINARY_AUTO` is set, else JSON.

        Returns
        -------
        list of XrdPhaseResult
            One per pattern, in input order; ``source`` names the file for patterns given as paths. Versions with
            the physics fit abstain on a pattern that is none of the known phases nor a mixture of them
            (``abstained``, ``phase`` ``None``, ``reason``, ``probability_unknown``) and name up to 3 phases of a
            mixture (``phases``, with signal fractions and lattice parameters); see ``result.summary()``.

        Raises
        ------
        InvalidInputError
            A pattern cannot be used (422); the message names each failing pattern (``patterns[3]: ...``) and why
            (2θ range covered: at least a 35° span inside 20-90° is needed; lengths, NaN, negative or constant
            intensity, too few points).
        PayloadTooLargeError, NotFoundError, ServiceUnavailableError, MatserveConnectionError
            As for :meth:`formation_enthalpy`.
        PatternFileError
            A path that is not a readable two-column file.
        """
        return self._run(self._xrd_flow("/v1/xrd/phase", XrdPhaseResult, patterns, version, wavelength_angstrom,
                                        False, progress, binary))  # fmt: skip

    def xrd_novelty(
        self,
        patterns: PatternLike | Sequence[PatternLike],
        *,
        version: str | None = None,
        wavelength_angstrom: float | None = None,
        plots: bool = False,
        progress: bool = False,
        binary: bool | None = None,
    ) -> list[XrdNoveltyResult]:
        """Score how novel powder XRD patterns are (``POST /v1/xrd/novelty``): new phase, mixture or failed scan.

        Parameters
        ----------
        patterns : pattern or sequence of patterns
            As for :meth:`classify_xrd`.
        version : str, optional
            Model version, e.g. ``"1.0.0"``; default the active one (pinned after the first chunk).
        wavelength_angstrom : float, optional
            X-ray wavelength of patterns that do not give their own, Å (default Cu Kα, 1.54184; 0.1-3.0 accepted).
        plots : bool, default False
            Also return PNGs of each pattern against its reconstruction and of the latent map
            (``result.save_plots(prefix)``); requests are then sent 16 patterns at a time.
        progress : bool, default False
            Show a tqdm progress bar over patterns (``pip install 'matserve-client[progress]'``).
        binary : bool, optional
            Body format, as for :meth:`classify_xrd`.

        Returns
        -------
        list of XrdNoveltyResult
            One per pattern, in input order; ``source`` names the file for patterns given as paths. Versions with
            the physics fit add a calibrated ``novelty_score`` (``is_novel`` is it above the card's threshold),
            ``physics_residual`` and ``best_fit_phase``.

        Raises
        ------
        InvalidInputError
            A pattern cannot be used (422); the message names each failing pattern (``patterns[3]: ...``) and why
            (2θ range covered: at least a 35° span inside 20-90° is needed; lengths, NaN, negative or constant
            intensity, too few points).
        PayloadTooLargeError, NotFoundError, ServiceUnavailableError, MatserveConnectionError
            As for :meth:`formation_enthalpy`.
        PatternFileError
            A path that is not a readable two-column file.
        """
        return self._run(self._xrd_flow("/v1/xrd/novelty", XrdNoveltyResult, patterns, version, wavelength_angstrom,
                                        plots, progress, binary))  # fmt: skip


class AsyncXrdMethods(_XrdFlows, AsyncDriver):
    """The XRD methods of :class:`~matserve_client.AsyncClient` (coroutines)."""

    @same_doc(XrdMethods.classify_xrd)
    async def classify_xrd(
        self,
        patterns: PatternLike | Sequence[PatternLike],
        *,
        version: str | None = None,
        wavelength_angstrom: float | None = None,
        progress: bool = False,
        binary: bool | None = None,
    ) -> list[XrdPhaseResult]:
        return await self._run(self._xrd_flow("/v1/xrd/phase", XrdPhaseResult, patterns, version,
                                              wavelength_angstrom, False, progress, binary))  # fmt: skip

    @same_doc(XrdMethods.xrd_novelty)
    async def xrd_novelty(
        self,
        patterns: PatternLike | Sequence[PatternLike],
        *,
        version: str | None = None,
        wavelength_angstrom: float | None = None,
        plots: bool = False,
        progress: bool = False,
        binary: bool | None = None,
    ) -> list[XrdNoveltyResult]:
        return await self._run(self._xrd_flow("/v1/xrd/novelty", XrdNoveltyResult, patterns, version,
                                              wavelength_angstrom, plots, progress, binary))  # fmt: skip
