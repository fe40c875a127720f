"""Lab-realism XRD simulation and the impostor structure types (training/xrd/realism.py, structures.py)."""

from __future__ import annotations

import numpy as np
import pytest

from training.xrd import realism
from training.xrd import simulate as sim
from training.xrd.structures import (
    ALL_NOVEL_PHASES,
    CU_KA_WAVELENGTH_A,
    IMPOSTOR_PHASES,
    d_spacing_angstrom,
    phase_by_name,
)

GRID = sim.TWO_THETA_DEG
KA1, KA2 = realism.LINES[0][1], realism.LINES[1][1]


def bragg_deg(d_angstrom: float, wavelength_angstrom: float = CU_KA_WAVELENGTH_A) -> float:
    return float(np.rad2deg(2.0 * np.arcsin(wavelength_angstrom / (2.0 * d_angstrom))))


def refined_maximum_deg(pattern: np.ndarray, near_deg: float, window_deg: float) -> tuple[float, float]:
    """(2θ refined by a parabola, height) of the highest point within ±window of ``near_deg``."""
    masked = np.where(np.abs(GRID - near_deg) < window_deg, pattern, -np.inf)
    i = int(np.argmax(masked))
    y0, y1, y2 = pattern[i - 1], pattern[i], pattern[i + 1]
    offset = 0.5 * (y0 - y2) / (y0 - 2.0 * y1 + y2)
    return float(GRID[i] + offset * (GRID[1] - GRID[0])), float(y1)


def quiet_measurement(n: int = 1, **overrides: float) -> dict[str, np.ndarray]:
    """Lab measurement without shifts, asymmetry, extra lines, background or noise; narrow instrument."""
    m = {key: np.zeros(n) for key in realism.sample_lab_measurement(1, np.random.default_rng(0))}
    m.update(
        caglioti_w_deg2=np.full(n, 0.03**2),
        kalpha2_ratio=np.full(n, realism.KALPHA2_RATIO),
        range_start_deg=np.full(n, GRID[0]),
        range_end_deg=np.full(n, GRID[-1]),
    )
    for key, value in overrides.items():
        m[key] = np.full(n, float(value))
    return m


def sharp_phase(name: str, a_angstrom: float, prototype: int = 0, c_angstrom: float | None = None) -> dict:
    params = sim.ideal_phase_params(phase_by_name(name), 1, prototype=prototype, a_angstrom=a_angstrom)
    params["c_angstrom"] = np.full(1, c_angstrom if c_angstrom is not None else a_angstrom)
    params.update(crystallite_size_nm=np.full(1, 5000.0), eta=np.zeros(1), microstrain=np.zeros(1))
    return params


def test_kalpha_doublet_split_and_ratio():
    # fcc (311) with its Kα1 line at exactly 80°: a = √11 λ1 / (2 sin 40°).
    a = np.sqrt(11.0) * KA1 / (2.0 * np.sin(np.deg2rad(40.0)))
    expected_split = bragg_deg(a / np.sqrt(11.0), KA2) - 80.0
    assert 0.2 < expected_split < 0.26
    x = realism.lab_phase_signal("fcc_Fm-3m", sharp_phase("fcc_Fm-3m", a), quiet_measurement())[0]
    p1, h1 = refined_maximum_deg(x, 80.0, 0.1)
    p2, h2 = refined_maximum_deg(x, 80.0 + expected_split, 0.1)
    assert abs(p1 - 80.0) < 0.01 and abs(p2 - 80.0 - expected_split) < 0.01
    assert abs(h2 / h1 - 0.5) < 0.05
    between = x[(GRID > p1 + 0.07) & (GRID < p2 - 0.07)]
    assert between.max() < 0.2 * h2  # two resolved maxima
    # Kα1 only (monochromator): no second line.
    mono = realism.lab_phase_signal("fcc_Fm-3m", sharp_phase("fcc_Fm-3m", a), quiet_measurement(kalpha2_ratio=0))[0]
    assert mono[np.abs(GRID - p2) < 0.03].max() < 0.05 * mono[np.abs(GRID - 80.0) < 0.03].max()


def test_kbeta_line_and_axial_asymmetry():
    a = 3.615
    m = quiet_measurement(kbeta_ratio=0.02, kalpha2_ratio=0)
    x = realism.lab_phase_signal("fcc_Fm-3m", sharp_phase("fcc_Fm-3m", a, prototype=1), m)[0]
    kb, height = refined_maximum_deg(x, bragg_deg(a / np.sqrt(3.0), realism.LINES[2][1]), 0.1)
    assert abs(kb - bragg_deg(a / np.sqrt(3.0), realism.LINES[2][1])) < 0.01 and 0.005 < height < 0.05
    # Asymmetry widens the low-angle side: more intensity below the maximum than above it.
    asym = realism.lab_phase_signal("fcc_Fm-3m", sharp_phase("fcc_Fm-3m", a), quiet_measurement(asymmetry=0.05))[0]
    peak = bragg_deg(a / np.sqrt(3.0), KA1)
    left = asym[(GRID > peak - 0.5) & (GRID < peak - 0.02)].sum()
    right = asym[(GRID > peak + 0.02) & (GRID < peak + 0.1)].sum()  # Kα2 is above +0.1°
    assert left > 1.3 * right


def test_caglioti_width_stays_positive():
    m = realism.sample_lab_measurement(20000, np.random.default_rng(1))
    tan = np.tan(np.deg2rad(np.linspace(10.0, 45.0, 200)))[None, :]
    fwhm2 = m["caglioti_u_deg2"][:, None] * tan**2 + m["caglioti_v_deg2"][:, None] * tan + m["caglioti_w_deg2"][:, None]
    assert fwhm2.min() > 0


def test_partial_range_floor_fill_and_record():
    x = np.linspace(0.0, 1.0, len(GRID))[None, :] ** 2 + 0.3
    out = realism.apply_measured_range(x, np.array([30.0]), np.array([80.0]))[0]
    inside = (GRID >= 30.0) & (GRID <= 80.0)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.all(out[~inside] == 0.0) and out[inside][0] == 0.0 and out[inside][1] > 0.0

    data = realism.lab_single_phase_set(["bcc_Im-3m"], 200, np.random.default_rng(3))
    ranges = data["measured_range_deg"]
    assert ranges.shape == (200, 2)
    partial = (ranges[:, 0] > GRID[0]) | (ranges[:, 1] < GRID[-1])
    assert 0.25 < partial.mean() < 0.55
    assert np.all((ranges[:, 0] >= 20.0) & (ranges[:, 0] <= 40.0) & (ranges[:, 1] >= 75.0) & (ranges[:, 1] <= 90.0))
    for row, (start, end) in zip(data["x"][partial], ranges[partial], strict=True):
        outside = (GRID < start) | (GRID > end)
        assert np.all(row[outside] == row[~outside].min()) and row.max() == 1.0


def test_same_seed_same_files_and_different_seed_differs(tmp_path):
    first = realism.write_datasets(tmp_path / "a", 2, 5)
    second = realism.write_datasets(tmp_path / "b", 2, 5)
    other = realism.write_datasets(tmp_path / "c", 2, 6)
    assert len(first["files"]) == 6
    for name, entry in first["files"].items():
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert entry["sha256"] == second["files"][name]["sha256"] != other["files"][name]["sha256"]
    mix = np.load(tmp_path / "a" / "mixtures2_lab.npz")
    assert mix["x"].shape == (6, 2048) and mix["x"].dtype == np.float16
    assert np.allclose(mix["fractions"].sum(axis=1), 1.0) and np.all(mix["components"][:, 2] == -1)
    assert np.all(mix["components"][:, 0] != mix["components"][:, 1])
    minor = mix["fractions"][:, 1]
    assert np.all((minor >= 0.05) & (minor <= 0.5))
    tri = np.load(tmp_path / "a" / "mixtures3_lab.npz")
    assert np.all(np.sort(tri["components"], axis=1) == [0, 1, 2]) and tri["fractions"].min() >= 0.09
    imp = np.load(tmp_path / "a" / "impostors_lab.npz")
    assert list(imp["impostor_names"]) == [p.name for p in ALL_NOVEL_PHASES]
    assert [str(n) for n in imp["impostor_names"][imp["held_out"]]] == [
        n for n in imp["impostor_names"] if n in realism.HELD_OUT_IMPOSTORS
    ]


def test_held_out_and_calibration_lists_partition_the_novel_types():
    held, calib = set(realism.HELD_OUT_IMPOSTORS), set(realism.CALIBRATION_IMPOSTORS)
    assert not held & calib
    assert held | calib == {p.name for p in ALL_NOVEL_PHASES}
    assert len(held) == len(realism.HELD_OUT_IMPOSTORS) and len(calib) == len(realism.CALIBRATION_IMPOSTORS)


#: First prototype of each impostor type: strongest hkl, other lines that must show, lines that must not.
IMPOSTOR_LINES = {
    "rocksalt_Fm-3m": ((2, 0, 0), [(1, 1, 1), (2, 2, 0)], []),  # MgO: weak (111) 36.9°, (200) 42.9°
    "zincblende_F-43m": ((1, 1, 1), [(2, 2, 0), (3, 1, 1)], []),  # GaAs
    "diamond_Fd-3m": ((1, 1, 1), [(2, 2, 0), (3, 1, 1)], [(2, 0, 0)]),  # Si: no (200)
    "b2_Pm-3m": ((1, 1, 0), [(1, 0, 0), (2, 0, 0)], []),  # NiAl: (100) superlattice line
    "l12_Pm-3m": ((1, 1, 1), [(1, 0, 0), (1, 1, 0), (2, 0, 0)], []),  # Cu3Au
    "nias_P6_3-mmc": ((1, 0, 1), [(1, 0, 2), (1, 1, 0)], []),  # NiAs
    "a15_Pm-3n": ((2, 1, 0), [(2, 0, 0), (2, 1, 1)], [(1, 1, 1)]),  # Cr3Si: (hhl) needs l even
}


@pytest.mark.parametrize("phase", IMPOSTOR_PHASES, ids=lambda p: p.name)
def test_impostor_first_prototype_peaks(phase):
    proto = phase.prototypes[0]
    params = sim.ideal_phase_params(phase, 1)
    x = sim.phase_signal(phase.name, params, sim.ideal_measurement_params(1))[0]

    def angle(hkl: tuple[int, int, int]) -> float:
        d = d_spacing_angstrom(
            np.array([hkl]), np.array(proto.a_angstrom), np.array(proto.c_angstrom), phase.crystal_system
        )
        return bragg_deg(float(d[0]))

    strongest, present, absent = IMPOSTOR_LINES[phase.name]
    assert abs(refined_maximum_deg(x, 55.0, 35.0)[0] - angle(strongest)) < 0.05, proto.name
    for hkl in present:
        position, height = refined_maximum_deg(x, angle(hkl), 0.3)
        assert abs(position - angle(hkl)) < 0.05 and height > 0.03, (proto.name, hkl)
    for hkl in absent:
        assert x[np.abs(GRID - angle(hkl)) < 0.2].max() < 0.01, (proto.name, hkl)
