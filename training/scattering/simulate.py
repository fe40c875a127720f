"""Simulated X-ray detector images for the scattering sorter (issue 6, seeds 003 and 000).

Every image is drawn from a seeded random *scene*: a real detector (shape, pixel size and module-gap mask from
pyFAI's detector catalogue), a sample-detector distance, an X-ray energy, a beam centre (on or off the image),
a beamstop, and a sample of one of four techniques. Intensities are computed per detector pixel from the
scattering vector that pixel sees (flat detector normal to the beam), then counted (Poisson), with detector
effects added, and stored in the detector's own dtype and gap convention.

Geometry (lab frame): the beam travels along +z; detector x to the right (columns), y up (rows run down);
a pixel at (x, y) metres from the beam centre, at distance D, sees the exit direction ``f = (x, y, D) / |.|``.
``q = k (f - z)`` with ``k = 2 pi / lambda``, ``|q| = 4 pi sin(theta) / lambda`` (1/Angstrom); the azimuth
``chi = atan2(y, x)``.

Grazing incidence: the sample surface contains x and is tilted by the incidence angle ``alpha_i`` about it, so
its outward normal is ``n = (0, cos alpha_i, -sin alpha_i)``. The exit angle is ``alpha_f = asin(f . n)``; the
horizon is ``alpha_f = 0`` and the sample shadows everything below it. ``q_z = q . n`` and
``q_xy = sqrt(|q|^2 - q_z^2)``; the polar angle from the surface normal is ``psi = atan2(q_xy, q_z)``. The
Ewald sphere never reaches ``q_xy = 0`` at ``q_z > 0`` (beyond the specular rod), which is the missing wedge of
GIWAXS: an out-of-plane reflection appears only where its angular spread reaches the accessible region. The
Vineyard factor ``|T(alpha_f)|^2`` (Fresnel transmission with critical angle ``alpha_c``) makes the Yoneda band.

Samples (labels in parentheses; ``features`` are the multi-label targets):

* **SAXS** (1-8 m): polydisperse spheres, core-shell spheres, cylinders, Gaussian chains (Guinier and Porod
  regions near the beamstop); optional hard-sphere structure factor (``diffuse_halo``: a broad correlation
  peak); lamellar, hexagonal or cubic mesophases and the silver behenate calibrant (sharp orders: ``rings``;
  oriented: ``arcs``); fibres (equatorial streak: ``rods``).
* **WAXS** (0.08-0.45 m): powder rings of crystal structures (reflections and intensities from pymatgen, via
  the XRD model's cache, ``rings``), textured (``arcs``), coarse-grained or single-crystal spots
  (``bragg_peaks``); amorphous or semicrystalline polymer halos (``diffuse_halo``).
* **GISAXS** (1.5-6 m, alpha_i 0.08-0.6 deg): horizon and shadow, Yoneda band, specular rod and peak (often
  behind a rod beamstop), Kiessig fringes; particles with lateral order: Bragg rods (``rods``); 3D superlattices:
  spots (``bragg_peaks``); randomly oriented mesophases: rings above the horizon (``rings``).
* **GIWAXS** (0.1-0.35 m, alpha_i 0.08-0.3 deg): fibre-textured films (reflections spread about the surface
  normal: ``arcs``; sharply oriented: spots, ``bragg_peaks``), isotropic films (``rings``), amorphous halos
  (``diffuse_halo``); horizon, Yoneda band, missing wedge.

Every image is weighted by the flat detector's solid angle and the beam's polarisation (synchrotron or laboratory
source). Detector effects: Poisson counting of 0.05-2000 counts per pixel of scattering, air and parasitic scattering,
dark current, Gaussian read noise (float images), hot pixels, dead pixels, saturation at the dtype's limit, gaps
written as the detector writes them (-1 for Pilatus int32, the dtype maximum for Eiger uint16/uint32, or 0 in
15 % of images, as files converted by other software often are), calibrant-like parasitic rings, random
90-degree rotations and flips (detectors are mounted and files written in every orientation).

Simulator 1.4 adds scene variants (WAXS calibrants, SAXS on a narrow detector with the beam off an edge, empty
cells, GIWAXS with the horizon off the detector, bare-wafer grazing blanks) and detector/source effects (laboratory
sources, window shadows, large masked regions, CCDs with a pedestal or a circular active area), each with a small
probability: see :mod:`training.scattering.realism`.

Reproducible: image ``i`` of split ``s`` is drawn from ``SeedSequence([seed, SPLIT_IDS[s], i])``, whatever the
chunking or number of worker processes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from scipy.special import j1

from matserve.codecs.scattering import (
    INPUT_SIDE_PX,
    N_CHANNELS,
    EncodedImage,
    ImageError,
    encode_image,
    q_span_inv_angstrom,
    setup_features,
)
from training.scattering import realism
from training.scattering.labels import FEATURES, GEOMETRIES, GEOMETRY_OF_TECHNIQUE, TECHNIQUES

SIMULATOR_VERSION = "1.4"
"""1.4: the scene variants and detector effects of :mod:`training.scattering.realism`, and three more training
detectors (Pilatus 900k, a Rayonix/MarCCD with a circular active area, a gapless 1042 x 1042 CCD)."""

HC_KEV_ANGSTROM = 12.398419843
RUNS = Path(__file__).resolve().parent / "runs"

#: Detector families (pyFAI names). ``train`` draws from TRAIN_DETECTORS; the held-out ``test_unseen_detectors``
#: split uses only UNSEEN_DETECTORS (other shapes, gap layouts and pixel sizes) to measure generalisation.
TRAIN_DETECTORS = {
    "Pilatus100k": 2,
    "Pilatus300k": 2,
    "Pilatus1M": 3,
    "Pilatus2M": 1,
    "Eiger500k": 1,
    "Eiger1M": 2,
    "Eiger4M": 0.5,
    # Since simulator 1.4: the SMI WAXS module shape, a circular-area MarCCD/Rayonix, a gapless square CCD.
    "Pilatus900k": 0.8,
    "Rayonix133": 0.6,
    "CCD1042": 0.6,
}
UNSEEN_DETECTORS = {"Pilatus200k": 1, "Pilatus300kw": 1, "Eiger2_1M": 1, "Eiger2_4M": 0.5, "Pilatus6M": 0.3}
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "test_unseen_detectors": 3, "test_harsh": 4}


MAX_SCENE_DRAWS = 20
"""Draws of a wide-angle scene until one shows a feature (see :func:`simulate`)."""

SIM_LONG_SIDE_PX = 400
"""Training images are simulated on the detector binned so that its long side is at most this (see
:func:`detector`); held-out test images at the detector's full resolution."""


@cache
def detector(name: str, binning: int = 1) -> tuple[tuple[int, int], float, np.ndarray]:
    """(shape, pixel size in metres, gap mask True = gap) of a pyFAI detector, optionally binned.

    Binned by ``binning`` x ``binning``: a binned pixel is a gap when at least half of its pixels are, so the gap
    fraction the codec sees in each of its blocks is preserved on average.
    """
    if name in realism.SYNTHETIC_DETECTORS:
        full_shape, pixel1 = realism.SYNTHETIC_DETECTORS[name]
        mask = np.zeros(full_shape, dtype=bool)
    else:
        import pyFAI

        det = pyFAI.detector_factory(name)
        pixel1 = float(det.pixel1)
        mask = det.mask
        if mask is None:
            mask = np.zeros(det.shape, dtype=bool)
        mask = np.asarray(mask, dtype=bool)
    if binning > 1:
        rows, cols = -(-mask.shape[0] // binning), -(-mask.shape[1] // binning)
        # Beyond the last full block: outside the detector; counted as gap only for the CCDs (a circular active
        # area must stay 0 up to the binned image's edge), as in simulator 1.3 for the others.
        pad = 1.0 if name in realism.CCD_DETECTORS else 0.0
        padded = np.full((rows * binning, cols * binning), pad, dtype=np.float32)
        padded[: mask.shape[0], : mask.shape[1]] = mask
        mask = padded.reshape(rows, binning, cols, binning).mean(axis=(1, 3)) >= 0.5
    return tuple(mask.shape), pixel1 * binning, mask


def sim_binning(name: str, full_resolution: bool) -> int:
    """Binning used to simulate a detector (1 at full resolution)."""
    if full_resolution:
        return 1
    shape, _, _ = detector(name)
    return max(1, math.ceil(max(shape) / SIM_LONG_SIDE_PX))


def _dtype_of(name: str, rng: np.random.Generator) -> np.dtype:
    if name in realism.CCD_DETECTORS:
        return np.dtype(np.uint16)
    if name.startswith("Pilatus"):
        return np.dtype(np.int32) if rng.random() < 0.85 else np.dtype(np.float32)
    return np.dtype([np.uint32, np.uint16, np.int32, np.float32][rng.choice(4, p=[0.45, 0.35, 0.1, 0.1])])


@dataclass
class Scene:
    """One simulated measurement (all lengths in metres, angles in radians unless named ``_deg``)."""

    technique: str
    detector: str
    binning: int
    shape: tuple[int, int]
    pixel_m: float
    distance_m: float
    energy_kev: float
    beam_row: float
    beam_col: float
    incidence_deg: float = 0.0
    critical_deg: float = 0.0
    features: set[str] = field(default_factory=set)
    sample: str = ""
    variant: str = ""
    effects: set[str] = field(default_factory=set)
    """Scene variant and detector/source effects of :mod:`training.scattering.realism` (simulator 1.4)."""

    @property
    def wavelength_a(self) -> float:
        return HC_KEV_ANGSTROM / self.energy_kev

    @property
    def k(self) -> float:
        return 2 * math.pi / self.wavelength_a


@dataclass
class PixelGeometry:
    """Per-pixel scattering geometry (float32 arrays of the detector's shape)."""

    q: np.ndarray
    chi: np.ndarray
    fx: np.ndarray
    fy: np.ndarray
    fz: np.ndarray
    r_px: np.ndarray


def pixel_geometry(scene: Scene) -> PixelGeometry:
    """|q| (1/Angstrom), azimuth chi (rad, from +x towards +y = up), exit direction and radius in pixels."""
    rows, cols = scene.shape
    x = ((np.arange(cols, dtype=np.float32) + 0.5 - scene.beam_col) * scene.pixel_m)[None, :]
    y = ((scene.beam_row - np.arange(rows, dtype=np.float32) - 0.5) * scene.pixel_m)[:, None]
    r2 = x * x + y * y
    norm = np.sqrt(r2 + scene.distance_m**2)
    fx, fy, fz = x / norm, y / norm, scene.distance_m / norm
    q = (scene.k * np.sqrt(np.maximum(2.0 - 2.0 * fz, 0.0))).astype(np.float32)
    chi = np.arctan2(np.broadcast_to(y, r2.shape), np.broadcast_to(x, r2.shape)).astype(np.float32)
    return PixelGeometry(q, chi, fx, fy, fz, (np.sqrt(r2) / scene.pixel_m).astype(np.float32))


# ---------------------------------------------------------------------------------------------------------
# 1D profiles


def sphere_form_factor(q: np.ndarray, radius: float) -> np.ndarray:
    """Normalised |F|^2 of a sphere of ``radius`` Angstrom."""
    qr = np.maximum(q * radius, 1e-6)
    return (3 * (np.sin(qr) - qr * np.cos(qr)) / qr**3) ** 2


def polydisperse(q: np.ndarray, form, radius: float, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Volume-squared-weighted average of ``form(q, r)`` over a Gaussian size distribution (relative ``spread``)."""
    radii = np.clip(radius * (1 + spread * rng.standard_normal(24)), 0.2 * radius, None)
    weights = radii**6
    return sum(w * form(q, r) for w, r in zip(weights, radii, strict=True)) / weights.sum()


def hard_sphere_structure_factor(q: np.ndarray, radius: float, fraction: float) -> np.ndarray:
    """Percus-Yevick hard-sphere S(q) (Kinning & Thomas form), effective radius Angstrom, volume fraction."""
    a = np.maximum(2 * q * radius, 1e-4)
    phi = fraction
    alpha = (1 + 2 * phi) ** 2 / (1 - phi) ** 4
    beta = -6 * phi * (1 + phi / 2) ** 2 / (1 - phi) ** 4
    gamma = phi * alpha / 2
    sa, ca = np.sin(a), np.cos(a)
    g = (
        alpha * (sa - a * ca) / a**2
        + beta * (2 * a * sa + (2 - a**2) * ca - 2) / a**3
        + gamma * (-(a**4) * ca + 4 * ((3 * a**2 - 6) * ca + (a**3 - 6 * a) * sa + 6)) / a**5
    )
    return 1 / (1 + 24 * phi * g / a)


def peaks(q: np.ndarray, centres: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Sum of pseudo-Voigt-like (Lorentzian-Gaussian average) peaks on a 1D grid."""
    total = np.zeros_like(q)
    for centre, width, height in zip(centres, widths, heights, strict=True):
        d = (q - centre) / width
        total += height * (0.5 * np.exp(-0.5 * d * d) + 0.5 / (1 + d * d))
    return total


Q_GRID = np.geomspace(1e-4, 12.0, 4096).astype(np.float32)


def saxs_profile(
    rng: np.random.Generator, features: set[str]
) -> tuple[np.ndarray, list[tuple[float, float, float]], str]:
    """Isotropic SAXS I(q) on :data:`Q_GRID`, plus sharp mesophase/calibrant orders (q, width, height) and a name."""
    q = Q_GRID
    kind = rng.choice(
        ["spheres", "core_shell", "cylinders", "chains", "mesophase", "agbe"], p=[0.25, 0.12, 0.15, 0.1, 0.28, 0.1]
    )
    orders: list[tuple[float, float, float]] = []
    radius = float(np.exp(rng.uniform(np.log(15), np.log(400))))
    if kind == "spheres":
        profile = polydisperse(q, sphere_form_factor, radius, rng.uniform(0.03, 0.35), rng)
    elif kind == "core_shell":
        shell = radius * rng.uniform(0.1, 0.5)
        contrast = rng.uniform(-1.5, 0.6)

        def form(qq: np.ndarray, r: float) -> np.ndarray:
            vo, vi = (r + shell) ** 3, r**3
            amplitude = vo * _sphere_amplitude(qq, r + shell) + (contrast - 1) * vi * _sphere_amplitude(qq, r)
            return amplitude**2 / vo**2

        profile = polydisperse(q, form, radius, rng.uniform(0.03, 0.2), rng)
    elif kind == "cylinders":
        length = radius * rng.uniform(3, 30)
        profile = _cylinder_average(q, radius * rng.uniform(0.3, 1.0), length)
    elif kind == "chains":
        rg = radius * rng.uniform(0.3, 1.5)
        x = (q * rg) ** 2
        profile = 2 * (np.exp(-x) + x - 1) / np.maximum(x, 1e-8) ** 2
    else:
        profile = polydisperse(q, sphere_form_factor, radius * 0.3, 0.2, rng) * 0.3
    if kind in ("spheres", "core_shell") and rng.random() < 0.35:
        fraction = rng.uniform(0.15, 0.45)
        profile = profile * hard_sphere_structure_factor(q, radius * rng.uniform(1.0, 1.4), fraction)
        features.add("diffuse_halo")
    if kind == "mesophase":
        d = float(np.exp(rng.uniform(np.log(40), np.log(400))))
        lattice = rng.choice(["lamellar", "hexagonal", "bcc"])
        ratios = {
            "lamellar": [1, 2, 3, 4, 5],
            "hexagonal": [1, 3**0.5, 2, 7**0.5, 3],
            "bcc": [1, 2**0.5, 3**0.5, 2, 5**0.5],
        }[lattice]
        width = rng.uniform(0.002, 0.03) * 2 * math.pi / d
        n = rng.integers(2, len(ratios) + 1)
        orders = [
            (2 * math.pi / d * r, width * (1 + 0.2 * i), rng.uniform(0.3, 1.0) / (1 + i))
            for i, r in enumerate(ratios[:n])
        ]
    elif kind == "agbe":
        d = 58.38
        orders = [(2 * math.pi * n / d, 0.0012 * (1 + 0.3 * n), 1.0 / n**1.3) for n in range(1, 11)]
    if rng.random() < 0.6:  # a small Porod/scattering background from the matrix or solvent
        profile = profile + rng.uniform(1e-5, 1e-3)
    return profile.astype(np.float32), orders, str(kind)


def _sphere_amplitude(q: np.ndarray, r: float) -> np.ndarray:
    qr = np.maximum(q * r, 1e-6)
    return 3 * (np.sin(qr) - qr * np.cos(qr)) / qr**3


def _cylinder_average(q: np.ndarray, radius: float, length: float) -> np.ndarray:
    """Orientation-averaged cylinder |F|^2 (16-point Gauss-Legendre over the polar angle)."""
    nodes, weights = np.polynomial.legendre.leggauss(16)
    mu = 0.5 * (nodes + 1)
    total = np.zeros_like(q)
    for m, w in zip(mu, weights, strict=True):
        sin_a = math.sqrt(max(1 - m * m, 0.0))
        qr = np.maximum(q * radius * sin_a, 1e-6)
        ql = q * length * m / 2
        total += 0.5 * w * (2 * j1(qr) / qr) ** 2 * np.sinc(ql / np.pi) ** 2
    return total


@lru_cache(maxsize=1)
def crystal_reflections() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(prototype, q in 1/Angstrom, |F|^2 m) of every prototype in the XRD model's pymatgen cache."""
    from training.xrd.structures import load_cache

    cache = load_cache()
    wavelength = cache["wavelength_angstrom"]
    out = []
    for name, phase in cache["phases"].items():
        for two_theta, intensity in zip(phase["reference_two_theta_deg"], phase["structure_intensity"], strict=True):
            tt = np.array([np.nan if t is None else t for t in two_theta], dtype=float)
            ok = np.isfinite(tt) & (np.asarray(intensity) > 0)
            q = 4 * np.pi * np.sin(np.radians(tt[ok]) / 2) / wavelength
            out.append((name, q, np.asarray(intensity, dtype=float)[ok]))
    # Calibrants as simple cubic LaB6 (a = 4.157 A) and diamond Si (a = 5.431 A): all allowed reflections.
    for name, a, rule in (("LaB6", 4.157, lambda *_: True), ("Si", 5.431, _diamond_allowed)):
        qs = []
        for h in range(0, 7):
            for k in range(0, h + 1):
                for m in range(0, k + 1):
                    if h + k + m and rule(h, k, m):
                        qs.append(2 * np.pi * math.sqrt(h * h + k * k + m * m) / a)
        qs = np.unique(np.round(qs, 6))
        out.append((name, qs, np.ones_like(qs) / (1 + 0.2 * np.arange(qs.size))))
    return out


def _diamond_allowed(h: int, k: int, m: int) -> bool:
    """Reflection conditions of the diamond structure (Miller indices h, k, m)."""
    same_parity = h % 2 == k % 2 == m % 2
    return same_parity and (h % 2 == 1 or (h + k + m) % 4 == 0)


# ---------------------------------------------------------------------------------------------------------
# Scenes


def draw_scene(rng: np.random.Generator, technique: str, detectors: dict[str, float], full_resolution: bool) -> Scene:
    names = list(detectors)
    weights = np.array([detectors[n] for n in names], dtype=float)
    name = names[rng.choice(len(names), p=weights / weights.sum())]
    binning = sim_binning(name, full_resolution)
    shape, pixel, _ = detector(name, binning)
    rows, cols = shape
    energy = float(rng.uniform(7.0, 20.0))
    incidence_deg = critical_deg = 0.0
    if technique in ("gisaxs", "giwaxs"):
        critical_deg = float(rng.uniform(0.08, 0.3))
        incidence_deg = float(rng.uniform(0.08, 0.6) if technique == "gisaxs" else rng.uniform(0.08, 0.3))
    if technique == "saxs":
        distance = float(np.exp(rng.uniform(np.log(0.8), np.log(8.0))))
        on = rng.random() < 0.8
        beam = (
            (rng.uniform(0.25, 0.75) * rows, rng.uniform(0.25, 0.75) * cols)
            if on
            else _edge_beam(rng, rows, cols, max_outside=0.15)
        )
    elif technique == "waxs":
        distance = float(np.exp(rng.uniform(np.log(0.08), np.log(0.45))))
        beam = (
            (rng.uniform(0.2, 0.8) * rows, rng.uniform(0.2, 0.8) * cols)
            if rng.random() < 0.5
            else _edge_beam(rng, rows, cols)
        )
    elif technique == "gisaxs":
        distance = float(np.exp(rng.uniform(np.log(1.5), np.log(6.0))))
        horizon_row = rng.uniform(0.35, 0.92) * rows
        beam = (_beam_row_below(horizon_row, distance, incidence_deg, pixel), rng.uniform(0.3, 0.7) * cols)
    else:
        distance = float(np.exp(rng.uniform(np.log(0.1), np.log(0.35))))
        col = (
            rng.uniform(0.2, 0.8) * cols
            if rng.random() < 0.6
            else rng.choice([-0.2, 0.0, 1.0, 1.2]) * cols + rng.uniform(-0.05, 0.05) * cols
        )
        horizon_row = rng.uniform(0.55, 0.95) * rows
        beam = (_beam_row_below(horizon_row, distance, incidence_deg, pixel), col)
    scene = Scene(technique, name, binning, shape, pixel, distance, energy, float(beam[0]), float(beam[1]))
    scene.incidence_deg, scene.critical_deg = incidence_deg, critical_deg
    return scene


def _beam_row_below(horizon_row: float, distance_m: float, incidence_deg: float, pixel_m: float) -> float:
    """Row of the direct beam that puts the sample horizon (exit angle 0) at ``horizon_row``.

    The horizon lies ``distance tan(alpha_i)`` above the direct beam (rows run down). Grazing scenes are drawn
    with the horizon on the detector, as grazing-incidence measurements are set up: without it (and the shadow
    below it) a grazing image is indistinguishable from a textured transmission image.
    """
    return horizon_row + distance_m * math.tan(math.radians(incidence_deg)) / pixel_m


def _edge_beam(rng: np.random.Generator, rows: int, cols: int, max_outside: float = 0.4) -> tuple[float, float]:
    """A beam centre near or beyond an edge or corner of the detector (offset WAXS/SAXS setups).

    ``max_outside``: how far beyond the edge the beam may lie, as a fraction of the detector's side.
    """
    side = rng.integers(4)
    along = rng.uniform(-0.1, 1.1)
    out = rng.uniform(-max_outside, 0.08)
    if side == 0:
        return out * rows, along * cols
    if side == 1:
        return (1 - out) * rows, along * cols
    if side == 2:
        return along * rows, out * cols
    return along * rows, (1 - out) * cols


def _von_mises(angle: np.ndarray, centre: float, kappa: float, period: int = 2) -> np.ndarray:
    return np.exp(kappa * (np.cos(period * (angle - centre)) - 1))


def _add_ring(image: np.ndarray, q: np.ndarray, centre: float, width: float, height: float, weight=None) -> None:
    band = np.abs(q - centre) < 5 * width
    if not band.any():
        return
    d = (q[band] - centre) / width
    value = height * (0.6 * np.exp(-0.5 * d * d) + 0.4 / (1 + d * d))
    if weight is not None:
        value = value * weight(band)
    image[band] += value


def _visible(q: np.ndarray, centre: float, margin: float = 0.0) -> bool:
    """Whether a ring at ``centre`` (1/Angstrom) crosses a reasonable part of the detector."""
    inside = np.abs(q - centre) < max(margin, 0.01 * centre)
    return inside.mean() > 2e-4


def render(scene: Scene, rng: np.random.Generator, g: PixelGeometry) -> np.ndarray:
    """Expected scattering (arbitrary units, float32) of a scene; fills ``scene.features``."""
    q = g.q
    image = np.zeros(scene.shape, dtype=np.float32)
    features = scene.features
    if scene.technique in ("saxs", "gisaxs"):
        profile, orders, kind = saxs_profile(rng, features)
        scene.sample = kind
        q_eff = q
        if scene.technique == "gisaxs":
            return _render_gisaxs(scene, g, rng, profile, orders)
        image += np.interp(q_eff, Q_GRID, profile).astype(np.float32)
        scale = float(np.median(image)) + 1e-12
        if features & {"diffuse_halo"} and not _visible(q, float(Q_GRID[np.argmax(profile * Q_GRID**2)]), 0.05):
            features.discard("diffuse_halo")
        oriented = rng.random() < 0.35
        fibre = rng.random() < 0.12
        shown = False
        for centre, width, height in orders:
            if not _visible(q, centre, width):
                continue
            shown = True
            amp = height * scale * rng.uniform(5, 40)
            if oriented:
                chi0, kappa = rng.uniform(0, np.pi), rng.uniform(2, 20)
                _add_ring(image, q, centre, width, amp, lambda band, c=chi0, k=kappa: _von_mises(g.chi[band], c, k))
            else:
                _add_ring(image, q, centre, width, amp)
        if shown:
            features.add("arcs" if oriented else "rings")
        if fibre:
            _add_streak(image, g, rng, scale)
            features.add("rods")
        return image
    return _render_wide(scene, g, rng)


def _add_streak(image: np.ndarray, g: PixelGeometry, rng: np.random.Generator, scale: float) -> None:
    """An equatorial streak (oriented fibres/voids): intensity along a line through the beam centre."""
    angle = rng.uniform(0, np.pi)
    across = np.abs(np.sin(g.chi - angle)) * g.r_px
    width = rng.uniform(1.5, 4)
    image += (
        scale * rng.uniform(20, 200) * np.exp(-0.5 * (across / width) ** 2) / (1 + (g.r_px / rng.uniform(50, 400)) ** 2)
    ).astype(np.float32)


def _render_wide(scene: Scene, g: PixelGeometry, rng: np.random.Generator) -> np.ndarray:
    """WAXS and GIWAXS: crystalline reflections (rings, arcs, spots) and amorphous halos."""
    q, features = g.q, scene.features
    image = np.zeros(scene.shape, dtype=np.float32)
    grazing = scene.technique == "giwaxs"
    if grazing:
        psi, alpha_f, _ = _grazing_angles(scene, g)
    # Amorphous / semicrystalline halo(s).
    base = 1.0
    kind = rng.choice(["crystal", "polymer", "amorphous"], p=[0.6, 0.25, 0.15])
    scene.sample = str(kind)
    if kind in ("polymer", "amorphous") or rng.random() < 0.3:
        for _ in range(rng.integers(1, 3)):
            centre = rng.uniform(0.9, 2.2)
            if _visible(q, centre, 0.2):
                _add_ring(image, q, centre, rng.uniform(0.12, 0.35), base * rng.uniform(1.5, 6))
                features.add("diffuse_halo")
    if kind in ("crystal", "polymer"):
        reflections = crystal_reflections()
        name, qs, intensity = reflections[rng.integers(len(reflections))]
        strain = rng.uniform(0.96, 1.05)
        qs = qs * strain if kind == "crystal" else rng.uniform(0.3, 1.8, size=rng.integers(2, 6))
        intensity = intensity if kind == "crystal" else rng.uniform(0.3, 1.0, size=qs.size)
        scene.sample = f"{kind}:{name}" if kind == "crystal" else "polymer"
        width = rng.uniform(0.004, 0.03) if kind == "crystal" else rng.uniform(0.02, 0.06)
        mode = rng.choice(["powder", "textured", "spots"], p=[0.45, 0.35, 0.2])
        amp = base * rng.uniform(8, 60) / max(float(np.max(intensity)), 1e-9)
        shown = 0
        for centre, height in zip(qs, intensity, strict=True):
            if height < 0.02 * max(intensity) or not _visible(q, centre, width):
                continue
            shown += 1
            if mode == "powder":
                _add_ring(image, q, centre, width, amp * height)
            elif mode == "textured":
                if grazing:
                    psi0 = rng.choice([0.0, np.pi / 2, rng.uniform(0, np.pi / 2)])
                    spread = rng.uniform(0.12, 0.6)
                    _add_ring(
                        image,
                        q,
                        centre,
                        width,
                        amp * height,
                        lambda band, p0=psi0, s=spread: np.exp(-0.5 * ((np.abs(psi[band]) - p0) / s) ** 2),
                    )
                else:
                    chi0, kappa = rng.uniform(0, np.pi), rng.uniform(1.5, 15)
                    _add_ring(
                        image,
                        q,
                        centre,
                        width,
                        amp * height,
                        lambda band, c=chi0, k=kappa: _von_mises(g.chi[band], c, k),
                    )
            else:
                _add_spots(image, g, rng, centre, width, amp * height * rng.uniform(3, 10), psi if grazing else None)
        if shown:
            features.add({"powder": "rings", "textured": "arcs", "spots": "bragg_peaks"}[str(mode)])
    # Air scattering and a slowly varying background.
    image += (base * rng.uniform(0.05, 0.6) * np.exp(-((q / rng.uniform(1.0, 4.0)) ** 2))).astype(np.float32)
    if grazing:
        image *= _vineyard(scene, alpha_f)
        image[alpha_f < 0] *= rng.uniform(0.0, 0.02)
    return image


def _add_spots(
    image: np.ndarray,
    g: PixelGeometry,
    rng: np.random.Generator,
    centre: float,
    width: float,
    height: float,
    psi: np.ndarray | None,
) -> None:
    """A few Bragg spots on the ring at ``centre`` (single crystal / coarse grains / oriented film)."""
    band = np.flatnonzero(np.abs(g.q - centre).ravel() < 2 * width)
    if band.size == 0:
        return
    n = int(rng.integers(1, 7))
    picks = rng.choice(band, size=min(n, band.size), replace=False)
    rows, cols = np.unravel_index(picks, g.q.shape)
    radius = rng.uniform(1.0, 3.5)
    half = int(4 * radius) + 1
    for r, c in zip(rows, cols, strict=True):
        r0, r1, c0, c1 = (
            max(r - half, 0),
            min(r + half + 1, image.shape[0]),
            max(c - half, 0),
            min(c + half + 1, image.shape[1]),
        )
        yy, xx = np.mgrid[r0:r1, c0:c1]
        image[r0:r1, c0:c1] += (height * np.exp(-0.5 * ((yy - r) ** 2 + (xx - c) ** 2) / radius**2)).astype(np.float32)


def _grazing_angles(scene: Scene, g: PixelGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(psi from the surface normal, exit angle alpha_f, q_z) per pixel, radians and 1/Angstrom."""
    ai = math.radians(scene.incidence_deg)
    n = (0.0, math.cos(ai), -math.sin(ai))
    sin_af = g.fx * n[0] + g.fy * n[1] + g.fz * n[2]
    alpha_f = np.arcsin(np.clip(sin_af, -1, 1)).astype(np.float32)
    qz = (scene.k * (sin_af + math.sin(ai))).astype(np.float32)
    qxy = np.sqrt(np.maximum(g.q**2 - qz**2, 0)).astype(np.float32)
    side = np.sign(g.fx).astype(np.float32)
    psi = np.arctan2(qxy * side, qz).astype(np.float32)
    return psi, alpha_f, qz


def _vineyard(scene: Scene, alpha_f: np.ndarray) -> np.ndarray:
    """|T(alpha_f)|^2, the Fresnel transmission (Yoneda peak at the critical angle), small absorption."""
    grid = np.linspace(-0.2, 3.0, 2048) * math.radians(max(scene.critical_deg, 0.05)) * 4
    ac = math.radians(scene.critical_deg)
    a = np.maximum(grid, 1e-7)
    t = np.abs(2 * a / (a + np.sqrt(a**2 - ac**2 + 1e-3j * ac**2))) ** 2
    return np.interp(alpha_f, grid, t).astype(np.float32)


def _render_gisaxs(
    scene: Scene,
    g: PixelGeometry,
    rng: np.random.Generator,
    profile: np.ndarray,
    orders: list[tuple[float, float, float]],
) -> np.ndarray:
    """GISAXS: particle scattering x lateral order, Yoneda band, specular rod and peak, shadow below horizon."""
    psi, alpha_f, qz = _grazing_angles(scene, g)
    q, features = g.q, scene.features
    qxy = np.abs(q * np.sin(psi)).astype(np.float32)
    image = np.interp(q, Q_GRID, profile).astype(np.float32)
    scale = float(np.median(image[alpha_f > 0])) + 1e-12 if (alpha_f > 0).any() else 1e-6
    features.discard("diffuse_halo")
    lateral = rng.choice(["rods", "spots", "rings", "none"], p=[0.45, 0.15, 0.15, 0.25])
    if lateral == "rods":  # lateral (paracrystal) order: a peak in q_xy, extended along q_z
        spacing = float(np.exp(rng.uniform(np.log(60), np.log(800))))
        q0 = 2 * math.pi / spacing
        width = q0 * rng.uniform(0.02, 0.15)
        lat = peaks(
            qxy,
            np.array([q0, 2 * q0, 3**0.5 * q0]),
            np.array([width, 1.4 * width, 1.6 * width]),
            np.array([1.0, 0.3, 0.2]),
        )
        fringes = 1 + 0.6 * np.cos(qz * spacing * rng.uniform(0.3, 1.0)) ** 2
        if (lat > 0.3).mean() > 2e-4 and ((np.abs(qxy - q0) < 2 * width) & (alpha_f > 0)).mean() > 2e-4:
            image += (scale * rng.uniform(10, 80) * lat * fringes / (1 + (qz * spacing / 10) ** 2)).astype(np.float32)
            features.add("rods")
    elif lateral == "spots":  # 3D superlattice in the film: spots at (q_xy, q_z) lattice points
        spacing = float(np.exp(rng.uniform(np.log(80), np.log(500))))
        q0 = 2 * math.pi / spacing
        width = q0 * rng.uniform(0.03, 0.08)
        added = False
        for h in (1, 2):
            for m in range(0, 4):
                s = np.exp(
                    -0.5
                    * (((qxy - h * q0) / width) ** 2 + ((qz - (m + 0.5) * q0 * rng.uniform(0.9, 1.1)) / width) ** 2)
                )
                if (s > 0.5).sum() >= 4:
                    image += (scale * rng.uniform(20, 100) * s).astype(np.float32)
                    added = True
        if added:
            features.add("bragg_peaks")
    elif lateral == "rings" and orders:
        shown = False
        for centre, width, height in orders:
            if _visible(q, centre, width):
                _add_ring(image, q, centre, width * 2, scale * height * rng.uniform(5, 30))
                shown = True
        if shown:
            features.add("rings")
    # Kiessig fringes of the film along q_z, and the Vineyard factor (Yoneda band).
    thickness = rng.uniform(100, 1500)
    image *= (1 + rng.uniform(0, 0.25) * np.cos(qz * thickness)).astype(np.float32)
    image *= _vineyard(scene, alpha_f)
    # Specular rod (q_xy ~ 0) with the specular peak at alpha_f = alpha_i.
    rod = np.exp(-0.5 * (g.fx * scene.distance_m / scene.pixel_m / rng.uniform(1.0, 3.0)) ** 2).astype(np.float32)
    ai = math.radians(scene.incidence_deg)
    reflectivity = 1 / (1 + (np.maximum(qz, 1e-4) / 0.01) ** 4)
    image += scale * rng.uniform(50, 500) * rod * reflectivity * (alpha_f > 0)
    spec = np.exp(-0.5 * ((alpha_f - ai) / (0.0005 + 0.2 * ai * rng.random())) ** 2)
    image += scale * rng.uniform(1e3, 1e4) * rod * spec
    image[alpha_f < 0] *= rng.uniform(0.0, 0.01)
    return image


# ---------------------------------------------------------------------------------------------------------
# Detector effects


def solid_angle_and_polarization(g: PixelGeometry, rng: np.random.Generator, laboratory: bool = False) -> np.ndarray:
    """Per-pixel factor of a flat detector's solid angle (``cos^3 2theta``) and the beam's polarisation.

    A synchrotron beam is linearly polarised in the horizontal plane (degree ``p`` 0.9-0.99, 75 % of images), a
    laboratory source unpolarised (``p = 0.5``): ``P = p (1 - f_x^2) + (1 - p) (1 - f_y^2)`` for the unit exit
    direction ``f``. Both are ~1 at small angles and shape wide-angle images (weaker towards the corners and,
    for a polarised beam, along the horizontal).
    """
    p = rng.uniform(0.9, 0.99) if rng.random() < 0.75 else 0.5
    if laboratory:
        p = 0.5
    return (g.fz**3 * (p * (1 - g.fx**2) + (1 - p) * (1 - g.fy**2))).astype(np.float32)


def beamstop(scene: Scene, g: PixelGeometry, rng: np.random.Generator) -> np.ndarray:
    """Transmission of the beamstop per pixel (0.0005-0.05 behind it, 1 elsewhere)."""
    rows, cols = scene.shape
    shadow = np.zeros(scene.shape, dtype=bool)
    radius = rng.uniform(4, 30) * (1 if scene.technique in ("saxs", "gisaxs") else 0.6)
    shadow |= g.r_px < radius
    kind = rng.choice(["arm", "rod", "none"], p=[0.6, 0.25, 0.15])
    if kind == "arm":  # a disc on an arm that holds it from one edge
        angle = (
            rng.uniform(0, 2 * np.pi)
            if scene.technique in ("saxs", "waxs")
            else rng.choice([-np.pi / 2, rng.uniform(0, 2 * np.pi)])
        )
        along = g.r_px * np.cos(g.chi - angle)
        across = np.abs(g.r_px * np.sin(g.chi - angle))
        shadow |= (along > 0) & (across < radius * rng.uniform(0.2, 0.6))
    elif kind == "rod":  # a vertical rod over the specular rod (grazing) or a strip
        x_px = (np.arange(cols) + 0.5 - scene.beam_col)[None, :]
        y_px = (scene.beam_row - np.arange(rows) - 0.5)[:, None]
        height = rng.uniform(10, 0.6 * rows)
        shadow |= (np.abs(x_px) < radius * rng.uniform(0.3, 1.0)) & (y_px < height) & (y_px > -radius)
    transmission = np.ones(scene.shape, dtype=np.float32)
    transmission[shadow] = rng.uniform(0.0005, 0.05)
    return transmission


def count(scene: Scene, expected: np.ndarray, rng: np.random.Generator, harsh: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale to counts, add backgrounds and detector effects, write in the detector's dtype; (image, gap mask)."""
    shape, _, gaps = detector(scene.detector, scene.binning)
    level = float(np.median(expected[::5, ::5])) or float(expected.mean()) or 1.0
    counts_scale = float(np.exp(rng.uniform(np.log(0.05), np.log(2000)))) / max(level, 1e-12)
    counts_scale *= realism.count_scale_factor(scene, rng)
    if harsh:
        counts_scale *= rng.uniform(0.05, 0.5)
    area = scene.binning**2  # a binned pixel collects the counts of binning^2 detector pixels
    lam = expected * (counts_scale * area)
    lam += rng.uniform(0.0, 0.5 if not harsh else 3.0) * area  # dark current / fluorescence background
    image = rng.poisson(np.clip(lam, 0, 1e9)).astype(np.float64)
    dtype = _dtype_of(scene.detector, rng)
    ccd = scene.detector in realism.CCD_DETECTORS
    if ccd:
        image = realism.ccd_readout(image, rng, area)
    if dtype.kind == "f":
        image += rng.normal(0, rng.uniform(0.1, 2.0), image.shape)
    n_hot = int(rng.integers(0, 40 if harsh else 12))
    hot = rng.integers(0, image.size, n_hot)
    image.flat[hot] = rng.uniform(1e3, 1e6, n_hot)
    dead = rng.integers(0, image.size, int(rng.integers(0, 30)))
    image.flat[dead] = 0
    if rng.random() < 0.3:  # a dead or noisy module row/column block
        r = rng.integers(0, shape[0] - 4)
        image[r : r + rng.integers(1, 4)] = 0
    limit = {
        np.dtype(np.int32): 2**20,
        np.dtype(np.uint16): 2**16 - 2,
        np.dtype(np.uint32): 2**24,
        np.dtype(np.float32): 1e7,
    }[dtype]
    image = np.minimum(image, limit)
    gap_value: float
    if rng.random() < 0.15:
        gap_value = 0
    elif dtype == np.int32:
        gap_value = -1
    elif dtype.kind == "u":
        gap_value = np.iinfo(dtype).max
    else:
        gap_value = -1 if rng.random() < 0.5 else np.nan
    if ccd and realism.CCD_DETECTORS[scene.detector]:
        gap_value = 0  # outside the circular active area of a MarCCD/Rayonix
    if "masked_block" in scene.effects:  # a large region masked by the acquisition software
        gaps = gaps | realism.masked_block(shape, rng)
    image[gaps] = gap_value
    return image.astype(dtype), gaps


def orient(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random one of the 8 ways a detector can be mounted or a file written (rotations by 90 deg, flips)."""
    image = np.rot90(image, int(rng.integers(4)))
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def simulate(
    seed_sequence: np.random.SeedSequence,
    technique: str | None = None,
    detectors: dict | None = None,
    harsh: bool = False,
    full_resolution: bool = True,
    variant: str | None = None,
    effects: set[str] | None = None,
) -> tuple[np.ndarray, Scene]:
    """One raw detector image and its scene (technique, features, geometry).

    ``full_resolution=False`` simulates on the binned detector (:func:`sim_binning`): what the codec makes of it
    matches the full-resolution image on average (block means of Poisson counts), at a fraction of the cost.
    ``variant`` and ``effects`` force a :mod:`~training.scattering.realism` scene variant (``""``: none) and a set
    of detector effects (tests); by default they are drawn.
    """
    rng = np.random.default_rng(seed_sequence)
    technique = technique or TECHNIQUES[rng.integers(len(TECHNIQUES))]
    drawn_variant = realism.draw_variant(rng, technique)
    drawn_effects = realism.draw_effects(rng)
    variant = drawn_variant if variant is None else variant
    effects = drawn_effects if effects is None else effects
    detectors = detectors or TRAIN_DETECTORS
    if variant == "narrow_edge":
        detectors = realism.narrow_detectors(detectors, lambda name: detector(name)[0])
    # Wide-angle scenes are drawn again until a reflection or halo is on the detector: a WAXS/GIWAXS frame that
    # shows only air scattering carries no sign of its technique (nobody sorts an empty frame by technique).
    for _ in range(MAX_SCENE_DRAWS):
        scene = draw_scene(rng, technique, detectors, full_resolution)
        realism.adjust_scene(scene, variant, effects, rng)
        geometry = pixel_geometry(scene)
        expected = realism.render_variant(scene, geometry, rng)
        if expected is None:
            expected = render(scene, rng, geometry)
        if scene.features or technique in ("saxs", "gisaxs") or realism.is_featureless(variant):
            break
    expected = realism.apply_effects(scene, geometry, expected, rng)
    expected *= solid_angle_and_polarization(geometry, rng, laboratory="lab_source" in scene.effects)
    expected *= beamstop(scene, geometry, rng)
    image, _ = count(scene, expected, rng, harsh)
    # Orientation: only for a fraction of images, so the common "horizon at the bottom" layout dominates.
    if rng.random() < 0.5:
        image = orient(image, rng)
    return image, scene


def labels(scene: Scene) -> tuple[int, int, np.ndarray]:
    """(technique index, geometry index, multi-hot features) of a scene."""
    feature_vector = np.array([name in scene.features for name in FEATURES], dtype=np.uint8)
    return TECHNIQUES.index(scene.technique), GEOMETRIES.index(GEOMETRY_OF_TECHNIQUE[scene.technique]), feature_vector


# ---------------------------------------------------------------------------------------------------------
# Datasets

#: The measurement setup stored with every image: what a file header or a user gives the served model (the
#: detector's diagonal in metres is the same whether the scene was simulated binned or at full resolution).
SETUP_FIELDS = ("distance_m", "wavelength_angstrom", "detector_diagonal_m")


def scene_setup(scene: Scene) -> dict[str, float]:
    """The setup of a scene as :data:`SETUP_FIELDS` (metres, Angstrom)."""
    return {
        "distance_m": scene.distance_m,
        "wavelength_angstrom": scene.wavelength_a,
        "detector_diagonal_m": math.hypot(*scene.shape) * scene.pixel_m,
    }


def simulate_item(seed: int, split: str, index: int) -> tuple[np.ndarray, Scene, EncodedImage]:
    """Raw image, scene and codec output of image ``index`` of ``split`` (exactly what the dataset holds).

    Splits starting with ``test`` are simulated at full detector resolution; ``test_unseen_detectors`` draws from
    :data:`UNSEEN_DETECTORS`, ``test_harsh`` with harsh counting. A scene the codec refuses (e.g. a beam far off a
    small detector leaving a constant image) is drawn again from a child seed, deterministically.
    """
    detectors = UNSEEN_DETECTORS if split == "test_unseen_detectors" else TRAIN_DETECTORS
    seed_sequence = np.random.SeedSequence([seed, SPLIT_IDS[split], index])
    while True:
        image, scene = simulate(
            seed_sequence, detectors=detectors, harsh=split == "test_harsh", full_resolution=split.startswith("test")
        )
        try:
            return image, scene, encode_image(image)
        except ImageError:
            seed_sequence = seed_sequence.spawn(1)[0]


def _simulate_range(args: tuple[int, str, int, int]) -> dict[str, np.ndarray]:
    seed, split, start, stop = args
    n = stop - start
    tensors = np.zeros((n, INPUT_SIDE_PX, INPUT_SIDE_PX, N_CHANNELS), dtype=np.uint8)
    technique = np.zeros(n, dtype=np.uint8)
    geometry = np.zeros(n, dtype=np.uint8)
    features = np.zeros((n, len(FEATURES)), dtype=np.uint8)
    detector_index = np.zeros(n, dtype=np.uint8)
    setup = {name: np.zeros(n, dtype=np.float64) for name in SETUP_FIELDS}
    names = sorted(set(TRAIN_DETECTORS) | set(UNSEEN_DETECTORS))
    for k, i in enumerate(range(start, stop)):
        _, scene, encoded = simulate_item(seed, split, i)
        tensors[k] = np.round(encoded.tensor * 255).astype(np.uint8)
        technique[k], geometry[k], features[k] = labels(scene)
        detector_index[k] = names.index(scene.detector)
        for name, value in scene_setup(scene).items():
            setup[name][k] = value
    return {
        "tensors": tensors,
        "technique": technique,
        "geometry": geometry,
        "features": features,
        "detector": detector_index,
        **setup,
    }


def write_split(out: Path, split: str, n: int, seed: int, workers: int = 2, chunk: int = 200) -> dict:
    """Simulate ``n`` images of ``split`` into ``out/<split>.npz`` (uint8 tensors; /255 gives the codec output)."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, split, s, min(s + chunk, n)) for s in range(0, n, chunk)]
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_simulate_range, jobs))
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    path = out / f"{split}.npz"
    np.savez(path, **arrays)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    info = {"split": split, "n": n, "seed": seed, "sha256": digest, "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(info), flush=True)
    return info


def load_split(folder: Path, split: str, keep_uint8: bool = False) -> dict[str, np.ndarray]:
    """A split as arrays: ``images`` float32 (N, 128, 128, 2) in [0, 1], ``technique``, ``geometry``, ``features``;
    ``setup`` float32 (N, 2), the codec's :func:`setup_features` of each scene, when the split stores
    :data:`SETUP_FIELDS` (simulated from version 1.2.0 on).

    ``keep_uint8`` keeps the stored bytes (255 x the codec output; a quarter of the memory, for large
    training splits): :func:`as_codec_images` turns them into the codec's float32."""
    with np.load(folder / f"{split}.npz") as data:
        arrays = {key: data[key] for key in data.files}
    tensors = arrays.pop("tensors")
    arrays["images"] = tensors if keep_uint8 else as_codec_images(tensors)
    if all(name in arrays for name in SETUP_FIELDS):
        q_span = [q_span_inv_angstrom(d, D, w) for d, D, w in zip(arrays["detector_diagonal_m"], arrays["distance_m"],
                                                                  arrays["wavelength_angstrom"], strict=True)]  # fmt: skip
        arrays["setup"] = np.stack([setup_features(q) for q in q_span])
    return arrays


def as_codec_images(images: np.ndarray) -> np.ndarray:
    """Stored uint8 images (or already float ones, unchanged) as the codec's float32 in [0, 1]."""
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RUNS / "data_seed0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=30_000)
    parser.add_argument(
        "--n-eval", type=int, default=2_000, help="val size; held-out full-resolution test splits get --n-test"
    )
    parser.add_argument("--n-test", type=int, default=800)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--splits", nargs="*", default=list(SPLIT_IDS))
    args = parser.parse_args()
    manifest = {}
    for split in args.splits:
        n = {"train": args.n_train, "val": args.n_eval}.get(split, args.n_test)
        manifest[split] = write_split(args.out, split, n, args.seed, args.workers)
    path = args.out / "manifest.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **manifest}, indent=1))


if __name__ == "__main__":
    main()
