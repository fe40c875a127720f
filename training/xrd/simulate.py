"""Physically based powder XRD pattern simulator and dataset writer (issue 4, seed 002).

(Over 500 lines: the sampling ranges, the vectorised renderer and the deterministic writer are one pipeline;
lab realism is in :mod:`training.xrd.realism`.)

Setup of the seed: Cu Kα (λ = 1.54184 Å), 2θ 20-90°, 2048 points. Peak positions come from the
sampled lattice (Bragg's law on analytic d-spacings), integrated intensities from the cached
pymatgen structure factors (see ``structures.py``) times the Lorentz-polarisation factor at the new
angle times March-Dollase preferred orientation. Every random quantity is drawn from a seeded
``numpy.random.Generator``.

Two kinds of parameters are drawn per pattern:

* **phase** (one set per phase, two in a mixture): prototype (whose intensities are used), lattice
  a and c/a, uniform strain, crystallite size (Scherrer), pseudo-Voigt mixing η, March-Dollase
  ratio and texture direction;
* **measurement** (shared by the phases of a mixture): zero offset, sample displacement,
  instrumental width, background polynomial, amorphous hump, count level and Gaussian noise.

Run: ``python -m training.xrd.simulate --out DIR --per-class N --seed S``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from matserve.codecs.xrd import MODEL_GRID_DEG, N_POINTS, TWO_THETA_MAX_DEG, TWO_THETA_MIN_DEG
from training.npz import write_npz
from training.xrd.structures import (
    CACHE_PATH,
    CU_KA_WAVELENGTH_A,
    KNOWN_PHASES,
    NOVEL_PHASES,
    PhaseType,
    d_spacing_angstrom,
    load_cache,
    lorentz_polarisation,
    phase_by_name,
)

#: The model grid, defined once by the serving codec: 2048 points from 20 to 90° 2θ inclusive (step 0.0342°).
TWO_THETA_DEG = MODEL_GRID_DEG

SCHERRER_K = 0.9
GONIOMETER_RADIUS_MM = 240.0

#: Sampling ranges. (lo, hi) pairs are uniform unless the name says log-uniform.
PHASE_RANGES: dict[str, tuple[float, float]] = {
    "strain": (-0.005, 0.005),  # uniform isotropic strain Δd/d
    "crystallite_size_nm": (5.0, 100.0),  # log-uniform, Scherrer K = 0.9
    "eta": (0.0, 1.0),  # pseudo-Voigt Lorentzian fraction
    "texture_r": (0.7, 1.3),  # March-Dollase ratio (1 = random powder, < 1 enhances planes ⊥ direction)
}
MEASUREMENT_RANGES: dict[str, tuple[float, float]] = {
    "zero_offset_deg": (-0.1, 0.1),
    "displacement_mm": (-0.15, 0.15),  # Δ2θ = -2 s cos θ / R, R = 240 mm
    "instrument_fwhm_deg": (0.03, 0.10),  # constant instrumental FWHM
    "instrument_tan_fwhm_deg": (0.0, 0.05),  # + this × tan θ
    "background_level": (0.0, 0.15),  # relative to the strongest peak
    "background_c1": (-0.5, 0.5),  # level × (1 + c1 t + c2 t²), t ∈ [-1, 1] over the grid
    "background_c2": (-0.4, 0.4),
    "hump_amplitude": (0.0, 0.2),  # drawn with probability HUMP_PROBABILITY, else 0
    "hump_center_deg": (20.0, 35.0),
    "hump_fwhm_deg": (6.0, 15.0),
    "max_counts": (500.0, 50000.0),  # log-uniform counts at the maximum, Poisson noise
    "gaussian_sigma": (0.0, 0.005),  # relative to the maximum
}
HUMP_PROBABILITY = 0.5

#: The wider "training" profile: lattice ranges extended by ``WIDE_LATTICE_MARGIN`` (relative) at both
#: ends (c/a by half of it), stronger texture, smaller crystallites, larger shifts, more background and
#: noise. It covers most real fcc/bcc/hcp metals (e.g. Ag/Au/Pt, V/Nb/Ta, Be/Zr/Cd/Re) and the models
#: train on it so that patterns simulated with other settings than the standard ones stay in
#: distribution. The standard ranges above stay the documented "realistic" reference for evaluation.
WIDE_LATTICE_MARGIN = 0.15
WIDE_PHASE_RANGES: dict[str, tuple[float, float]] = {
    "strain": (-0.01, 0.01),
    "crystallite_size_nm": (3.0, 200.0),
    "eta": (0.0, 1.0),
    "texture_r": (0.5, 1.5),
}
WIDE_MEASUREMENT_RANGES: dict[str, tuple[float, float]] = {
    "zero_offset_deg": (-0.2, 0.2),
    "displacement_mm": (-0.3, 0.3),
    "instrument_fwhm_deg": (0.02, 0.15),
    "instrument_tan_fwhm_deg": (0.0, 0.08),
    "background_level": (0.0, 0.3),
    "background_c1": (-0.55, 0.55),  # |c1| + |c2| < 1 keeps the background positive
    "background_c2": (-0.4, 0.4),
    "hump_amplitude": (0.0, 0.4),
    "hump_center_deg": (15.0, 40.0),
    "hump_fwhm_deg": (4.0, 20.0),
    "max_counts": (100.0, 100000.0),
    "gaussian_sigma": (0.0, 0.01),
}


@dataclass(frozen=True)
class RangeProfile:
    """A named set of sampling ranges (``standard`` or ``wide``).

    Attributes
    ----------
    name : str
        Profile name, recorded in dataset manifests.
    phase : dict
        Ranges of the phase parameters (see ``PHASE_RANGES``).
    measurement : dict
        Ranges of the measurement parameters (see ``MEASUREMENT_RANGES``).
    lattice_margin : float
        Relative widening of each phase's a range at both ends (c/a range: half of it).
    """

    name: str
    phase: dict[str, tuple[float, float]]
    measurement: dict[str, tuple[float, float]]
    lattice_margin: float

    def a_range_angstrom(self, phase: PhaseType) -> tuple[float, float]:
        """The sampled range of a (Å) of a structure type under this profile."""
        lo, hi = phase.a_range_angstrom
        return lo * (1.0 - self.lattice_margin), hi * (1.0 + self.lattice_margin)

    def c_over_a_range(self, phase: PhaseType) -> tuple[float, float]:
        """The sampled range of c/a of a structure type under this profile."""
        lo, hi = phase.c_over_a_range
        return lo * (1.0 - self.lattice_margin / 2.0), hi * (1.0 + self.lattice_margin / 2.0)


STANDARD = RangeProfile("standard", PHASE_RANGES, MEASUREMENT_RANGES, 0.0)
WIDE = RangeProfile("wide", WIDE_PHASE_RANGES, WIDE_MEASUREMENT_RANGES, WIDE_LATTICE_MARGIN)
PROFILES = {p.name: p for p in (STANDARD, WIDE)}


@dataclass(frozen=True)
class PeakTable:
    """Reference reflections of one structure type, as numpy arrays.

    Attributes
    ----------
    phase : PhaseType
        The structure type.
    hkl : numpy.ndarray
        int (P, 3) representative Miller indices.
    structure_intensity : numpy.ndarray
        (n_prototypes, P) ``|F|^2 * multiplicity`` at the reference lattice, max 1 per prototype.
        Kept for every lattice parameter: structure factors are not recomputed.
    member_hkl : numpy.ndarray
        int (M, 3) all planes of all reflections (for preferred orientation).
    member_average : numpy.ndarray
        (M, P) averaging matrix: member values @ member_average = mean per reflection.
    """

    phase: PhaseType
    hkl: np.ndarray
    structure_intensity: np.ndarray
    member_hkl: np.ndarray
    member_average: np.ndarray


@cache
def peak_table(name: str) -> PeakTable:
    """The cached reference peak table of a structure type by class name."""
    cache = load_cache()
    entry = cache["phases"][name] if name in cache["phases"] else cache["impostor_phases"][name]
    members = [np.asarray(m, dtype=np.int64) for m in entry["members"]]
    member_average = np.zeros((sum(len(m) for m in members), len(members)))
    start = 0
    for j, m in enumerate(members):
        member_average[start : start + len(m), j] = 1.0 / len(m)
        start += len(m)
    return PeakTable(
        phase=phase_by_name(name),
        hkl=np.asarray(entry["hkl"], dtype=np.int64),
        structure_intensity=np.asarray(entry["structure_intensity"], dtype=np.float64),
        member_hkl=np.concatenate(members),
        member_average=member_average,
    )


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return rng.uniform(bounds[0], bounds[1], n)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), n))


def sample_phase_params(
    phase: PhaseType, n: int, rng: np.random.Generator, profile: RangeProfile = STANDARD
) -> dict[str, np.ndarray]:
    """Draw per-pattern phase parameters from the ranges of ``profile``.

    Returns
    -------
    dict of numpy.ndarray
        ``prototype`` (index into ``phase.prototypes``), ``a_angstrom``, ``c_angstrom``, ``strain``,
        ``crystallite_size_nm``, ``eta``, ``texture_r``, ``texture_direction`` (index into
        ``phase.texture_directions``); each of shape (n,).
    """
    a = _uniform(rng, profile.a_range_angstrom(phase), n)
    c_over_a = _uniform(rng, profile.c_over_a_range(phase), n) if phase.crystal_system != "cubic" else np.ones(n)
    return {
        "prototype": rng.integers(0, len(phase.prototypes), n),
        "a_angstrom": a,
        "c_angstrom": a * c_over_a,
        "strain": _uniform(rng, profile.phase["strain"], n),
        "crystallite_size_nm": _log_uniform(rng, profile.phase["crystallite_size_nm"], n),
        "eta": _uniform(rng, profile.phase["eta"], n),
        "texture_r": _uniform(rng, profile.phase["texture_r"], n),
        "texture_direction": rng.integers(0, len(phase.texture_directions), n),
    }


def sample_measurement_params(
    n: int, rng: np.random.Generator, profile: RangeProfile = STANDARD
) -> dict[str, np.ndarray]:
    """Draw per-pattern measurement parameters from the ranges of ``profile``; each of shape (n,)."""
    params = {}
    for name, bounds in profile.measurement.items():
        params[name] = _log_uniform(rng, bounds, n) if name == "max_counts" else _uniform(rng, bounds, n)
    params["hump_amplitude"] = params["hump_amplitude"] * (rng.random(n) < HUMP_PROBABILITY)
    return params


def ideal_phase_params(phase: PhaseType, n: int, prototype: int = 0, **overrides: float) -> dict[str, np.ndarray]:
    """Phase parameters of the prototype's own lattice: no strain, 100 nm crystallites, no texture."""
    proto = phase.prototypes[prototype]
    params = {
        "prototype": np.full(n, prototype),
        "a_angstrom": np.full(n, proto.a_angstrom),
        "c_angstrom": np.full(n, proto.c_angstrom),
        "strain": np.zeros(n),
        "crystallite_size_nm": np.full(n, 100.0),
        "eta": np.full(n, 0.5),
        "texture_r": np.ones(n),
        "texture_direction": np.zeros(n, dtype=np.int64),
    }
    for name, value in overrides.items():
        params[name] = np.full(n, value, dtype=params[name].dtype if name in params else None)
    return params


def ideal_measurement_params(n: int, **overrides: float) -> dict[str, np.ndarray]:
    """Measurement parameters without shifts, background or noise (``max_counts`` = 0 disables noise)."""
    params = {name: np.zeros(n) for name in MEASUREMENT_RANGES}
    params["instrument_fwhm_deg"] = np.full(n, 0.05)
    for name, value in overrides.items():
        params[name] = np.full(n, float(value))
    return params


def _reciprocal_cartesian(hkl: np.ndarray, a: np.ndarray, c: np.ndarray, crystal_system: str) -> np.ndarray:
    """Cartesian reciprocal-lattice vectors (1/Å) of hkl (M, 3) for lattices a, c (N,) → (N, M, 3)."""
    h, k, l = (hkl[None, :, i].astype(np.float64) for i in range(3))  # noqa: E741
    a = a[:, None]
    c = c[:, None]
    if crystal_system == "hexagonal":
        gx, gy = h / a, (h + 2.0 * k) / (np.sqrt(3.0) * a)
    else:
        gx, gy = h / a, k / a
    return np.stack([gx, gy, l / c], axis=-1)


def march_dollase(table: PeakTable, params: dict[str, np.ndarray]) -> np.ndarray:
    """March-Dollase preferred-orientation factor per reflection, averaged over its planes.

    W(α) = (r² cos² α + sin² α / r)^(-3/2), α the angle between a plane normal and the texture
    direction; the mean over all planes of a reflection is the factor (1 for r = 1).

    Returns
    -------
    numpy.ndarray
        (N, P) multiplicative factors.
    """
    system = table.phase.crystal_system
    a, c = params["a_angstrom"], params["c_angstrom"]
    g = _reciprocal_cartesian(table.member_hkl, a, c, system)
    directions = np.asarray(table.phase.texture_directions)[params["texture_direction"]]
    pref = np.stack(
        [_reciprocal_cartesian(d[None, :], a[i : i + 1], c[i : i + 1], system)[0, 0] for i, d in enumerate(directions)]
    )
    cos_alpha = np.einsum("nmk,nk->nm", g, pref) / (np.linalg.norm(g, axis=-1) * np.linalg.norm(pref, axis=-1)[:, None])
    cos2 = np.clip(cos_alpha**2, 0.0, 1.0)
    r = params["texture_r"][:, None]
    weights = (r**2 * cos2 + (1.0 - cos2) / r) ** -1.5
    return weights @ table.member_average


def peak_positions_deg(
    table: PeakTable,
    phase_params: dict[str, np.ndarray],
    measurement: dict[str, np.ndarray],
    wavelength_angstrom: float = CU_KA_WAVELENGTH_A,
) -> np.ndarray:
    """Observed 2θ (degrees) of every reflection, NaN where Bragg's law has no solution.

    2θ = 2 asin(λ / 2d(1 + strain)) + zero offset − (2 s cos θ / R) (sample displacement s in mm).
    ``wavelength_angstrom`` (Å) defaults to the weighted Cu Kα 1.54184 Å (``realism.py`` passes the
    Kα1, Kα2, Kβ and W Lα1 lines).

    Returns
    -------
    numpy.ndarray
        (N, P) peak positions in degrees.
    """
    d = d_spacing_angstrom(
        table.hkl, phase_params["a_angstrom"][:, None], phase_params["c_angstrom"][:, None], table.phase.crystal_system
    ) * (1.0 + phase_params["strain"][:, None])
    sin_theta = wavelength_angstrom / (2.0 * d)
    theta = np.arcsin(np.where(sin_theta < 1.0, sin_theta, np.nan))
    displacement_deg = np.rad2deg(-2.0 * measurement["displacement_mm"][:, None] * np.cos(theta) / GONIOMETER_RADIUS_MM)
    return np.rad2deg(2.0 * theta) + measurement["zero_offset_deg"][:, None] + displacement_deg


def peak_fwhm_deg(
    two_theta_deg: np.ndarray, phase_params: dict[str, np.ndarray], measurement: dict[str, np.ndarray]
) -> np.ndarray:
    """FWHM (degrees): Scherrer size width K λ / (L cos θ) and instrumental width added in quadrature."""
    theta = np.deg2rad(two_theta_deg) / 2.0
    size_angstrom = phase_params["crystallite_size_nm"][:, None] * 10.0
    scherrer_deg = np.rad2deg(SCHERRER_K * CU_KA_WAVELENGTH_A / (size_angstrom * np.cos(theta)))
    instrument_deg = measurement["instrument_fwhm_deg"][:, None] + measurement["instrument_tan_fwhm_deg"][
        :, None
    ] * np.tan(theta)
    return np.sqrt(scherrer_deg**2 + instrument_deg**2)


def phase_signal(
    name: str,
    phase_params: dict[str, np.ndarray],
    measurement: dict[str, np.ndarray],
    two_theta_deg: np.ndarray = TWO_THETA_DEG,
) -> np.ndarray:
    """Noise-free diffraction signal of one phase, each pattern scaled to a maximum of 1.

    Area-normalised pseudo-Voigt peaks (η Lorentzian + (1 − η) Gaussian, same FWHM) with
    integrated intensity ``|F|^2 m × LP(2θ) × March-Dollase``.

    Returns
    -------
    numpy.ndarray
        float32 (N, len(two_theta_deg)).
    """
    table = peak_table(name)
    position = peak_positions_deg(table, phase_params, measurement)
    valid = np.isfinite(position)
    position = np.where(valid, position, -1000.0)
    intensity = table.structure_intensity[phase_params["prototype"]] * march_dollase(table, phase_params)
    intensity = np.where(valid, intensity * lorentz_polarisation(np.where(valid, position, 45.0)), 0.0)
    fwhm = peak_fwhm_deg(np.where(valid, position, 45.0), phase_params, measurement)
    return render_peaks(position, intensity, fwhm, phase_params["eta"], two_theta_deg)


def render_peaks(
    position_deg: np.ndarray,
    intensity: np.ndarray,
    fwhm_deg: np.ndarray,
    eta: np.ndarray,
    two_theta_deg: np.ndarray = TWO_THETA_DEG,
) -> np.ndarray:
    """Sum of area-normalised pseudo-Voigt peaks (N, P) on the grid, each pattern scaled to a maximum of 1."""
    out = pseudo_voigt_sum(position_deg, intensity, fwhm_deg, eta, two_theta_deg)
    return out / np.maximum(out.max(axis=1, keepdims=True), 1e-30)


def pseudo_voigt_sum(
    position_deg: np.ndarray,
    intensity: np.ndarray,
    fwhm_deg: np.ndarray,
    eta: np.ndarray,
    two_theta_deg: np.ndarray = TWO_THETA_DEG,
    fwhm_left_deg: np.ndarray | None = None,
) -> np.ndarray:
    """Sum of area-normalised pseudo-Voigt peaks (not rescaled).

    Parameters
    ----------
    position_deg, intensity, fwhm_deg : numpy.ndarray
        (N, P) peak maxima (2θ, degrees), integrated intensities and FWHM (degrees).
    eta : numpy.ndarray
        (N,) Lorentzian fraction.
    two_theta_deg : numpy.ndarray
        The grid (degrees).
    fwhm_left_deg : numpy.ndarray, optional
        (N, P) FWHM (degrees) of the low-angle side: a split pseudo-Voigt whose left half has this
        width and right half ``fwhm_deg``, continuous at the maximum and normalised to unit area
        by the mean width. None: symmetric peaks.

    Returns
    -------
    numpy.ndarray
        float32 (N, len(two_theta_deg)).
    """
    eta = eta[:, None, None].astype(np.float32)
    grid = np.asarray(two_theta_deg, dtype=np.float32)
    out = np.empty((len(position_deg), len(grid)), dtype=np.float32)
    chunk = max(1, 2_000_000 // (len(grid) * max(position_deg.shape[1], 1)))
    for start in range(0, len(position_deg), chunk):
        s = slice(start, start + chunk)
        h = fwhm_deg[s, :, None].astype(np.float32)
        delta = grid[None, None, :] - position_deg[s, :, None].astype(np.float32)
        if fwhm_left_deg is None:
            u = (delta / h) ** 2
            norm = h
        else:
            left = fwhm_left_deg[s, :, None].astype(np.float32)
            u = (delta / np.where(delta < 0, left, h)) ** 2
            norm = np.float32(0.5) * (left + h)
        gauss = np.float32(np.sqrt(4.0 * np.log(2.0) / np.pi)) * np.exp(np.float32(-4.0 * np.log(2.0)) * u)
        lorentz = np.float32(2.0 / np.pi) / (1.0 + 4.0 * u)
        profile = (eta[s] * lorentz + (1.0 - eta[s]) * gauss) / norm
        out[s] = np.einsum("npg,np->ng", profile, intensity[s].astype(np.float32))
    return out


RANDOM_PEAKS_RANGE = (3, 25)


def simulate_random_peaks(
    n: int, rng: np.random.Generator, profile: RangeProfile = STANDARD
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Patterns of no structure at all: 3-25 peaks at uniformly random 2θ with random (Pareto) intensities.

    Generic "not a known phase" examples for outlier exposure. Widths, profiles and the measurement (shifts,
    background, noise) are drawn as for real phases, so only the peak arrangement is unphysical.
    """
    n_peaks = RANDOM_PEAKS_RANGE[1]
    position = rng.uniform(TWO_THETA_MIN_DEG, TWO_THETA_MAX_DEG, (n, n_peaks))
    present = np.arange(n_peaks)[None, :] < rng.integers(RANDOM_PEAKS_RANGE[0], n_peaks + 1, n)[:, None]
    intensity = rng.pareto(1.5, (n, n_peaks)) * present
    phase_params = sample_phase_params(KNOWN_PHASES[0], n, rng, profile)
    measurement = sample_measurement_params(n, rng, profile)
    fwhm = peak_fwhm_deg(position, phase_params, measurement)
    signal = render_peaks(np.where(present, position, -1000.0), intensity, fwhm, phase_params["eta"])
    return finish(signal, measurement, rng), {"n_peaks": present.sum(axis=1)}


def finish(
    signal: np.ndarray,
    measurement: dict[str, np.ndarray],
    rng: np.random.Generator,
    two_theta_deg: np.ndarray = TWO_THETA_DEG,
) -> np.ndarray:
    """Add background, Poisson and Gaussian noise to max-1 signals and normalise to [0, 1].

    The background is ``level × (1 + c1 t + c2 t²)`` (t from -1 to 1 over the grid, always > 0)
    plus a Gaussian amorphous hump. Counting noise: the pattern is scaled to ``max_counts`` at its
    maximum and replaced by a Poisson draw; then Gaussian noise of ``gaussian_sigma × max_counts``.
    ``max_counts`` = 0 means no noise. Finally min-max normalisation to [0, 1].

    Returns
    -------
    numpy.ndarray
        float32 (N, len(two_theta_deg)) in [0, 1].
    """
    grid = np.asarray(two_theta_deg, dtype=np.float64)
    t = (2.0 * (grid - grid[0]) / (grid[-1] - grid[0]) - 1.0)[None, :]
    m = {k: v[:, None] for k, v in measurement.items()}
    background = m["background_level"] * (1.0 + m["background_c1"] * t + m["background_c2"] * t**2)
    background = background + m["hump_amplitude"] * np.exp(
        -4.0 * np.log(2.0) * ((grid[None, :] - m["hump_center_deg"]) / np.maximum(m["hump_fwhm_deg"], 1e-6)) ** 2
    )
    total = signal.astype(np.float64) + background
    total /= total.max(axis=1, keepdims=True)
    noisy = m["max_counts"] > 0
    expected = total * m["max_counts"]
    counts = (
        rng.poisson(expected).astype(np.float64)
        + rng.standard_normal(total.shape) * m["gaussian_sigma"] * m["max_counts"]
    )
    total = np.where(noisy, counts, total)
    low = total.min(axis=1, keepdims=True)
    high = total.max(axis=1, keepdims=True)
    return ((total - low) / np.maximum(high - low, 1e-12)).astype(np.float32)


def simulate_phase(
    name: str, n: int, rng: np.random.Generator, profile: RangeProfile = STANDARD
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Simulate n single-phase patterns with parameters drawn from the ranges of ``profile``.

    Returns
    -------
    patterns : numpy.ndarray
        float32 (n, 2048) in [0, 1] on ``TWO_THETA_DEG``.
    params : dict of numpy.ndarray
        Phase parameters (``phase_`` prefix) and measurement parameters, each (n,).
    """
    phase = phase_by_name(name)
    phase_params = sample_phase_params(phase, n, rng, profile)
    measurement = sample_measurement_params(n, rng, profile)
    patterns = finish(phase_signal(name, phase_params, measurement), measurement, rng)
    return patterns, {**{f"phase_{k}": v for k, v in phase_params.items()}, **measurement}


def mix(
    name_a: str,
    params_a: dict[str, np.ndarray],
    name_b: str,
    params_b: dict[str, np.ndarray],
    fraction_a: np.ndarray,
    measurement: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Binary mixture x·A + (1 − x)·B of max-1 phase signals in one measurement, then ``finish``.

    With ``fraction_a`` = 1 this equals ``finish(phase_signal(A))`` with the same measurement and rng
    state: the phases share the measurement (shifts, instrument, background, noise).
    """
    x = np.asarray(fraction_a, dtype=np.float32)[:, None]
    signal = x * phase_signal(name_a, params_a, measurement) + (1.0 - x) * phase_signal(name_b, params_b, measurement)
    return finish(signal, measurement, rng)


def simulate_mixtures(
    name_a: str, name_b: str, fraction_a: np.ndarray, rng: np.random.Generator, profile: RangeProfile = STANDARD
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mixtures of two phases at the given fractions of A, all other parameters drawn at random.

    Returns
    -------
    patterns : numpy.ndarray
        float32 (n, 2048) in [0, 1].
    params : dict of numpy.ndarray
        ``fraction_a``, ``a_*`` and ``b_*`` phase parameters and the measurement parameters.
    """
    fraction_a = np.asarray(fraction_a, dtype=np.float64)
    n = len(fraction_a)
    params_a = sample_phase_params(phase_by_name(name_a), n, rng, profile)
    params_b = sample_phase_params(phase_by_name(name_b), n, rng, profile)
    measurement = sample_measurement_params(n, rng, profile)
    patterns = mix(name_a, params_a, name_b, params_b, fraction_a, measurement, rng)
    params = {"fraction_a": fraction_a, **{f"a_{k}": v for k, v in params_a.items()}}
    params.update({f"b_{k}": v for k, v in params_b.items()})
    params.update(measurement)
    return patterns, params


def mixing_sweep(
    name_a: str,
    name_b: str,
    fractions: np.ndarray,
    n_per_fraction: int,
    rng: np.random.Generator,
    profile: RangeProfile = STANDARD,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A mixing-fraction sweep: ``n_per_fraction`` random mixtures at each fraction of A (0 to 1)."""
    fraction_a = np.repeat(np.asarray(fractions, dtype=np.float64), n_per_fraction)
    return simulate_mixtures(name_a, name_b, fraction_a, rng, profile)


# --------------------------------------------------------------------------- dataset writing


def _stack_params(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"param_{k}": np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _quantise(patterns: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return np.round(patterns * 255.0).astype(np.uint8)
    return patterns.astype(np.float16)


def single_phase_set(
    names: list[str], n_per_class: int, rng: np.random.Generator, dtype: str, profile: RangeProfile = STANDARD
) -> dict[str, np.ndarray]:
    """Arrays of a single-phase split: ``x``, integer ``y`` (index into ``names``), ``class_names``, params."""
    patterns, labels, params = [], [], []
    for label, name in enumerate(names):
        x, p = simulate_phase(name, n_per_class, rng, profile)
        patterns.append(x)
        labels.append(np.full(n_per_class, label, dtype=np.int64))
        params.append(p)
    return {
        "x": _quantise(np.concatenate(patterns), dtype),
        "y": np.concatenate(labels),
        "class_names": np.array(names),
        "two_theta_deg": TWO_THETA_DEG,
        **_stack_params(params),
    }


def mixture_set(
    names: list[str],
    n_per_pair: int,
    rng: np.random.Generator,
    dtype: str,
    n_fractions: int = 50,
    profile: RangeProfile = STANDARD,
) -> dict[str, np.ndarray]:
    """Binary mixtures of every pair of ``names`` on a grid of ``n_fractions`` fractions in (0, 1), like the seed."""
    fractions = np.linspace(0.0, 1.0, n_fractions + 2)[1:-1]
    patterns, a_labels, b_labels, params = [], [], [], []
    for i, name_a in enumerate(names):
        for j in range(i + 1, len(names)):
            x, p = simulate_mixtures(name_a, names[j], np.resize(fractions, n_per_pair), rng, profile)
            patterns.append(x)
            a_labels.append(np.full(n_per_pair, i, dtype=np.int64))
            b_labels.append(np.full(n_per_pair, j, dtype=np.int64))
            params.append(p)
    return {
        "x": _quantise(np.concatenate(patterns), dtype),
        "y_a": np.concatenate(a_labels),
        "y_b": np.concatenate(b_labels),
        "fraction_a": np.concatenate([p["fraction_a"] for p in params]),
        "class_names": np.array(names),
        "two_theta_deg": TWO_THETA_DEG,
        **_stack_params(params),
    }


def write_datasets(
    out: Path, per_class: int, eval_per_class: int, seed: int, dtype: str = "float16", train_profile: str = "wide"
) -> dict:
    """Write the dataset ``.npz`` files and ``manifest.json``.

    ``train``/``val`` (known classes) are drawn from ``train_profile``; ``test``, ``novel`` and
    ``mixtures`` from the standard ranges; ``test_wide``, ``novel_wide`` and ``mixtures_wide`` from the
    wide ranges (the robustness sets). Each file gets its own child of
    ``numpy.random.SeedSequence(seed)``, so the splits are independent random draws (continuous
    parameters: no pattern is repeated across splits) and a file does not change when another split's
    size changes.

    Returns
    -------
    dict
        The manifest.
    """
    out.mkdir(parents=True, exist_ok=True)
    known = [p.name for p in KNOWN_PHASES]
    novel = [p.name for p in NOVEL_PHASES]
    children = np.random.SeedSequence(seed).spawn(8)
    train_ranges = PROFILES[train_profile]
    plan = {
        "train": lambda rng: single_phase_set(known, per_class, rng, dtype, train_ranges),
        "val": lambda rng: single_phase_set(known, eval_per_class, rng, dtype, train_ranges),
        "test": lambda rng: single_phase_set(known, eval_per_class, rng, dtype),
        "novel": lambda rng: single_phase_set(novel, eval_per_class, rng, dtype),
        "mixtures": lambda rng: mixture_set(known, eval_per_class, rng, dtype),
        "test_wide": lambda rng: single_phase_set(known, eval_per_class, rng, dtype, WIDE),
        "novel_wide": lambda rng: single_phase_set(novel, eval_per_class, rng, dtype, WIDE),
        "mixtures_wide": lambda rng: mixture_set(known, eval_per_class, rng, dtype, profile=WIDE),
    }
    files = {}
    for (split, make), child in zip(plan.items(), children, strict=True):
        started = time.perf_counter()
        arrays = make(np.random.default_rng(child))
        seconds = time.perf_counter() - started
        digest = write_npz(out / f"{split}.npz", arrays)
        files[f"{split}.npz"] = {
            "sha256": digest,
            "n_patterns": len(arrays["x"]),
            "class_names": arrays["class_names"].tolist(),
        }
        print(
            f"{split}: {len(arrays['x'])} patterns in {seconds:.1f} s ({len(arrays['x']) / seconds:.0f} patterns/s)",
            file=sys.stderr,
        )
    manifest = {
        "arguments": {
            "out": str(out),
            "per_class": per_class,
            "eval_per_class": eval_per_class,
            "seed": seed,
            "dtype": dtype,
            "train_profile": train_profile,
        },
        "command": (
            f"python -m training.xrd.simulate --out {out} --per-class {per_class} --eval-per-class {eval_per_class}"
            f" --seed {seed} --dtype {dtype} --train-profile {train_profile}"
        ),
        "wavelength_angstrom": CU_KA_WAVELENGTH_A,
        "two_theta_deg": {"min": TWO_THETA_MIN_DEG, "max": TWO_THETA_MAX_DEG, "n_points": N_POINTS},
        "known_classes": known,
        "novel_classes": novel,
        "phase_ranges": PHASE_RANGES,
        "measurement_ranges": MEASUREMENT_RANGES,
        "wide_phase_ranges": WIDE_PHASE_RANGES,
        "wide_measurement_ranges": WIDE_MEASUREMENT_RANGES,
        "wide_lattice_margin": WIDE_LATTICE_MARGIN,
        "hump_probability": HUMP_PROBABILITY,
        "lattice_ranges_angstrom": {
            p.name: {
                "a": p.a_range_angstrom,
                "c_over_a": p.c_over_a_range,
                "a_wide": WIDE.a_range_angstrom(p),
                "c_over_a_wide": WIDE.c_over_a_range(p),
                "prototypes": [q.name for q in p.prototypes],
            }
            for p in KNOWN_PHASES + NOVEL_PHASES
        },
        "reference_peaks_sha256": hashlib.sha256(CACHE_PATH.read_bytes()).hexdigest(),
        "numpy_version": np.__version__,
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the simulated XRD datasets (issue 4).")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--per-class", type=int, required=True, help="training patterns per known class")
    parser.add_argument(
        "--eval-per-class",
        type=int,
        default=None,
        help="val/test/novel patterns per class and mixtures per pair (default: per-class / 5)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float16", "uint8"], default="float16")
    parser.add_argument(
        "--train-profile", choices=sorted(PROFILES), default="wide", help="sampling ranges of train/val (default: wide)"
    )
    args = parser.parse_args(argv)
    eval_per_class = args.eval_per_class if args.eval_per_class is not None else max(1, args.per_class // 5)
    write_datasets(args.out, args.per_class, eval_per_class, args.seed, args.dtype, args.train_profile)


if __name__ == "__main__":
    main()
