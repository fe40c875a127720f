"""The physically based XRD simulator of issue 4 (training/xrd): determinism, ranges, Bragg positions,
shift directions, mixtures, novel classes, and the reference peak cache against pymatgen."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from training.xrd import simulate as sim
from training.xrd.structures import (
    CU_KA_WAVELENGTH_A,
    KNOWN_PHASES,
    NOVEL_PHASES,
    d_spacing_angstrom,
    load_cache,
    phase_by_name,
    phase_definitions_sha256,
)

FCC, BCC, HCP = (p.name for p in KNOWN_PHASES)
GRID = sim.TWO_THETA_DEG


def refined_peak_deg(pattern: np.ndarray, near_deg: float, window_deg: float = 1.0) -> float:
    """2θ of the highest point within ±window of ``near_deg``, refined by a parabola through 3 points."""
    masked = np.where(np.abs(GRID - near_deg) < window_deg, pattern, -np.inf)
    i = int(np.argmax(masked))
    y0, y1, y2 = pattern[i - 1], pattern[i], pattern[i + 1]
    offset = 0.5 * (y0 - y2) / (y0 - 2.0 * y1 + y2)
    return float(GRID[i] + offset * (GRID[1] - GRID[0]))


def ideal_pattern(
    name: str, prototype: int = 0, measurement: dict | None = None, **phase_overrides: float
) -> np.ndarray:
    phase = phase_by_name(name)
    params = sim.ideal_phase_params(phase, 1, prototype=prototype, **phase_overrides)
    measurement = measurement if measurement is not None else sim.ideal_measurement_params(1)
    return sim.phase_signal(name, params, measurement)[0]


def bragg_two_theta_deg(d_angstrom: float) -> float:
    return float(np.rad2deg(2.0 * np.arcsin(CU_KA_WAVELENGTH_A / (2.0 * d_angstrom))))


def assert_same_values(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Two simulations hold the same arrays, compared by value: labels and names exactly, floats to within a
    rounding difference (1e-12 relative for float64 parameters; one ulp for float32 / float16 patterns, whose
    values lie in [0, 1]). A change of seed, draw order or physics moves them by far more."""
    assert sorted(a) == sorted(b)
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.dtype == y.dtype and x.shape == y.shape, key
        if np.issubdtype(x.dtype, np.floating):
            eps = float(np.finfo(x.dtype).eps)
            np.testing.assert_allclose(y, x, rtol=max(eps, 1e-12), atol=eps if eps > 1e-12 else 0.0, err_msg=key)
        else:
            np.testing.assert_array_equal(y, x, err_msg=key)


def test_cache_matches_phase_tables():
    cache = load_cache()
    assert cache["phase_definitions_sha256"] == phase_definitions_sha256()
    assert set(cache["phases"]) == {p.name for p in KNOWN_PHASES + NOVEL_PHASES}


def test_same_seed_same_patterns_and_different_seed_differs():
    a, pa = sim.simulate_phase(HCP, 20, np.random.default_rng(7))
    b, pb = sim.simulate_phase(HCP, 20, np.random.default_rng(7))
    c, _ = sim.simulate_phase(HCP, 20, np.random.default_rng(8))
    assert_same_values({"x": a, **pa}, {"x": b, **pb})
    assert np.abs(a - c).max() > 0.1


def test_shape_and_range_for_every_class():
    for phase in KNOWN_PHASES + NOVEL_PHASES:
        x, params = sim.simulate_phase(phase.name, 16, np.random.default_rng(1))
        assert x.shape == (16, 2048) and x.dtype == np.float32
        assert np.isfinite(x).all()
        assert np.allclose(x.min(axis=1), 0.0) and np.allclose(x.max(axis=1), 1.0)
        assert all(v.shape == (16,) for v in params.values())
    assert GRID.shape == (2048,) and GRID[0] == 20.0 and GRID[-1] == 90.0


def test_bragg_positions_fcc_cu_and_bcc_fe():
    cu = ideal_pattern(FCC, prototype=1, a_angstrom=3.615)
    assert phase_by_name(FCC).prototypes[1].name == "Cu"
    # The two strongest peaks are (111) and (200).
    strongest = sorted(refined_peak_deg(cu, GRID[i]) for i in np.argsort(cu)[::-1][:1])
    assert abs(strongest[0] - 43.3) < 0.1
    second = refined_peak_deg(cu, 50.4)
    assert cu[np.abs(GRID - second).argmin()] > 0.3
    assert abs(second - 50.4) < 0.1
    # And exactly where Bragg's law puts them for λ = 1.54184 Å (d111 = a/√3, d200 = a/2).
    assert abs(refined_peak_deg(cu, 43.3) - bragg_two_theta_deg(3.615 / np.sqrt(3))) < 0.02
    assert abs(second - bragg_two_theta_deg(3.615 / 2)) < 0.02

    fe = ideal_pattern(BCC, prototype=0, a_angstrom=2.866)
    assert phase_by_name(BCC).prototypes[0].name == "Fe"
    assert abs(GRID[np.argmax(fe)] - 44.7) < 0.1
    assert abs(refined_peak_deg(fe, 44.7) - bragg_two_theta_deg(2.866 / np.sqrt(2))) < 0.02


def test_hexagonal_d_spacing_matches_pymatgen_lattice():
    from pymatgen.core import Lattice

    hkl = np.array([[1, 0, 0], [0, 0, 2], [1, 0, 1], [1, 1, 0], [2, -1, 3]])
    ours = d_spacing_angstrom(hkl, np.array(2.95), np.array(4.69), "hexagonal")
    lattice = Lattice.hexagonal(2.95, 4.69)
    assert np.allclose(ours, [lattice.d_hkl(tuple(v)) for v in hkl], rtol=1e-10)


@pytest.mark.parametrize(
    ("phase_override", "measurement_override", "direction"),
    [
        ({"strain": 0.005}, {}, -1),
        ({"strain": -0.005}, {}, +1),
        ({}, {"zero_offset_deg": 0.1}, +1),
        ({}, {"displacement_mm": 0.15}, -1),
        ({"a_angstrom": 3.65}, {}, -1),
    ],
)
def test_shifts_move_peaks_the_right_way(phase_override, measurement_override, direction):
    reference = refined_peak_deg(ideal_pattern(FCC, prototype=1, a_angstrom=3.615), 43.35)
    measurement = sim.ideal_measurement_params(1, **measurement_override)
    overrides = {"a_angstrom": 3.615, **phase_override}
    shifted = refined_peak_deg(ideal_pattern(FCC, prototype=1, measurement=measurement, **overrides), 43.35)
    assert direction * (shifted - reference) > 0.03


def test_texture_enhances_planes_normal_to_direction():
    # Cu with r < 1 along [111] (texture_direction 0): (111) grows relative to (200).
    powder = ideal_pattern(FCC, prototype=1)
    textured = ideal_pattern(FCC, prototype=1, texture_r=0.7)
    ratio = lambda y: y[np.abs(GRID - 50.49).argmin()] / y[np.abs(GRID - 43.35).argmin()]  # noqa: E731
    assert ratio(textured) < 0.8 * ratio(powder)


def test_scherrer_small_crystallites_broaden_peaks():
    sharp = ideal_pattern(BCC, crystallite_size_nm=100.0)
    broad = ideal_pattern(BCC, crystallite_size_nm=5.0)
    width = lambda y: int((y > 0.5).sum())  # noqa: E731
    assert width(broad) > 5 * width(sharp)


def test_mixture_with_fraction_one_is_the_pure_phase():
    n = 8
    rng = np.random.default_rng(3)
    params_a = sim.sample_phase_params(phase_by_name(FCC), n, rng)
    params_b = sim.sample_phase_params(phase_by_name(HCP), n, rng)
    measurement = sim.sample_measurement_params(n, rng)
    pure = sim.finish(sim.phase_signal(FCC, params_a, measurement), measurement, np.random.default_rng(11))
    mixed = sim.mix(FCC, params_a, HCP, params_b, np.ones(n), measurement, np.random.default_rng(11))
    assert np.allclose(pure, mixed, atol=1e-5)
    half = sim.mix(FCC, params_a, HCP, params_b, np.full(n, 0.5), measurement, np.random.default_rng(11))
    assert np.abs(half - pure).mean() > 0.01


def test_mixing_sweep_fractions_and_shapes():
    fractions = np.array([0.1, 0.5, 0.9])
    x, params = sim.mixing_sweep(FCC, BCC, fractions, 4, np.random.default_rng(0))
    assert x.shape == (12, 2048)
    assert np.array_equal(params["fraction_a"], np.repeat(fractions, 4))


def test_novel_classes_differ_from_known_ones():
    known = np.stack([ideal_pattern(p.name, prototype=i) for p in KNOWN_PHASES for i in range(len(p.prototypes))])
    known_unit = known / np.linalg.norm(known, axis=1, keepdims=True)
    for phase in NOVEL_PHASES:
        for i in range(len(phase.prototypes)):
            novel = ideal_pattern(phase.name, prototype=i)
            cosine = known_unit @ (novel / np.linalg.norm(novel))
            assert cosine.max() < 0.6, (phase.name, i, cosine.max())


def test_dataset_command_is_deterministic(tmp_path):
    """Same arguments, same datasets (compared by value); the manifest fingerprints the files it wrote."""
    for run in ("a", "b"):
        sim.main(["--out", str(tmp_path / run), "--per-class", "6", "--eval-per-class", "4", "--seed", "5"])
    splits = ["train", "val", "test", "novel", "mixtures", "test_wide", "novel_wide", "mixtures_wide"]
    for name in [f"{split}.npz" for split in splits]:
        with np.load(tmp_path / "a" / name) as a, np.load(tmp_path / "b" / name) as b:
            assert_same_values(dict(a), dict(b))
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    # The manifests differ only in the output directory they record.
    for m in (manifest, manifest_b):
        m.pop("command")
        m["arguments"].pop("out")
    assert manifest == manifest_b
    assert manifest["arguments"] == {
        "per_class": 6,
        "eval_per_class": 4,
        "seed": 5,
        "dtype": "float16",
        "train_profile": "wide",
    }
    train, val = np.load(tmp_path / "a" / "train.npz"), np.load(tmp_path / "a" / "val.npz")
    assert train["x"].shape == (18, 2048) and train["x"].dtype == np.float16
    assert list(train["class_names"]) == [p.name for p in KNOWN_PHASES]
    assert np.bincount(train["y"]).tolist() == [6, 6, 6]
    assert not np.isin(train["param_phase_a_angstrom"], val["param_phase_a_angstrom"]).any()
    mixtures = np.load(tmp_path / "a" / "mixtures.npz")
    assert mixtures["x"].shape == (12, 2048) and ((mixtures["fraction_a"] > 0) & (mixtures["fraction_a"] < 1)).all()
    novel = np.load(tmp_path / "a" / "novel.npz")
    assert list(novel["class_names"]) == [p.name for p in NOVEL_PHASES]
    # Provenance: the manifest holds the sha256 of the file as written (bytes read back from disk).
    assert (
        manifest["files"]["train.npz"]["sha256"]
        == hashlib.sha256((tmp_path / "a" / "train.npz").read_bytes()).hexdigest()
    )
    # The training split is drawn from the wide ranges, the test split from the standard ones.
    test = np.load(tmp_path / "a" / "test.npz")
    fcc = phase_by_name(FCC)
    lo, hi = fcc.a_range_angstrom
    assert (
        (test["param_phase_a_angstrom"][test["y"] == 0] >= lo) & (test["param_phase_a_angstrom"][test["y"] == 0] <= hi)
    ).all()
    wide_lo, wide_hi = sim.WIDE.a_range_angstrom(fcc)
    assert wide_lo < lo and wide_hi > hi
    sim.main(["--out", str(tmp_path / "c"), "--per-class", "6", "--eval-per-class", "4", "--seed", "6"])
    other = np.load(tmp_path / "c" / "train.npz")
    assert np.abs(other["x"].astype(np.float32) - train["x"].astype(np.float32)).max() > 0.1


def test_reference_peaks_match_a_fresh_pymatgen_calculation():
    """The cached Cu table against XRDCalculator on a freshly built structure (~10 s: imports pymatgen)."""
    from training.xrd.structures import pymatgen_peaks

    phase = phase_by_name(FCC)
    rows = pymatgen_peaks(phase, phase.prototypes[1])
    table = load_cache()["phases"][FCC]
    cached = {tuple(h): angle for h, angle in zip(table["hkl"], table["reference_two_theta_deg"][1], strict=True)}
    for angle, _, hkl, _ in rows:
        assert abs(cached[tuple(sorted(map(abs, hkl), reverse=True))] - angle) < 1e-4


def test_wide_profile_draws_outside_the_standard_ranges():
    rng = np.random.default_rng(3)
    fcc = phase_by_name(FCC)
    standard = sim.sample_phase_params(fcc, 4000, rng)
    wide = sim.sample_phase_params(fcc, 4000, rng, sim.WIDE)
    lo, hi = fcc.a_range_angstrom
    assert lo <= standard["a_angstrom"].min() and standard["a_angstrom"].max() <= hi
    assert wide["a_angstrom"].min() < lo and wide["a_angstrom"].max() > hi
    counts = sim.sample_measurement_params(4000, rng, sim.WIDE)["max_counts"]
    assert counts.min() < sim.MEASUREMENT_RANGES["max_counts"][0]
