"""XRD codec: resampling to the model grid, wavelength conversion, and every refusal with its message."""

from __future__ import annotations

import numpy as np
import pytest

from matserve.codecs.xrd import (
    CU_KA_ANGSTROM,
    MIN_SPAN_DEG,
    MODEL_GRID_DEG,
    N_POINTS,
    PatternError,
    encode_batch,
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


def test_partial_coverage_is_filled_with_background() -> None:
    grid = np.linspace(30, 90, 3000)  # 86 % of 20-90°
    encoded = encode_pattern(grid, peak(grid, 50.0))
    assert encoded.coverage == pytest.approx(60 / 70)
    assert encoded.measured_range_deg == pytest.approx((30.0, 90.0))
    assert np.all(encoded.intensity[MODEL_GRID_DEG < 29.9] == 0)


@pytest.mark.parametrize(("low", "high"), [(35.0, 90.0), (30.0, 70.0), (40.0, 80.0), (55.0, 90.0), (20.0, 55.0)])
def test_a_span_of_35_degrees_anywhere_in_20_90_is_accepted_with_its_range(low: float, high: float) -> None:
    grid = np.linspace(low, high, 3000)
    encoded = encode_pattern(grid, peak(grid, (low + high) / 2))
    assert encoded.measured_range_deg == pytest.approx((low, high))
    assert encoded.coverage == pytest.approx((high - low) / 70)
    outside = (MODEL_GRID_DEG < low - 0.1) | (MODEL_GRID_DEG > high + 0.1)
    assert np.all(encoded.intensity[outside] == 0)  # the background fill
    assert abs(MODEL_GRID_DEG[np.argmax(encoded.intensity)] - (low + high) / 2) < 0.05


def test_the_measured_range_is_clipped_to_20_90() -> None:
    grid = np.linspace(10, 100, 5000)
    assert encode_pattern(grid, peak(grid, 50.0)).measured_range_deg == (20.0, 90.0)
    grid = np.linspace(45, 120, 5000)  # 45-90° inside: a 45° span
    assert encode_pattern(grid, peak(grid, 50.0)).measured_range_deg == (45.0, 90.0)


@pytest.mark.parametrize(
    ("low", "high", "shown"),
    [
        (60.0, 90.0, r"covers 60\.00-90\.00° 2θ \(Cu Kα scale\), a span of 30\.00°"),
        (30.0, 60.0, r"covers 30\.00-60\.00° .*a span of 30\.00°"),
        (70.0, 120.0, r"covers 70\.00-120\.00° .*a span of 20\.00° inside the 20-90°"),
        (100.0, 130.0, r"covers 100\.00-130\.00° .*a span of 0\.00°"),
    ],
)
def test_a_span_under_35_degrees_is_refused_saying_what_is_needed(low: float, high: float, shown: str) -> None:
    grid = np.linspace(low, high, 3000)
    with pytest.raises(PatternError, match=shown) as refused:
        encode_pattern(grid, peak(grid, (low + high) / 2))
    assert f"a span of at least {MIN_SPAN_DEG:g}° inside 20-90° is needed (e.g. 55-90°" in str(refused.value)


def test_a_span_just_over_the_limit_is_accepted_and_just_under_refused() -> None:
    grid = np.linspace(55.0 - 1e-6, 90, 3000)
    assert encode_pattern(grid, peak(grid, 70.0)).measured_range_deg[0] == pytest.approx(55.0)
    grid = np.linspace(55.01, 90, 3000)
    with pytest.raises(PatternError, match=r"span of 34\.99°"):
        encode_pattern(grid, peak(grid, 70.0))


def test_the_on_grid_fast_path_and_the_per_item_path_give_identical_ranges() -> None:
    rng = np.random.default_rng(3)
    rows = rng.random((3, N_POINTS)) * 100
    on_grid = [{"two_theta_deg": MODEL_GRID_DEG.tolist(), "intensity": row.tolist()} for row in rows]
    fast = encode_batch(on_grid)
    # one item off the grid sends the whole batch through the per-item path
    off = np.linspace(35, 90, 1500)
    slow = encode_batch([*on_grid, {"two_theta_deg": off.tolist(), "intensity": peak(off, 50.0).tolist()}])
    assert fast.measured_range_deg.dtype == np.float32 and fast.measured_range_deg.shape == (3, 2)
    np.testing.assert_array_equal(fast.measured_range_deg, slow.measured_range_deg[:3])
    np.testing.assert_array_equal(fast.measured_range_deg, np.tile(np.float32([20, 90]), (3, 1)))
    assert [r["measured_range_deg"] for r in fast.results] == [r["measured_range_deg"] for r in slow.results[:3]]
    assert fast.results[0] == {"coverage": 1.0, "measured_range_deg": [20.0, 90.0], "error": None}
    assert slow.results[3]["measured_range_deg"] == [35.0, 90.0]
    np.testing.assert_array_equal(slow.measured_range_deg[3], np.float32([35, 90]))
    np.testing.assert_array_equal(fast.patterns, slow.patterns[:3])


def test_a_refused_item_has_no_range_and_no_row() -> None:
    short = np.linspace(60, 90, 500)
    good = np.linspace(30, 90, 500)
    batch = encode_batch([{"two_theta_deg": short.tolist(), "intensity": peak(short, 70).tolist()},
                          {"two_theta_deg": good.tolist(), "intensity": peak(good, 70).tolist()}])  # fmt: skip
    assert batch.rows == [1] and batch.measured_range_deg.shape == (1, 2)
    assert batch.results[0]["measured_range_deg"] is None and "at least 35°" in batch.results[0]["error"]
    assert batch.results[1]["measured_range_deg"] == [30.0, 90.0]
    empty = encode_batch([])
    assert empty.measured_range_deg.shape == (0, 2) and empty.patterns.shape == (0, N_POINTS)


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
