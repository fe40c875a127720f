"""Lab-realistic powder XRD patterns and the evaluation / calibration dataset writer.

Renders on the model grid (``matserve.codecs.xrd.MODEL_GRID_DEG``: 2048 points, 20-90° 2θ on the
Cu Kα 1.54184 Å scale, min-max scaled to [0, 1], float32) with the physics of ``simulate.py``
(reference peak tables, Bragg positions with zero shift and displacement, Lorentz-polarisation,
March-Dollase, pseudo-Voigt rendering, background and counting noise via ``simulate.finish``),
plus the effects of a real laboratory diffractometer. A real instrument reports raw 2θ, which the
serving codec takes as 1.54184 Å data: each line below is put at its own Bragg angle on that axis.

Phase lattices, strain, crystallite size, η and texture direction come from ``simulate.WIDE``.
Effects, drawn per pattern (uniform unless stated; "p" = probability of being present):

=========================  ===========================================================  ==========================
effect                     model                                                        range
=========================  ===========================================================  ==========================
Kα1/Kα2 doublet            each reflection at λ1 = 1.540593 Å and λ2 = 1.544427 Å        I(Kα2)/I(Kα1) = 0.5; Kα1
                           (2θ from its d-spacing), LP at each line's angle             only with p 0.2
Kβ (Ni filter leak)        extra line at 1.392250 Å                                     0-2 % of Kα1, p 0.3
W Lα1 (tube residue)       extra line at 1.47642 Å                                      0-2 % of Kα1, p 0.05
instrument (Caglioti)      FWHM² = U tan²θ + V tanθ + W (deg²), V ≥ -1.8 √(UW) so        U 0.001-0.02, V -0.01-0,
                           FWHM² > 0                                                    W 0.001-0.01 deg²
size / microstrain         Scherrer K λ / (L cos θ), K 0.9; 4 ε tan θ; all three widths  L 3-200 nm log-uniform;
                           added in quadrature                                          ε 0-0.3 %
axial divergence           split pseudo-Voigt: low-angle FWHM = (1 + A / tan θ) × the    A 0-0.05
                           high-angle FWHM (area-normalised, maximum at the line)
zero shift                 Δ2θ = z                                                      ±0.15°
sample displacement        Δ2θ = -2 s cos θ / R, R = 240 mm                             s ±0.5 mm
texture                    March-Dollase r (``simulate.march_dollase``)                 strong: 0.3-3 log-uniform
                                                                                        (p 0.3), else 0.7-1.4
background                 level × (1 + c₁t + c₂t²) + amorphous hump (simulate.WIDE)     level 0-0.3 of the peak max
fluorescence               the same slowly varying background at a high level            level 0-3, p 0.25
counting noise             Poisson at max counts (of signal + background) + Gaussian    200-200,000 log-uniform;
                           read noise                                                   σ 0-0.2 % of max
partial range              scan starts at s and/or ends at e (either, or both: 1/3       p 0.4; s 20-40°, e 75-90°
                           each); outside: the minimum inside (as the codec does)
=========================  ===========================================================  ==========================

Mixtures follow ``simulate.mix``: each phase's signal (own lattice, size, texture, microstrain) is
scaled to a maximum of 1 and combined with signal fractions summing to 1; the phases share the
measurement (lines, instrument, shifts, background, noise, range).

Run: ``python -m training.xrd.realism --out DIR --per-class N --seed S``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from training.npz import write_npz
from training.xrd.simulate import (
    GONIOMETER_RADIUS_MM,
    HUMP_PROBABILITY,
    SCHERRER_K,
    TWO_THETA_DEG,
    WIDE,
    _log_uniform,
    _uniform,
    finish,
    march_dollase,
    peak_positions_deg,
    peak_table,
    pseudo_voigt_sum,
    sample_phase_params,
    single_phase_set,
)
from training.xrd.structures import (
    ALL_NOVEL_PHASES,
    CACHE_PATH,
    KNOWN_PHASES,
    lorentz_polarisation,
    phase_by_name,
)

#: Emission lines (name, wavelength in Å, measurement key of its intensity relative to Kα1 or None).
LINES: tuple[tuple[str, float, str | None], ...] = (
    ("kalpha1", 1.540593, None),
    ("kalpha2", 1.544427, "kalpha2_ratio"),
    ("kbeta", 1.392250, "kbeta_ratio"),
    ("w_lalpha1", 1.47642, "w_lalpha_ratio"),
)
KALPHA2_RATIO = 0.5
MONOCHROMATOR_PROBABILITY = 0.2  # Kα1 only
KBETA_PROBABILITY = 0.3
W_LALPHA_PROBABILITY = 0.05
FLUORESCENCE_PROBABILITY = 0.25
STRONG_TEXTURE_PROBABILITY = 0.3
PARTIAL_RANGE_PROBABILITY = 0.4
#: Reflections further than this (degrees) outside 20-90° for every pattern of a batch are not rendered.
RENDER_MARGIN_DEG = 10.0

LAB_PHASE_RANGES: dict[str, tuple[float, float]] = {
    "texture_r_strong": (0.3, 3.0),  # log-uniform, with probability STRONG_TEXTURE_PROBABILITY
    "texture_r": (0.7, 1.4),
    "microstrain": (0.0, 0.003),  # ε, FWHM 4 ε tan θ (radians)
}
LAB_MEASUREMENT_RANGES: dict[str, tuple[float, float]] = {
    "zero_offset_deg": (-0.15, 0.15),
    "displacement_mm": (-0.5, 0.5),
    "caglioti_u_deg2": (0.001, 0.02),
    "caglioti_v_deg2": (-0.01, 0.0),
    "caglioti_w_deg2": (0.001, 0.01),
    "asymmetry": (0.0, 0.05),
    "kbeta_ratio": (0.0, 0.02),
    "w_lalpha_ratio": (0.0, 0.02),
    "background_level": WIDE.measurement["background_level"],
    "fluorescence_level": (0.0, 3.0),
    "background_c1": WIDE.measurement["background_c1"],
    "background_c2": WIDE.measurement["background_c2"],
    "hump_amplitude": WIDE.measurement["hump_amplitude"],
    "hump_center_deg": WIDE.measurement["hump_center_deg"],
    "hump_fwhm_deg": WIDE.measurement["hump_fwhm_deg"],
    "max_counts": (200.0, 200000.0),  # log-uniform
    "gaussian_sigma": (0.0, 0.002),
    "range_start_deg": (20.0, 40.0),
    "range_end_deg": (75.0, 90.0),
}

#: Novel types never to be used for training or calibration (evaluation only).
HELD_OUT_IMPOSTORS: tuple[str, ...] = (
    "rocksalt_Fm-3m",
    "wurtzite_P6_3mc",
    "diamond_Fd-3m",
    "zincblende_F-43m",
    "b2_Pm-3m",
)
#: Novel types that may be used to calibrate a novelty score.
CALIBRATION_IMPOSTORS: tuple[str, ...] = (
    "rutile_P4_2-mnm",
    "perovskite_Pm-3m",
    "fluorite_Fm-3m",
    "l12_Pm-3m",
    "nias_P6_3-mmc",
    "a15_Pm-3n",
)

KNOWN = [p.name for p in KNOWN_PHASES]
IMPOSTORS = [p.name for p in ALL_NOVEL_PHASES]


def sample_lab_phase_params(name: str, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Phase parameters: ``simulate.WIDE`` draws, lab texture (strong in ~30 %) and microstrain.

    Returns
    -------
    dict of numpy.ndarray
        Those of ``simulate.sample_phase_params`` with ``texture_r`` replaced, plus ``strong_texture``
        (bool) and ``microstrain`` (ε, dimensionless); each (n,).
    """
    params = sample_phase_params(phase_by_name(name), n, rng, WIDE)
    strong = rng.random(n) < STRONG_TEXTURE_PROBABILITY
    params["texture_r"] = np.where(
        strong,
        _log_uniform(rng, LAB_PHASE_RANGES["texture_r_strong"], n),
        _uniform(rng, LAB_PHASE_RANGES["texture_r"], n),
    )
    params["strong_texture"] = strong
    params["microstrain"] = _uniform(rng, LAB_PHASE_RANGES["microstrain"], n)
    return params


def sample_lab_measurement(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Measurement parameters shared by the phases of a pattern (see the module table); each (n,)."""
    r = LAB_MEASUREMENT_RANGES
    m = {k: _uniform(rng, r[k], n) for k in ("zero_offset_deg", "displacement_mm", "asymmetry")}
    u, v, w = (_uniform(rng, r[k], n) for k in ("caglioti_u_deg2", "caglioti_v_deg2", "caglioti_w_deg2"))
    m.update(caglioti_u_deg2=u, caglioti_v_deg2=np.maximum(v, -1.8 * np.sqrt(u * w)), caglioti_w_deg2=w)
    m["kalpha2_ratio"] = np.where(rng.random(n) < MONOCHROMATOR_PROBABILITY, 0.0, KALPHA2_RATIO)
    m["kbeta_ratio"] = _uniform(rng, r["kbeta_ratio"], n) * (rng.random(n) < KBETA_PROBABILITY)
    m["w_lalpha_ratio"] = _uniform(rng, r["w_lalpha_ratio"], n) * (rng.random(n) < W_LALPHA_PROBABILITY)
    fluorescence = rng.random(n) < FLUORESCENCE_PROBABILITY
    m["fluorescence"] = fluorescence
    m["background_level"] = np.where(
        fluorescence, _uniform(rng, r["fluorescence_level"], n), _uniform(rng, r["background_level"], n)
    )
    for k in ("background_c1", "background_c2", "hump_amplitude", "hump_center_deg", "hump_fwhm_deg"):
        m[k] = _uniform(rng, r[k], n)
    m["hump_amplitude"] = m["hump_amplitude"] * (rng.random(n) < HUMP_PROBABILITY)
    m["max_counts"] = _log_uniform(rng, r["max_counts"], n)
    m["gaussian_sigma"] = _uniform(rng, r["gaussian_sigma"], n)
    partial = rng.random(n) < PARTIAL_RANGE_PROBABILITY
    mode = rng.integers(0, 3, n)  # 0: late start, 1: early end, 2: both
    start, end = _uniform(rng, r["range_start_deg"], n), _uniform(rng, r["range_end_deg"], n)
    m["range_start_deg"] = np.where(partial & (mode != 1), start, TWO_THETA_DEG[0])
    m["range_end_deg"] = np.where(partial & (mode != 0), end, TWO_THETA_DEG[-1])
    return m


def lab_fwhm_deg(
    two_theta_deg: np.ndarray,
    wavelength_angstrom: float,
    phase_params: dict[str, np.ndarray],
    measurement: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """High- and low-angle FWHM (degrees) of lines at ``two_theta_deg`` (N, P).

    Caglioti instrument width, Scherrer size width and microstrain width 4 ε tan θ in quadrature; the
    low-angle side is wider by (1 + A / tan θ) (axial divergence).
    """
    theta = np.deg2rad(two_theta_deg) / 2.0
    tan = np.tan(theta)
    m = {k: measurement[k][:, None] for k in ("caglioti_u_deg2", "caglioti_v_deg2", "caglioti_w_deg2", "asymmetry")}
    instrument2 = np.maximum(m["caglioti_u_deg2"] * tan**2 + m["caglioti_v_deg2"] * tan + m["caglioti_w_deg2"], 1e-8)
    size_angstrom = phase_params["crystallite_size_nm"][:, None] * 10.0
    scherrer = np.rad2deg(SCHERRER_K * wavelength_angstrom / (size_angstrom * np.cos(theta)))
    strain = np.rad2deg(4.0 * phase_params["microstrain"][:, None] * tan)
    right = np.sqrt(instrument2 + scherrer**2 + strain**2)
    return right, right * (1.0 + m["asymmetry"] / tan)


def lab_phase_signal(
    name: str,
    phase_params: dict[str, np.ndarray],
    measurement: dict[str, np.ndarray],
    two_theta_deg: np.ndarray = TWO_THETA_DEG,
) -> np.ndarray:
    """Noise-free signal of one phase with all emission lines, each pattern scaled to a maximum of 1.

    Returns
    -------
    numpy.ndarray
        float32 (N, len(two_theta_deg)).
    """
    table = peak_table(name)
    base = table.structure_intensity[phase_params["prototype"]] * march_dollase(table, phase_params)
    grid = np.asarray(two_theta_deg, dtype=np.float64)
    out = np.zeros((len(base), len(grid)), dtype=np.float32)
    for _, wavelength, ratio_key in LINES:
        ratio = np.ones(len(base)) if ratio_key is None else measurement[ratio_key]
        rows = np.flatnonzero(ratio > 0)
        if rows.size == 0:
            continue
        pp = {k: v[rows] for k, v in phase_params.items()}
        mm = {k: v[rows] for k, v in measurement.items()}
        position = peak_positions_deg(table, pp, mm, wavelength)
        inside = np.isfinite(position) & (np.abs(position - grid.mean()) < (grid[-1] - grid[0]) / 2 + RENDER_MARGIN_DEG)
        keep = inside.any(axis=0)
        if not keep.any():
            continue
        position, inside = position[:, keep], inside[:, keep]
        safe = np.where(inside, position, 45.0)
        intensity = np.where(inside, base[rows][:, keep] * ratio[rows, None] * lorentz_polarisation(safe), 0.0)
        right, left = lab_fwhm_deg(safe, wavelength, pp, mm)
        out[rows] += pseudo_voigt_sum(np.where(inside, position, -1000.0), intensity, right, pp["eta"], grid, left)
    return out / np.maximum(out.max(axis=1, keepdims=True), 1e-30)


def apply_measured_range(
    patterns: np.ndarray, start_deg: np.ndarray, end_deg: np.ndarray, two_theta_deg: np.ndarray = TWO_THETA_DEG
) -> np.ndarray:
    """Set points outside [start, end] (degrees) to the minimum inside, then min-max scale to [0, 1].

    This is what the serving codec does with a partially measured pattern.
    """
    inside = (two_theta_deg[None, :] >= start_deg[:, None]) & (two_theta_deg[None, :] <= end_deg[:, None])
    x = patterns.astype(np.float64)
    floor = np.where(inside, x, np.inf).min(axis=1, keepdims=True)
    high = np.where(inside, x, -np.inf).max(axis=1, keepdims=True)
    x = np.where(inside, x, floor)
    return ((x - floor) / np.maximum(high - floor, 1e-12)).astype(np.float32)


def lab_patterns(
    names: list[str],
    fractions: np.ndarray,
    phase_params: list[dict[str, np.ndarray]],
    measurement: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Mix the max-1 signals of each component slot with ``fractions`` (n, k), then measure.

    ``names[j]`` is the class of slot j (the same for every pattern); ``phase_params[j]`` its parameters. Background and noise via ``simulate.finish``, then the measured range.

    Returns
    -------
    numpy.ndarray
        float32 (n, 2048) in [0, 1].
    """
    signal = np.zeros((len(fractions), len(TWO_THETA_DEG)), dtype=np.float32)
    for j, name in enumerate(names):
        signal += fractions[:, j : j + 1].astype(np.float32) * lab_phase_signal(name, phase_params[j], measurement)
    x = finish(signal, measurement, rng)
    return apply_measured_range(x, measurement["range_start_deg"], measurement["range_end_deg"])


def _range_array(measurement: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([measurement["range_start_deg"], measurement["range_end_deg"]], axis=1)


def _full_range(n: int) -> np.ndarray:
    return np.tile([TWO_THETA_DEG[0], TWO_THETA_DEG[-1]], (n, 1))


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def lab_single_phase_set(names: list[str], n_per_class: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Single-phase lab patterns of each of ``names``: ``x`` float16, ``y``, ``param_*``, ``measured_range_deg``."""
    xs, parts = [], []
    for label, name in enumerate(names):
        pp = sample_lab_phase_params(name, n_per_class, rng)
        m = sample_lab_measurement(n_per_class, rng)
        xs.append(lab_patterns([name], np.ones((n_per_class, 1)), [pp], m, rng))
        parts.append(
            {"y": np.full(n_per_class, label, dtype=np.int64), **{f"phase_{k}": v for k, v in pp.items()}, **m}
        )
    params = _concat(parts)
    return {
        "x": np.concatenate(xs).astype(np.float16),
        "y": params.pop("y"),
        "class_names": np.array(names),
        "two_theta_deg": TWO_THETA_DEG,
        "measured_range_deg": _range_array(params),
        **{f"param_{k}": v for k, v in params.items()},
    }


def lab_mixture_set(combos: list[tuple[str, ...]], fractions: list[np.ndarray], rng: np.random.Generator) -> dict:
    """Lab mixtures: for each combination of known classes the given (n, k) signal fractions.

    Returns ``components`` (n, 3) class indices (-1 padded), ``fractions`` (n, 3) float32 (0 padded),
    per-slot phase parameters ``param_p{j}_*`` and the measurement parameters.
    """
    xs, components, fracs, parts = [], [], [], []
    for combo, frac in zip(combos, fractions, strict=True):
        n, k = frac.shape
        pps = [sample_lab_phase_params(name, n, rng) for name in combo]
        m = sample_lab_measurement(n, rng)
        xs.append(lab_patterns(list(combo), frac, pps, m, rng))
        components.append(
            np.pad(np.tile([KNOWN.index(c) for c in combo], (n, 1)), ((0, 0), (0, 3 - k)), constant_values=-1)
        )
        fracs.append(np.pad(frac, ((0, 0), (0, 3 - k))).astype(np.float32))
        parts.append({**{f"p{j}_{key}": v for j, pp in enumerate(pps) for key, v in pp.items()}, **m})
    params = _concat(parts)
    return {
        "x": np.concatenate(xs).astype(np.float16),
        "components": np.concatenate(components).astype(np.int64),
        "fractions": np.concatenate(fracs),
        "class_names": np.array(KNOWN),
        "two_theta_deg": TWO_THETA_DEG,
        "measured_range_deg": _range_array(params),
        **{f"param_{k}": v for k, v in params.items()},
    }


def binary_fractions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) signal fractions, the second (minor) phase uniform in 0.05-0.5."""
    minor = rng.uniform(0.05, 0.5, n)
    return np.stack([1.0 - minor, minor], axis=1)


def ternary_fractions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) Dirichlet(1, 1, 1) fractions clipped to at least 0.1, renormalised to sum 1."""
    f = np.clip(rng.dirichlet(np.ones(3), n), 0.1, None)
    return f / f.sum(axis=1, keepdims=True)


def _impostor_extras(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = np.array(IMPOSTORS)
    return {**arrays, "impostor_names": names, "held_out": np.isin(names, HELD_OUT_IMPOSTORS)}


def write_datasets(out: Path, per_class: int, seed: int) -> dict:
    """Write the six evaluation / calibration ``.npz`` files and ``manifest.json`` into ``out``.

    Each file uses its own child of ``numpy.random.SeedSequence(seed)``; same arguments, same bytes.

    Returns
    -------
    dict
        The manifest.
    """
    out.mkdir(parents=True, exist_ok=True)
    pairs = [(KNOWN[i], KNOWN[j]) for i in range(3) for j in range(i + 1, 3)]
    plan = {
        "known_lab": lambda rng: lab_single_phase_set(KNOWN, per_class, rng),
        "known_clean": lambda rng: {
            **single_phase_set(KNOWN, per_class, rng, "float16", WIDE),
            "measured_range_deg": _full_range(3 * per_class),
        },
        "impostors_lab": lambda rng: _impostor_extras(lab_single_phase_set(IMPOSTORS, per_class, rng)),
        "impostors_clean": lambda rng: _impostor_extras(
            {
                **single_phase_set(IMPOSTORS, per_class, rng, "float16", WIDE),
                "measured_range_deg": _full_range(len(IMPOSTORS) * per_class),
            }
        ),
        "mixtures2_lab": lambda rng: lab_mixture_set(pairs, [binary_fractions(per_class, rng) for _ in pairs], rng),
        "mixtures3_lab": lambda rng: lab_mixture_set([tuple(KNOWN)], [ternary_fractions(per_class, rng)], rng),
    }
    files = {}
    for (name, make), child in zip(plan.items(), np.random.SeedSequence(seed).spawn(len(plan)), strict=True):
        started = time.perf_counter()
        arrays = make(np.random.default_rng(child))
        seconds = time.perf_counter() - started
        files[f"{name}.npz"] = {"sha256": write_npz(out / f"{name}.npz", arrays), "n_patterns": len(arrays["x"])}
        rate = len(arrays["x"]) / seconds
        print(f"{name}: {len(arrays['x'])} patterns in {seconds:.1f} s ({rate:.0f} patterns/s)", file=sys.stderr)
    manifest = {
        "arguments": {"out": str(out), "per_class": per_class, "seed": seed},
        "command": f"python -m training.xrd.realism --out {out} --per-class {per_class} --seed {seed}",
        "lines_angstrom": {name: wavelength for name, wavelength, _ in LINES},
        "probabilities": {
            "monochromator": MONOCHROMATOR_PROBABILITY,
            "kbeta": KBETA_PROBABILITY,
            "w_lalpha": W_LALPHA_PROBABILITY,
            "fluorescence": FLUORESCENCE_PROBABILITY,
            "strong_texture": STRONG_TEXTURE_PROBABILITY,
            "partial_range": PARTIAL_RANGE_PROBABILITY,
            "hump": HUMP_PROBABILITY,
        },
        "kalpha2_ratio": KALPHA2_RATIO,
        "goniometer_radius_mm": GONIOMETER_RADIUS_MM,
        "lab_phase_ranges": LAB_PHASE_RANGES,
        "lab_measurement_ranges": LAB_MEASUREMENT_RANGES,
        "wide_phase_ranges": WIDE.phase,
        "wide_measurement_ranges": WIDE.measurement,
        "lattice_ranges_angstrom": {
            p.name: {"a": WIDE.a_range_angstrom(p), "c_over_a": WIDE.c_over_a_range(p)}
            for p in KNOWN_PHASES + ALL_NOVEL_PHASES
        },
        "known_classes": KNOWN,
        "impostor_names": IMPOSTORS,
        "held_out_impostors": list(HELD_OUT_IMPOSTORS),
        "calibration_impostors": list(CALIBRATION_IMPOSTORS),
        "reference_peaks_sha256": hashlib.sha256(CACHE_PATH.read_bytes()).hexdigest(),
        "numpy_version": np.__version__,
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m training.xrd.realism --out DIR --per-class N --seed S``."""
    parser = argparse.ArgumentParser(description="Write the lab-realism and impostor XRD evaluation sets.")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--per-class", type=int, required=True, help="patterns per class / type / mixture pair")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_datasets(args.out, args.per_class, args.seed)


if __name__ == "__main__":
    main()
