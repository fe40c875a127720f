"""EBSD pattern codec: any square detector image -> the indexer's normalised 60x60 tensor.

One function (:func:`normalize_patterns`) is used by the simulator's training pipeline, the HTTP API and
the Triton python backend, so train/serve skew is impossible by construction.

Conventions
-----------
* Patterns are ``(n, rows, cols)`` arrays of detector intensities (any real dtype; uint8/uint16 cameras
  or floats). Row 0 is the top of the detector, as in kikuchipy.
* The model's detector is square, 60x60 pixels. Square patterns of any size from 60 to
  :data:`MAX_PATTERN_SIDE` pixels are area-resampled (binned) to 60x60; the projection centre, being a
  fraction of the detector size, is unchanged by binning. Non-square or smaller patterns are rejected.
* The projection centre (PC) is in the Bruker convention used by kikuchipy: ``(PCx, PCy, PCz)`` as
  fractions of the detector width, height and width. The sample is tilted 70 deg and the detector is
  not tilted; :data:`PC_RANGE` is the range the model was trained on.
* Normalisation: subtract a dynamic background (the pattern blurred by a Gaussian of
  :data:`BACKGROUND_SIGMA_PX` pixels, reflecting at the borders), then scale each pattern to zero mean
  and unit standard deviation, and clip to +-:data:`CLIP_SIGMA`.

Serving side (below the training part): per-pattern checks with messages (:func:`encode_patterns`: square
60-1024 px, finite, not constant), the trained geometry (:class:`Geometry`: PC range, tilts). Decoding uploads
(PNG, TIFF, NPY) within the request's pixel budget is :mod:`matserve.codecs.ebsd_uploads`, h5ebsd scans
:mod:`matserve.codecs.h5ebsd`. The orientation side (network output -> quaternion, fundamental zone, Euler
angles, disorientation) is :mod:`matserve.codecs.orientation`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NotRequired

import numpy as np
from pydantic import ConfigDict, Field
from typing_extensions import TypedDict

PATTERN_SIDE_PX = 60
MAX_PATTERN_SIDE = 1024
NOMINAL_PC = (0.425, 0.213, 0.501)
PC_HALF_WIDTH = 0.05
PC_RANGE = tuple((c - PC_HALF_WIDTH, c + PC_HALF_WIDTH) for c in NOMINAL_PC)
SAMPLE_TILT_DEG = 70.0
DETECTOR_TILT_DEG = 0.0
BACKGROUND_SIGMA_PX = 6.0
CLIP_SIGMA = 6.0


@functools.lru_cache(maxsize=8)
def _gaussian_matrix(side: int, sigma_px: float) -> np.ndarray:
    """Gaussian smoothing matrix ``(side, side)`` float32 with reflecting borders (scipy's ``reflect``)."""
    radius = int(np.ceil(4 * sigma_px))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma_px) ** 2)
    kernel /= kernel.sum()
    weights = np.zeros((side, side), dtype=np.float64)
    for row in range(side):
        columns = row + offsets
        columns = np.where(columns < 0, -columns - 1, columns)
        columns = np.where(columns >= side, 2 * side - columns - 1, columns)
        np.add.at(weights[row], np.clip(columns, 0, side - 1), kernel)
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=32)
def _area_resampling_matrix(side_in: int, side_out: int) -> np.ndarray:
    """Area-averaging matrix ``(side_out, side_in)``: output pixel = mean of the input it covers."""
    edges = np.linspace(0.0, side_in, side_out + 1)
    weights = np.zeros((side_out, side_in), dtype=np.float64)
    for out_index in range(side_out):
        start, stop = edges[out_index], edges[out_index + 1]
        for in_index in range(int(np.floor(start)), int(np.ceil(stop))):
            overlap = min(stop, in_index + 1) - max(start, in_index)
            if overlap > 0:
                weights[out_index, in_index] = overlap
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


def resample_patterns(patterns: np.ndarray, side_px: int = PATTERN_SIDE_PX) -> np.ndarray:
    """Area-resample square patterns ``(n, s, s)`` to ``(n, side_px, side_px)`` float32.

    Parameters
    ----------
    patterns
        Square patterns, ``s >= side_px``.
    side_px
        Output side in pixels.

    Returns
    -------
    numpy.ndarray
        float32 patterns; a copy (as float32) when ``s == side_px``.
    """
    patterns = np.asarray(patterns, dtype=np.float32)
    side_in = patterns.shape[-1]
    if side_in == side_px:
        return patterns
    matrix = _area_resampling_matrix(side_in, side_px)
    return np.matmul(np.matmul(matrix, patterns), matrix.T)


def normalize_patterns(patterns: np.ndarray, background_sigma_px: float = BACKGROUND_SIGMA_PX) -> np.ndarray:
    """Normalise 60x60 patterns for the indexer: dynamic background removal, then standardisation.

    Parameters
    ----------
    patterns
        ``(n, 60, 60)`` detector intensities, any real dtype.
    background_sigma_px
        Gaussian sigma of the background estimate, pixels (the network's input uses the default).

    Returns
    -------
    numpy.ndarray
        ``(n, 60, 60)`` float32, zero mean and unit standard deviation per pattern, clipped to
        +-``CLIP_SIGMA``. A constant pattern gives all zeros (the API rejects those before).
    """
    patterns = np.asarray(patterns, dtype=np.float32)
    side = patterns.shape[-1]
    blur = _gaussian_matrix(side, background_sigma_px)
    background = np.matmul(np.matmul(blur, patterns), blur.T)
    flattened = (patterns - background).reshape(len(patterns), -1)
    flattened -= flattened.mean(axis=1, keepdims=True)
    std = flattened.std(axis=1, keepdims=True)
    flattened /= np.where(std > 0, std, 1.0)
    np.clip(flattened, -CLIP_SIGMA, CLIP_SIGMA, out=flattened)
    return flattened.reshape(patterns.shape)


# ----------------------------------------------------------------------------------------------------------------
# Serving side: decoding uploads, checking patterns and geometry, orientation conventions
# ----------------------------------------------------------------------------------------------------------------
#
# Everything below is used by the HTTP API (and its batch jobs); the training code uses only the part above.

SIZE_RULE = (
    f"accepted: square patterns from {PATTERN_SIDE_PX}x{PATTERN_SIDE_PX} to {MAX_PATTERN_SIDE}x{MAX_PATTERN_SIDE} px; "
    f"larger ones are area-resampled (binned) to {PATTERN_SIDE_PX}x{PATTERN_SIDE_PX}, the projection centre is unchanged"
)
TILT_TOLERANCE_DEG = 0.5
"""Accepted deviation of ``sample_tilt_deg`` / ``detector_tilt_deg`` from the trained geometry, degrees."""
RESAMPLE_CHUNK_PIXELS = 16 * 2**20
"""Input pixels resampled per step (bounds the float32 working memory to ~64 MB)."""


class PatternError(ValueError):
    """One pattern that cannot be used (the request's other patterns are fine), with the reason."""


class EbsdInputError(ValueError):
    """A request that cannot be used as a whole (unreadable bytes, bad geometry, wrong dimensions): HTTP 422."""


class EbsdTooLarge(EbsdInputError):
    """A request over a size limit (patterns or decoded pixels per request, pixels per pattern): HTTP 413."""


@dataclass(frozen=True)
class Geometry:
    """The detector geometry a model version was trained for (from its card's ``geometry``).

    Attributes
    ----------
    nominal_pc : tuple of float
        Default projection centre (PCx, PCy, PCz), Bruker convention (fractions of detector width, height,
        width), used when a request gives none.
    pc_half_width : float
        Accepted PC: each coordinate within +-this of ``nominal_pc`` (fractions of the detector size).
    sample_tilt_deg, detector_tilt_deg : float
        Sample tilt about the microscope X axis and detector tilt, degrees; requests must match within
        :data:`TILT_TOLERANCE_DEG`.
    """

    nominal_pc: tuple[float, float, float] = NOMINAL_PC
    pc_half_width: float = PC_HALF_WIDTH
    sample_tilt_deg: float = SAMPLE_TILT_DEG
    detector_tilt_deg: float = DETECTOR_TILT_DEG

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> Geometry:
        """The card's ``geometry`` (the codec's constants for keys it lacks)."""
        geometry = card.get("geometry") or {}
        return cls(
            nominal_pc=tuple(float(v) for v in geometry.get("nominal_pc", NOMINAL_PC)),  # type: ignore[arg-type]
            pc_half_width=float(geometry.get("pc_half_width", PC_HALF_WIDTH)),
            sample_tilt_deg=float(geometry.get("sample_tilt_deg", SAMPLE_TILT_DEG)),
            detector_tilt_deg=float(geometry.get("detector_tilt_deg", DETECTOR_TILT_DEG)),
        )

    @property
    def pc_range(self) -> tuple[tuple[float, float], ...]:
        """(low, high) of PCx, PCy, PCz."""
        return tuple((c - self.pc_half_width, c + self.pc_half_width) for c in self.nominal_pc)

    def describe_pc_range(self) -> str:
        """``PCx 0.375-0.475, PCy 0.163-0.263, PCz 0.451-0.551``."""
        return ", ".join(f"{name} {low:.3f}-{high:.3f}" for name, (low, high) in zip(("PCx", "PCy", "PCz"),
                                                                                   self.pc_range, strict=True))  # fmt: skip

    def check_tilts(self, sample_tilt_deg: float | None, detector_tilt_deg: float | None) -> None:
        """Refuse tilts the model was not trained for (``None``: not given, assumed to match).

        Raises
        ------
        EbsdInputError
            Saying which geometry the model was trained for.
        """
        for name, value, trained in (("sample_tilt_deg", sample_tilt_deg, self.sample_tilt_deg),
                                     ("detector_tilt_deg", detector_tilt_deg, self.detector_tilt_deg)):  # fmt: skip
            if value is None:
                continue
            if not np.isfinite(value) or abs(value - trained) > TILT_TOLERANCE_DEG:
                raise EbsdInputError(
                    f"{name} {value:g} is not supported: the model was trained for a sample tilt of "
                    f"{self.sample_tilt_deg:g} deg and a detector tilt of {self.detector_tilt_deg:g} deg "
                    f"(+-{TILT_TOLERANCE_DEG} deg accepted)"
                )

    def projection_centres(self, pc: object, n: int) -> np.ndarray:
        """The PC of each of ``n`` patterns, checked against the trained range.

        Parameters
        ----------
        pc : array-like or None
            ``None`` (the nominal PC), one PC ``[PCx, PCy, PCz]`` for every pattern, or ``(n, 3)``, one per pattern.
            Bruker convention, fractions of the detector width, height and width.
        n : int
            Number of patterns.

        Returns
        -------
        numpy.ndarray
            float32 ``(n, 3)``.

        Raises
        ------
        EbsdInputError
            Wrong shape, non-finite values, or a PC outside the trained range (the message states the range).
        """
        if pc is None:
            return np.tile(np.asarray(self.nominal_pc, dtype=np.float32), (n, 1))
        try:
            values = np.asarray(pc, dtype=np.float64)
        except (TypeError, ValueError):
            raise EbsdInputError("pc must be numbers: [PCx, PCy, PCz] or one such triple per pattern") from None
        if values.shape == (3,):
            values = np.tile(values, (n, 1))
        if values.shape != (n, 3):
            raise EbsdInputError(
                f"pc has shape {list(values.shape)}; send one [PCx, PCy, PCz] for every pattern, or one per "
                f"pattern ({n} x 3)"
            )
        if not np.isfinite(values).all():
            raise EbsdInputError("pc contains NaN or infinite values")
        low = np.array([r[0] for r in self.pc_range]) - 1e-9
        high = np.array([r[1] for r in self.pc_range]) + 1e-9
        outside = ((values < low) | (values > high)).any(axis=1)
        if outside.any():
            first = int(np.argmax(outside))
            shown = ", ".join(f"{v:.4f}" for v in values[first])
            where = "" if n == 1 else f" (pattern {first}; {int(outside.sum())} of {n} outside)"
            raise EbsdInputError(
                f"projection centre ({shown}){where} is outside the range the model supports: "
                f"{self.describe_pc_range()} (Bruker convention: fractions of detector width, height, width; "
                f"trained around ({', '.join(f'{v:g}' for v in self.nominal_pc)}) +-{self.pc_half_width:g})"
            )
        return values.astype(np.float32)


def pattern_errors(stack: np.ndarray) -> list[str | None]:
    """Per-pattern refusal reason (``None``: fine) of a ``(n, side, side)`` stack, vectorised."""
    flat = stack.reshape(len(stack), -1)
    errors: list[str | None] = [None] * len(stack)
    if stack.dtype.kind == "f":
        bad = ~np.isfinite(flat).all(axis=1)
        for i in np.flatnonzero(bad):
            errors[i] = "pattern contains NaN or infinite values; send finite intensities"
    else:
        bad = np.zeros(len(stack), dtype=bool)
    low, high = flat.min(axis=1), flat.max(axis=1)
    for i in np.flatnonzero((low == high) & ~bad):
        errors[i] = (f"constant pattern (every pixel is {float(low[i]):g}): there are no Kikuchi bands to index; "
                     "check the exposure and the camera")  # fmt: skip
    return errors


@dataclass
class EbsdBatch:
    """Patterns of a request, checked and on the model's 60x60 detector, with per-item errors.

    Attributes
    ----------
    results : list of dict
        One per input item: ``pc`` and ``error`` (``None``, or why the pattern was refused); the model adds its
        outputs.
    rows : list of int
        Positions in ``results`` of the patterns below.
    resampled : numpy.ndarray
        float32 ``(len(rows), 60, 60)``: the intensities, area-resampled, before normalisation.
    patterns : numpy.ndarray
        float32 ``(len(rows), 60, 60)``: :func:`normalize_patterns` of ``resampled`` (the network's input).
    pc : numpy.ndarray
        float32 ``(len(rows), 3)`` projection centres (Bruker convention).
    """

    results: list[dict[str, Any]]
    rows: list[int]
    resampled: np.ndarray
    patterns: np.ndarray
    pc: np.ndarray


def _resample_chunked(stack: np.ndarray) -> np.ndarray:
    """:func:`resample_patterns` in chunks of at most :data:`RESAMPLE_CHUNK_PIXELS` input pixels."""
    per = max(1, RESAMPLE_CHUNK_PIXELS // (stack.shape[-1] * stack.shape[-2]))
    if len(stack) <= per:
        return resample_patterns(stack)
    return np.concatenate([resample_patterns(stack[i : i + per]) for i in range(0, len(stack), per)])


def pattern_shape_error(pattern: np.ndarray) -> str | None:
    """Why a pattern's shape or dtype cannot be used (``None``: it can)."""
    if pattern.ndim != 2:
        return f"a pattern is a 2-D image; got shape {list(pattern.shape)}"
    rows_px, cols_px = pattern.shape
    if rows_px != cols_px:
        return f"pattern is {rows_px}x{cols_px} px (rows x cols), not square; {SIZE_RULE}"
    if not PATTERN_SIDE_PX <= rows_px <= MAX_PATTERN_SIDE:
        return f"pattern is {rows_px}x{cols_px} px; {SIZE_RULE}"
    if pattern.dtype.kind not in "uifb":
        return f"pattern has dtype {pattern.dtype}; send numbers"
    return None


def encode_patterns(patterns: Sequence[np.ndarray | str], pc: np.ndarray) -> EbsdBatch:
    """Check, resample and normalise patterns whose projection centres are already checked.

    Parameters
    ----------
    patterns : sequence of numpy.ndarray or str
        2-D detector images (any numeric dtype, square, 60 to :data:`MAX_PATTERN_SIDE` px; views are fine),
        or a string: the reason an item was already refused.
    pc : numpy.ndarray
        ``(len(patterns), 3)`` projection centres from :meth:`Geometry.projection_centres`.

    Returns
    -------
    EbsdBatch
        Refused patterns (wrong shape or dtype, NaN/inf, constant) get their ``error``; the others go on.
        Patterns of one shape and dtype are checked, resampled and normalised together.
    """
    results: list[dict[str, Any]] = []
    by_shape: dict[tuple[Any, ...], list[int]] = {}
    for i, pattern in enumerate(patterns):
        error = pattern if isinstance(pattern, str) else pattern_shape_error(pattern)
        results.append({"pc": None, "error": error})
        if error is None:
            by_shape.setdefault((*pattern.shape, pattern.dtype.str), []).append(i)  # type: ignore[union-attr]
    keep: list[int] = []
    parts: list[np.ndarray] = []
    for indices in by_shape.values():
        stack = np.stack([patterns[i] for i in indices])  # type: ignore[misc]
        errors = pattern_errors(stack)
        good = [k for k, error in enumerate(errors) if error is None]
        for k, error in enumerate(errors):
            if error is not None:
                results[indices[k]]["error"] = error
        if good:
            parts.append(_resample_chunked(stack[good] if len(good) < len(stack) else stack))
            keep.extend(indices[k] for k in good)
    order = np.argsort(keep, kind="stable")
    rows = [keep[k] for k in order]
    if rows:
        resampled = np.concatenate(parts)[order] if len(parts) > 1 else parts[0][order]
        pc_rows = np.asarray(pc, dtype=np.float32)[rows]
    else:
        resampled = np.zeros((0, PATTERN_SIDE_PX, PATTERN_SIDE_PX), dtype=np.float32)
        pc_rows = np.zeros((0, 3), dtype=np.float32)
    for row, values in zip(rows, np.round(pc_rows.astype(np.float64), 6).tolist(), strict=True):
        results[row]["pc"] = values
    normalised = normalize_patterns(resampled) if rows else resampled.copy()
    return EbsdBatch(results=results, rows=rows, resampled=resampled, patterns=normalised, pc=pc_rows)


def encode_batch(items: Sequence[Any], geometry: Geometry | None = None) -> EbsdBatch:
    """Check, resample and normalise job-style items (each checked on its own, with its own PC).

    Parameters
    ----------
    items : sequence
        Each a mapping ``{"pattern": 2-D array-like, "pc": [PCx, PCy, PCz] or None}`` (see
        :class:`EbsdPatternInput`).
    geometry : Geometry, optional
        Trained geometry (default: the codec's constants): the PC range and the default PC.

    Returns
    -------
    EbsdBatch
        A refused item (bad pattern or PC) gets its ``error``; the others go on.
    """
    geometry = geometry or Geometry()
    patterns: list[np.ndarray | str] = []
    pc = np.tile(np.asarray(geometry.nominal_pc, dtype=np.float32), (len(items), 1))
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or "pattern" not in item:
            patterns.append('an item is an object {"pattern": [[...], ...], "pc": [PCx, PCy, PCz]}')
            continue
        try:
            pattern = np.asarray(item["pattern"])
        except ValueError:
            pattern = np.empty(0, dtype=object)
        if pattern.dtype == object:
            patterns.append("pattern rows have different lengths or are not numbers; send a rectangular 2-D array")
            continue
        try:
            pc[i] = geometry.projection_centres(item.get("pc"), 1)[0]
        except EbsdInputError as error:
            patterns.append(str(error))
            continue
        patterns.append(pattern)
    return encode_patterns(patterns, pc)


class EbsdPatternInput(TypedDict):
    """One pattern on the wire (JSON object), as batch jobs (``POST /v1/jobs``, model ``ebsd_indexer``) take it.

    Attributes
    ----------
    pattern : list of list of float
        Detector intensities, rows x cols, square, 60 to 1024 px (resampled to 60x60).
    pc : list of float, optional
        Projection centre ``[PCx, PCy, PCz]`` (Bruker convention); default the model's nominal PC.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    pattern: Annotated[list[Annotated[list[float], Field(max_length=MAX_PATTERN_SIDE)]],
                       Field(max_length=MAX_PATTERN_SIDE)]  # fmt: skip
    pc: NotRequired[list[float] | None]
