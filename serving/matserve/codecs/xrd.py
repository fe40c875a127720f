"""XRD codec: a 1D diffraction pattern on any 2θ grid -> the models' fixed grid, checked and normalised.

The models see Cu Kα (λ = 1.54184 Å, the Kα1/Kα2 weighted mean that pymatgen and the training simulator
use) patterns on :data:`MODEL_GRID_DEG`, 2048 points from 20° to 90° 2θ,
scaled to [0, 1]. This codec is shared by training and serving:

* a pattern measured with another wavelength is mapped to the Cu Kα 2θ scale through Bragg's law
  (same d-spacing: ``2θ_Cu = 2 asin(λ_Cu / λ · sin θ)``); reflections beyond the Cu Kα limit are dropped;
* it is resampled by averaging the piecewise-linear pattern over each model-grid cell (exact cell means,
  so a finer input grid is averaged, not aliased, and a coarser one is interpolated); a pattern already
  on the model grid (to 1e-6 of a step) is taken as it is, point for point, like the simulated training data;
* parts of 20–90° the measurement does not cover are set to the pattern's minimum (its background level);
  the measured span inside 20–90° must be at least :data:`MIN_SPAN_DEG` (35°) of 2θ, anywhere in the range
  (lab scans that start at 30-40° are fine: 35-90°, 30-70° and 40-80° are accepted, 60-90° is not). The
  measured part, ``[low, high]`` 2θ degrees (Cu Kα scale) clipped to 20–90°, is reported as
  ``measured_range_deg`` next to ``coverage`` (``(high - low) / 70°``);
* intensities are min-max scaled to [0, 1] (a constant pattern is refused).

Every refusal raises :class:`PatternError` with a message that says what is wrong and what is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, NotRequired

import numpy as np
from pydantic import ConfigDict, Field
from typing_extensions import TypedDict

CU_KA_ANGSTROM = 1.54184  # pymatgen's "CuKa"; the training simulator imports it from here
TWO_THETA_MIN_DEG = 20.0
TWO_THETA_MAX_DEG = 90.0
N_POINTS = 2048
MODEL_GRID_DEG = np.linspace(TWO_THETA_MIN_DEG, TWO_THETA_MAX_DEG, N_POINTS)
MIN_POINTS = 100
MAX_POINTS = 100_000
MIN_SPAN_DEG = 35.0
"""Least measured 2θ span inside 20-90° (Cu Kα scale), degrees, of an accepted pattern."""
WAVELENGTH_RANGE_ANGSTROM = (0.1, 3.0)


class PatternError(ValueError):
    """A pattern that cannot be used, with the reason and what is accepted."""


@dataclass(frozen=True)
class EncodedPattern:
    """A pattern on the model grid.

    Attributes
    ----------
    intensity : numpy.ndarray
        float32 (2048,) on :data:`MODEL_GRID_DEG`, scaled to [0, 1].
    coverage : float
        Fraction of 20–90° 2θ (Cu Kα scale) the measurement covered.
    measured_range_deg : tuple of float
        ``(low, high)``: the 2θ the measurement covers inside 20–90°, degrees (Cu Kα scale); ``(20.0, 90.0)``
        for a full pattern. Outside it the intensity is the pattern's background (minimum) fill.
    """

    intensity: np.ndarray
    coverage: float
    measured_range_deg: tuple[float, float]


def _cell_edges(grid: np.ndarray) -> np.ndarray:
    mid = (grid[1:] + grid[:-1]) / 2
    step = grid[1] - grid[0]
    return np.concatenate([[grid[0] - step / 2], mid, [grid[-1] + step / 2]])


_MODEL_CELL_EDGES_DEG = _cell_edges(MODEL_GRID_DEG)
_MODEL_STEP_DEG = float(MODEL_GRID_DEG[1] - MODEL_GRID_DEG[0])


def _is_model_grid(two_theta_deg: np.ndarray) -> bool:
    """True when the points are the model grid (to 1e-6 of a step): no resampling is needed."""
    tolerance = 1e-6 * _MODEL_STEP_DEG
    return (
        len(two_theta_deg) == N_POINTS
        and abs(two_theta_deg[0] - TWO_THETA_MIN_DEG) < tolerance
        and bool(np.abs(two_theta_deg - MODEL_GRID_DEG).max() < tolerance)
    )


def _cumulative_integral(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    """∫ from x[0] to ``at`` of the piecewise-linear curve through (x, y); ``at`` clipped to [x[0], x[-1]]."""
    at = np.clip(at, x[0], x[-1])
    areas = np.concatenate([[0.0], np.cumsum((y[1:] + y[:-1]) / 2 * np.diff(x))])
    index = np.clip(np.searchsorted(x, at, side="right") - 1, 0, len(x) - 2)
    dx = at - x[index]
    slope = (y[index + 1] - y[index]) / (x[index + 1] - x[index])
    return areas[index] + y[index] * dx + slope * dx**2 / 2


def to_cu_ka_deg(two_theta_deg: np.ndarray, wavelength_angstrom: float) -> np.ndarray:
    """Map 2θ measured at ``wavelength_angstrom`` to the Cu Kα 2θ of the same d-spacing (NaN beyond 180°)."""
    sin_theta = np.sin(np.radians(two_theta_deg) / 2) * CU_KA_ANGSTROM / wavelength_angstrom
    with np.errstate(invalid="ignore"):
        return np.degrees(2 * np.arcsin(np.where(sin_theta <= 1, sin_theta, np.nan)))


def encode_pattern(
    two_theta_deg: object, intensity: object, wavelength_angstrom: float = CU_KA_ANGSTROM
) -> EncodedPattern:
    """Check one pattern and put it on the model grid.

    Parameters
    ----------
    two_theta_deg : array-like of float
        Strictly increasing 2θ positions, degrees, at ``wavelength_angstrom``.
    intensity : array-like of float
        Non-negative intensities (any units), same length.
    wavelength_angstrom : float
        X-ray wavelength, Å (default Cu Kα, 1.54184); accepted from 0.1 to 3.0 Å.

    Raises
    ------
    PatternError
        Saying what is wrong: lengths, too few/many points, NaN or infinite values, non-increasing 2θ,
        negative intensities, a measured span inside 20–90° under :data:`MIN_SPAN_DEG`, a constant pattern, a
        wavelength out of range.
    """
    try:
        x = np.asarray(two_theta_deg, dtype=np.float64)
        y = np.asarray(intensity, dtype=np.float64)
    except (TypeError, ValueError):
        raise PatternError("two_theta_deg and intensity must be arrays of numbers") from None
    if x.ndim != 1 or y.ndim != 1:
        raise PatternError(f"two_theta_deg and intensity must be 1-D arrays (got shapes {x.shape} and {y.shape})")
    if len(x) != len(y):
        raise PatternError(f"two_theta_deg has {len(x)} points but intensity has {len(y)}; they must match")
    if len(x) < MIN_POINTS:
        raise PatternError(f"{len(x)} points is too few; at least {MIN_POINTS} are needed")
    if len(x) > MAX_POINTS:
        raise PatternError(f"{len(x)} points is over the limit of {MAX_POINTS} per pattern")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        bad = "two_theta_deg" if not np.isfinite(x).all() else "intensity"
        raise PatternError(f"{bad} contains NaN or infinite values; send finite numbers only")
    if not np.all(np.diff(x) > 0):
        first = int(np.argmax(np.diff(x) <= 0))
        raise PatternError(
            f"two_theta_deg must be strictly increasing; it is not at index {first + 1} "
            f"({x[first]:g} then {x[first + 1]:g})"
        )
    if (y < 0).any():
        first = int(np.argmax(y < 0))
        raise PatternError(
            f"intensity must be non-negative; index {first} is {y[first]:g} (subtract a background offset, "
            "or send raw counts)"
        )
    low, high = WAVELENGTH_RANGE_ANGSTROM
    if not low <= wavelength_angstrom <= high:
        raise PatternError(f"wavelength_angstrom {wavelength_angstrom:g} is outside the accepted {low}-{high} Å")
    if wavelength_angstrom != CU_KA_ANGSTROM:
        x = to_cu_ka_deg(x, wavelength_angstrom)
        keep = np.isfinite(x)
        x, y = x[keep], y[keep]
        if len(x) < 2:
            raise PatternError("no point of the pattern maps into the Cu Kα 2θ range")
    low_deg, high_deg = max(float(x[0]), TWO_THETA_MIN_DEG), min(float(x[-1]), TWO_THETA_MAX_DEG)
    covered = max(0.0, high_deg - low_deg)
    coverage = covered / (TWO_THETA_MAX_DEG - TWO_THETA_MIN_DEG)
    if covered < MIN_SPAN_DEG:
        raise PatternError(
            f"the pattern covers {x[0]:.2f}-{x[-1]:.2f}° 2θ (Cu Kα scale), a span of {covered:.2f}° inside the "
            f"20-90° the models use; a span of at least {MIN_SPAN_DEG:g}° inside 20-90° is needed (e.g. "
            f"{TWO_THETA_MAX_DEG - MIN_SPAN_DEG:g}-{TWO_THETA_MAX_DEG:g}°, 30-70° or 20-90°)"
        )
    if _is_model_grid(x):  # already on the model grid (e.g. simulated, or resampled by the client): use as is
        means = y
    else:
        clipped = np.clip(_MODEL_CELL_EDGES_DEG, x[0], x[-1])
        widths = np.diff(clipped)
        inside = widths > 0
        integral = np.diff(_cumulative_integral(x, y, clipped))
        means = np.full(N_POINTS, np.nan)
        means[inside] = integral[inside] / widths[inside]
    floor = np.nanmin(means)
    means = np.where(np.isnan(means), floor, means)
    span = means.max() - floor
    if span <= 1e-9 * max(abs(floor), 1.0):  # constant up to rounding
        raise PatternError("the pattern is constant over 20-90° 2θ; there is nothing to classify")
    return EncodedPattern(intensity=((means - floor) / span).astype(np.float32), coverage=float(coverage),
                          measured_range_deg=(low_deg, high_deg))  # fmt: skip


class PatternInput(TypedDict):
    """One pattern on the wire (JSON object); the job API and the XRD endpoints validate items with it.

    Attributes
    ----------
    two_theta_deg : list of float
        Strictly increasing 2θ positions, degrees (at most :data:`MAX_POINTS`).
    intensity : list of float
        Non-negative intensities, any units, one per 2θ position.
    wavelength_angstrom : float, optional
        X-ray wavelength of this pattern, Å; default Cu Kα (1.54184 Å).
    """

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    two_theta_deg: Annotated[list[float], Field(max_length=MAX_POINTS)]
    intensity: Annotated[list[float], Field(max_length=MAX_POINTS)]
    wavelength_angstrom: NotRequired[float | None]


@dataclass
class EncodedBatch:
    """Patterns of a request on the model grid, with per-item errors.

    Attributes
    ----------
    results : list of dict
        One result per input item: ``coverage`` (fraction of 20-90° measured), ``measured_range_deg``
        (``[low, high]`` 2θ degrees, Cu Kα scale, measured inside 20-90°, rounded to 4 decimals) and ``error``
        (``None``, or why the pattern was refused; the other two are then ``None``); models add their outputs.
    rows : list of int
        Positions in ``results`` of the patterns in ``patterns``.
    patterns : numpy.ndarray
        float32 (len(rows), 2048) on :data:`MODEL_GRID_DEG`, in [0, 1].
    measured_range_deg : numpy.ndarray
        float32 (len(rows), 2): each pattern's ``[low, high]`` 2θ degrees measured inside 20-90° (as in its
        result); outside it the pattern holds its background fill. ``[20, 90]`` for patterns on the model grid.
    """

    results: list[dict[str, Any]]
    rows: list[int]
    patterns: np.ndarray
    measured_range_deg: np.ndarray


def _encode_on_grid_batch(items: list[Any]) -> EncodedBatch | None:
    """All items valid, Cu Kα and on the model grid: checked and scaled in a few array operations.

    Returns ``None`` when any item is not like that (the caller then encodes item by item, with messages).
    Same result as :func:`encode_pattern` on each item.
    """
    try:
        if any(not isinstance(item, dict) or item.get("wavelength_angstrom") not in (None, CU_KA_ANGSTROM)
               or len(item["two_theta_deg"]) != N_POINTS for item in items):  # fmt: skip
            return None  # cheap checks first: an off-grid batch is converted once, by the per-item path
        x = np.asarray([item["two_theta_deg"] for item in items], dtype=np.float64)
        y = np.asarray([item["intensity"] for item in items], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    if x.shape != (len(items), N_POINTS) or y.shape != x.shape:
        return None
    if not (np.abs(x - MODEL_GRID_DEG).max() < 1e-6 * _MODEL_STEP_DEG and np.isfinite(y).all() and (y >= 0).all()):
        return None
    low, high = y.min(axis=1), y.max(axis=1)
    span = high - low
    if (span <= 1e-9 * np.maximum(np.abs(low), 1.0)).any():
        return None
    patterns = ((y - low[:, None]) / span[:, None]).astype(np.float32)
    full = [TWO_THETA_MIN_DEG, TWO_THETA_MAX_DEG]
    results = [{"coverage": 1.0, "measured_range_deg": list(full), "error": None} for _ in items]
    ranges = np.tile(np.asarray(full, dtype=np.float32), (len(items), 1))
    return EncodedBatch(results=results, rows=list(range(len(items))), patterns=patterns, measured_range_deg=ranges)


def encode_batch(items: list[Any]) -> EncodedBatch:
    """Encode every item (a :class:`PatternInput` mapping); a refused item gets its ``error``, the rest go on."""
    if items:
        fast = _encode_on_grid_batch(items)
        if fast is not None:
            return fast
    results: list[dict[str, Any]] = []
    rows: list[int] = []
    encoded: list[np.ndarray] = []
    ranges: list[list[float]] = []
    for i, item in enumerate(items):
        result: dict[str, Any] = {"coverage": None, "measured_range_deg": None, "error": None}
        try:
            if not isinstance(item, dict) or "two_theta_deg" not in item or "intensity" not in item:
                raise PatternError('a pattern is an object {"two_theta_deg": [...], "intensity": [...]}')
            wavelength = item.get("wavelength_angstrom")
            pattern = encode_pattern(
                item["two_theta_deg"], item["intensity"], CU_KA_ANGSTROM if wavelength is None else float(wavelength)
            )
        except PatternError as error:
            result["error"] = str(error)
        else:
            result["coverage"] = round(pattern.coverage, 6)
            result["measured_range_deg"] = [round(value, 4) for value in pattern.measured_range_deg]
            rows.append(i)
            encoded.append(pattern.intensity)
            ranges.append(result["measured_range_deg"])
        results.append(result)
    patterns = np.stack(encoded) if encoded else np.zeros((0, N_POINTS), dtype=np.float32)
    range_array = np.asarray(ranges, dtype=np.float32).reshape(len(rows), 2)
    return EncodedBatch(results=results, rows=rows, patterns=patterns, measured_range_deg=range_array)
