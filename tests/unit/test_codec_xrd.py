"""XRD codec: resampling to the model grid, wavelength conversion, and every refusal with its message."""

from __future__ import annotations

import numpy as np
import pytest

from matserve.codecs.xrd import (
    CU_KA_ANGSTROM,
    MODEL_GRID_DEG,
    N_POINTS,
    PatternError,
    encode_pattern,
    to_cu_ka_deg,
)

MO_KA_ANGSTROM = 0.7107


def peak(two_theta_deg: np.ndarray, centre_deg: float, fwhm_deg: float = 0.3) -> np.ndarray:
    sigma = fwhm_deg / 2.3548
    return 100 + 5000 * np.exp(-0.5 * ((two_theta_deg - centre_deg) / sigma) ** 2)


@pytest.mark.parametrize("n_points", [N_POINTS, 20_000, 700])
def test_any_grid_lands_on_the_model_grid_with_the_peak_in_place(n_points: int) -> None:
    grid = np.linspace(20, 90, n_points)
    encoded = encode_pattern(grid, peak(grid, 43.3))
    assert encoded.intensity.shape == (N_POINTS,) and encoded.intensity.dtype == np.float32
    assert encoded.intensity.min() == 0 and encoded.intensity.max() == 1
    step = MODEL_GRID_DEG[1] - MODEL_GRID_DEG[0]
    assert abs(MODEL_GRID_DEG[np.argmax(encoded.intensity)] - 43.3) <= step
    assert encoded.coverage == pytest.approx(1.0)


def test_a_finer_grid_is_averaged_not_aliased() -> None:
    fine = np.linspace(20, 90, 70_001)
    noisy = peak(fine, 60.0) + np.random.default_rng(0).normal(0, 200, fine.size).clip(-100, None)
    clean = encode_pattern(fine, peak(fine, 60.0)).intensity
    encoded = encode_pattern(fine, noisy.clip(0, None)).intensity
    # ~34 input points per cell: the cell mean shrinks noise ~6x compared with picking one point.
    assert np.std(encoded[:500] - clean[:500]) < 0.01


def test_another_wavelength_is_mapped_to_the_cu_ka_scale() -> None:
    d_angstrom = CU_KA_ANGSTROM / (2 * np.sin(np.radians(43.3 / 2)))
    mo_two_theta_deg = 2 * np.degrees(np.arcsin(MO_KA_ANGSTROM / (2 * d_angstrom)))
    grid = np.linspace(8.5, 42.0, 4000)  # Mo Kα scan covering Cu Kα 20-90° after conversion
    encoded = encode_pattern(grid, peak(grid, mo_two_theta_deg, 0.15), wavelength_angstrom=MO_KA_ANGSTROM)
    assert abs(MODEL_GRID_DEG[np.argmax(encoded.intensity)] - 43.3) < 0.05
    assert to_cu_ka_deg(np.array([43.3]), CU_KA_ANGSTROM)[0] == pytest.approx(43.3)


def test_partial_coverage_is_filled_with_background_down_to_the_limit() -> None:
    grid = np.linspace(30, 90, 3000)  # 86 % of 20-90°
    encoded = encode_pattern(grid, peak(grid, 50.0))
    assert encoded.coverage == pytest.approx(60 / 70)
    assert np.all(encoded.intensity[MODEL_GRID_DEG < 29.9] == 0)
    with pytest.raises(PatternError, match=r"covers 40\.00-90\.00° .* at least 80%"):
        encode_pattern(np.linspace(40, 90, 3000), peak(np.linspace(40, 90, 3000), 50.0))


GRID = np.linspace(20, 90, 1000)


@pytest.mark.parametrize(
    ("two_theta_deg", "intensity", "message"),
    [
        (GRID, peak(GRID, 40)[:-1], "has 1000 points but intensity has 999"),
        (GRID[:50], peak(GRID[:50], 40), "too few; at least 100"),
        (np.linspace(20, 90, 100_001), np.ones(100_001), "over the limit of 100000"),
        (GRID, np.where(GRID > 50, np.nan, 1.0), "intensity contains NaN or infinite"),
        (np.where(GRID > 50, np.inf, GRID), np.ones(1000), "two_theta_deg contains NaN or infinite"),
        (GRID[::-1], peak(GRID, 40), "strictly increasing; it is not at index 1"),
        (GRID, peak(GRID, 40) - 200, "must be non-negative; index 0"),
        (GRID, np.full(1000, 7.0), "constant"),
        (GRID.reshape(10, 100), np.ones((10, 100)), "1-D arrays"),
        (["a"] * 200, np.ones(200), "arrays of numbers"),
    ],
)
def test_bad_patterns_are_refused_with_a_reason(two_theta_deg: object, intensity: object, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        encode_pattern(two_theta_deg, intensity)


def test_wavelength_out_of_range_is_refused() -> None:
    with pytest.raises(PatternError, match=r"outside the accepted 0\.1-3\.0 Å"):
        encode_pattern(GRID, peak(GRID, 40), wavelength_angstrom=5.0)


def test_pattern_on_the_model_grid_is_taken_point_for_point():
    intensity = np.zeros(N_POINTS)
    intensity[1000] = 5.0  # a one-point spike survives unsmoothed
    intensity[10] = 1.0
    encoded = encode_pattern(MODEL_GRID_DEG, intensity)
    np.testing.assert_allclose(encoded.intensity, intensity / 5.0, atol=1e-7)
    shifted = encode_pattern(MODEL_GRID_DEG + 0.3 * (MODEL_GRID_DEG[1] - MODEL_GRID_DEG[0]), intensity)
    assert (shifted.intensity[995:1006] > 0.05).sum() >= 2  # off the grid: cell means spread the spike
