"""XRD codec: a 1D diffraction pattern on any 2θ grid -> the models' fixed grid, checked and normalised.

The models see Cu Kα (λ = 1.54184 Å, the Kα1/Kα2 weighted mean that pymatgen and the training simulator
use) patterns on :data:`MODEL_GRID_DEG`, 2048 points from 20° to 90° 2θ,
scaled to [0, 1]. This codec is shared by training and serving:

* a pattern measured with another wavelength is mapped to the Cu Kα 2θ scale through Bragg's law
  (same d-spacing: ``2θ_Cu = 2 asin(λ_Cu / λ · sin θ)``); reflections beyond the Cu Kα limit are dropped;
* it is resampled by averaging the piecewise-linear pattern over each model-grid cell (exact cell means,
  so a finer input grid is averaged, not aliased, and a coarser one is interpolated);
* parts of 20–90° the measurement does not cover are set to the pattern's minimum (its background level);
  at least :data:`MIN_COVERAGE` of the range must be covered;
* intensities are min-max scaled to [0, 1] (a constant pattern is refused).

Every refusal raises :class:`PatternError` with a message that says what is wrong and what is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CU_KA_ANGSTROM = 1.54184  # pymatgen's "CuKa"; the training simulator imports it from here
TWO_THETA_MIN_DEG = 20.0
TWO_THETA_MAX_DEG = 90.0
N_POINTS = 2048
MODEL_GRID_DEG = np.linspace(TWO_THETA_MIN_DEG, TWO_THETA_MAX_DEG, N_POINTS)
MIN_POINTS = 100
MAX_POINTS = 100_000
MIN_COVERAGE = 0.8
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
    """

    intensity: np.ndarray
    coverage: float


def _cell_edges(grid: np.ndarray) -> np.ndarray:
    mid = (grid[1:] + grid[:-1]) / 2
    step = grid[1] - grid[0]
    return np.concatenate([[grid[0] - step / 2], mid, [grid[-1] + step / 2]])


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
        negative intensities, too little of 20–90° covered, a constant pattern, a wavelength out of range.
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
    covered = max(0.0, min(x[-1], TWO_THETA_MAX_DEG) - max(x[0], TWO_THETA_MIN_DEG))
    coverage = covered / (TWO_THETA_MAX_DEG - TWO_THETA_MIN_DEG)
    if coverage < MIN_COVERAGE:
        raise PatternError(
            f"the pattern covers {x[0]:.2f}-{x[-1]:.2f}° 2θ (Cu Kα scale), {coverage:.0%} of the 20-90° the models "
            f"use; at least {MIN_COVERAGE:.0%} is needed"
        )
    edges = _cell_edges(MODEL_GRID_DEG)
    left, right = np.maximum(edges[:-1], x[0]), np.minimum(edges[1:], x[-1])
    inside = right > left
    means = np.full(N_POINTS, np.nan)
    integral = _cumulative_integral(x, y, right[inside]) - _cumulative_integral(x, y, left[inside])
    means[inside] = integral / (right[inside] - left[inside])
    floor = np.nanmin(means)
    means = np.where(np.isnan(means), floor, means)
    span = means.max() - floor
    if span <= 1e-9 * max(abs(floor), 1.0):  # constant up to rounding
        raise PatternError("the pattern is constant over 20-90° 2θ; there is nothing to classify")
    return EncodedPattern(intensity=((means - floor) / span).astype(np.float32), coverage=float(coverage))
