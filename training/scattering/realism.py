"""Scene variants and detector effects of simulator 1.4 (issue: real images the 1.3.0 sorter got wrong).

Simulator 1.3 drew one "canonical" scene per technique. The real development images (20 files from public
repositories, only looked at, never trained on) showed what it missed; every variant here is drawn with a small,
explicit probability so the 1.3 distribution stays dominant (see :data:`SCENE_VARIANTS` and
:data:`DETECTOR_EFFECTS`):

* **WAXS calibrants** (``calibrant``): AgBH (d = 58.38 Angstrom, dozens of evenly spaced orders out to wide angle),
  LaB6, CeO2 and Si powder rings, with the beam centre on the detector (behind a beamstop) or near an edge.
* **SAXS on a narrow detector, beam just off an edge** (``narrow_edge``): a wide, short detector (aspect >= 2),
  the beam centre 0-8 % of the short side beyond a long edge, the distance set so the far corner sees
  q = 1-1.8 1/Angstrom, with sharp AgBH or lamellar orders out to it (still SAXS).
* **Empty cell** (SAXS ``empty_cell``): parasitic low-q scattering, a flat background, no feature.
* **Off-side GIWAXS** (``offside``): the detector on an arm above or to one side of the beam, so that the sample
  horizon (and the Yoneda band) is off the image: arcs and spots only; their orientation about the surface
  normal, the missing wedge and the intensity truncation are what remains of the geometry.
* **Grazing blanks** (GISAXS/GIWAXS ``blank``): a bare Si wafer: weak diffuse scattering, Yoneda band, specular
  rod and reflection, shadow below the horizon; no feature.
* **Detector effects** (any technique): lab sources (Cu K-alpha 8.04 keV, Ga 9.25 keV, Mo 17.48 keV: unpolarised,
  5-50 % of the counts, a larger beam that blurs sharp features), window or flight-tube shadows (a dark or bright
  region beyond a circular or straight edge), large masked regions written as the gap value, CCD detectors
  (uint16, a dark pedestal of 10-1000 ADU and read noise; MarCCD/Rayonix with a circular active area written
  as 0 outside the disc).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import gaussian_filter

if TYPE_CHECKING:  # pragma: no cover
    from training.scattering.simulate import PixelGeometry, Scene

#: Probability of each scene variant per technique (the rest, ``""``, is the simulator 1.3 scene).
SCENE_VARIANTS: dict[str, dict[str, float]] = {
    "saxs": {"narrow_edge": 0.06, "empty_cell": 0.03},
    "waxs": {"calibrant": 0.14},
    "gisaxs": {"blank": 0.03},
    "giwaxs": {"offside": 0.16, "blank": 0.05},
}

#: Probability of each detector/source effect, drawn independently for every image.
DETECTOR_EFFECTS: dict[str, float] = {"lab_source": 0.10, "window_shadow": 0.05, "masked_block": 0.05}

#: Laboratory anodes (keV).
LAB_ENERGIES_KEV = {"Cu": 8.048, "Ga": 9.252, "Mo": 17.479}

#: Detectors that are not in pyFAI's catalogue: name -> (shape, pixel size in metres). A CCD without gaps, the
#: shape of the one on NSLS-II CMS's WAXS arm (1042 x 1042, 101.7 um).
SYNTHETIC_DETECTORS: dict[str, tuple[tuple[int, int], float]] = {"CCD1042": ((1042, 1042), 101.7e-6)}

#: CCD detectors: uint16 with a pedestal; those with a circular active area write 0 outside it.
CCD_DETECTORS = {"CCD1042": False, "Rayonix133": True}

AGBH_D_ANGSTROM = 58.38


def draw_variant(rng: np.random.Generator, technique: str) -> str:
    """A scene variant of :data:`SCENE_VARIANTS` for ``technique`` (``""``: the ordinary scene)."""
    options = SCENE_VARIANTS.get(technique, {})
    u = rng.random()
    for name, p in options.items():
        if u < p:
            return name
        u -= p
    return ""


def draw_effects(rng: np.random.Generator) -> set[str]:
    """The detector and source effects of one image (independent draws from :data:`DETECTOR_EFFECTS`)."""
    return {name for name, p in DETECTOR_EFFECTS.items() if rng.random() < p}


def narrow_detectors(detectors: dict[str, float], shape_of) -> dict[str, float]:
    """The detectors of ``detectors`` at least twice as wide as high (all of them when there is none)."""
    narrow = {n: w for n, w in detectors.items() if max(shape_of(n)) >= 2 * min(shape_of(n))}
    return narrow or detectors


def _far_corner_m(scene: Scene) -> float:
    rows, cols = scene.shape
    dr = max(abs(scene.beam_row), abs(rows - scene.beam_row))
    dc = max(abs(scene.beam_col), abs(cols - scene.beam_col))
    return math.hypot(dr, dc) * scene.pixel_m


def distance_for_q(scene: Scene, q_max: float) -> float:
    """The distance (m) at which the detector's farthest pixel from the beam sees ``q_max`` (1/Angstrom)."""
    two_theta = 2 * math.asin(min(q_max * scene.wavelength_a / (4 * math.pi), 0.99))
    return _far_corner_m(scene) / math.tan(two_theta)


def adjust_scene(scene: Scene, variant: str, effects: set[str], rng: np.random.Generator) -> None:
    """Change a drawn scene's source, geometry and beam for ``variant`` and ``effects`` (in place)."""
    from training.scattering.simulate import _beam_row_below

    rows, cols = scene.shape
    if "lab_source" in effects:
        anode = list(LAB_ENERGIES_KEV)[int(rng.choice(3, p=[0.7, 0.15, 0.15]))]
        scene.energy_kev = LAB_ENERGIES_KEV[anode]
        if scene.technique == "giwaxs":  # lab GIWAXS: larger incidence angles are common
            scene.incidence_deg = float(rng.uniform(0.1, 2.0)) if rng.random() < 0.4 else scene.incidence_deg
    if variant == "narrow_edge":
        long_rows = rows > cols
        out = rng.uniform(0.0, 0.08) * min(rows, cols)
        along = rng.uniform(0.05, 0.95) * max(rows, cols)
        if rng.random() < 0.7:  # beyond a long edge
            across = -out if rng.random() < 0.5 else min(rows, cols) + out
        else:  # beyond a short edge, centred on the strip
            across, along = (
                rng.uniform(0.3, 0.7) * min(rows, cols),
                (-out if rng.random() < 0.5 else max(rows, cols) + out),
            )
        scene.beam_row, scene.beam_col = (along, across) if long_rows else (across, along)
        scene.distance_m = distance_for_q(scene, float(rng.uniform(1.0, 1.8)))
    elif variant == "calibrant":
        if rng.random() < 0.6:  # centred on the detector, behind a beamstop
            scene.beam_row, scene.beam_col = rng.uniform(0.25, 0.75) * rows, rng.uniform(0.25, 0.75) * cols
        else:
            side = rng.integers(4)
            out = rng.uniform(-0.03, 0.1)
            along = rng.uniform(0.0, 1.0)
            scene.beam_row, scene.beam_col = [
                (out * rows, along * cols),
                ((1 - out) * rows, along * cols),
                (along * rows, out * cols),
                (along * rows, (1 - out) * cols),
            ][side]
    elif variant == "offside":
        scene.incidence_deg = float(rng.uniform(0.08, 0.5))
        if rng.random() < 0.5:  # detector above the beam: the horizon below the bottom edge
            horizon_row = rng.uniform(1.02, 1.8) * rows
            scene.beam_col = float(rng.uniform(-0.2, 1.2) * cols)
        else:  # detector to one side (and up): the horizon below or far off
            horizon_row = rng.uniform(1.0, 1.8) * rows
            scene.beam_col = float(
                rng.uniform(-0.8, -0.05) * cols if rng.random() < 0.5 else rng.uniform(1.05, 1.8) * cols
            )
        scene.beam_row = _beam_row_below(horizon_row, scene.distance_m, scene.incidence_deg, scene.pixel_m)
        # The horizon must be off the image: nothing at alpha_f < 0 on the detector.
    scene.variant = variant
    scene.effects = set(effects)


# ---------------------------------------------------------------------------------------------------------
# Renderers of the variants


def calibrant_rings(name: str, q_max: float) -> tuple[np.ndarray, np.ndarray]:
    """(q in 1/Angstrom, relative intensity) of a calibrant's powder rings up to ``q_max``."""
    from training.scattering.simulate import crystal_reflections

    if name == "AgBH":
        n = np.arange(1, int(q_max * AGBH_D_ANGSTROM / (2 * math.pi)) + 2)
        return 2 * math.pi * n / AGBH_D_ANGSTROM, 1.0 / n**0.8
    if name == "CeO2":  # fluorite, a = 5.411 Angstrom: h, k, l all even or all odd
        a, qs = 5.411, []
        for h in range(0, 9):
            for k in range(0, h + 1):
                for m in range(0, k + 1):
                    if h + k + m and h % 2 == k % 2 == m % 2 and not (h % 2 == 0 and (h + k + m) % 4 == 2):
                        qs.append(2 * math.pi * math.sqrt(h * h + k * k + m * m) / a)
        qs_arr = np.unique(np.round(qs, 6))
        return qs_arr, 1.0 / (1 + 0.25 * np.arange(qs_arr.size))
    for proto, qs_arr, intensity in crystal_reflections():
        if proto == name:
            return qs_arr, intensity
    raise KeyError(name)


def render_calibrant(scene: Scene, g: PixelGeometry, rng: np.random.Generator) -> np.ndarray:
    """WAXS calibrant: sharp powder rings (AgBH, LaB6, CeO2, Si) and air scattering; fills ``scene.features``."""
    from training.scattering.simulate import _add_ring, _visible

    q = g.q
    image = (rng.uniform(0.05, 0.6) * np.exp(-((q / rng.uniform(1.0, 4.0)) ** 2))).astype(np.float32)
    name = str(rng.choice(["AgBH", "LaB6", "CeO2", "Si"], p=[0.5, 0.2, 0.15, 0.15]))
    scene.sample = f"calibrant:{name}"
    qs, intensity = calibrant_rings(name, float(q.max()) * 1.05)
    width = rng.uniform(0.002, 0.012)
    amp = rng.uniform(8, 60) / max(float(np.max(intensity)), 1e-9)
    shown = 0
    for centre, height in zip(qs, intensity, strict=True):
        if centre > q.max() or not _visible(q, centre, width):
            continue
        _add_ring(image, q, centre, width * (1 + 0.1 * centre), amp * height)
        shown += 1
    if shown:
        scene.features.add("rings")
    return image


def render_narrow_edge(scene: Scene, g: PixelGeometry, rng: np.random.Generator) -> np.ndarray:
    """SAXS on a narrow detector, beam off an edge: a power-law background and sharp orders out to q ~ 1-1.8."""
    from training.scattering.simulate import _add_ring, _visible

    q = np.maximum(g.q, 1e-4)
    image = (q ** -rng.uniform(2.5, 4.0) * 1e-4 + rng.uniform(0.01, 0.3)).astype(np.float32)
    scale = float(np.median(image))
    if rng.random() < 0.6:
        d, decay, name = AGBH_D_ANGSTROM, rng.uniform(0.6, 1.3), "agbe"
    else:
        d, decay, name = float(rng.uniform(25, 70)), rng.uniform(0.8, 1.6), "lamellar"
    scene.sample = f"narrow_edge:{name}"
    width = rng.uniform(0.0015, 0.006)
    amp = scale * rng.uniform(5, 40)
    shown = 0
    for n in range(1, int(float(q.max()) * d / (2 * math.pi)) + 2):
        centre = 2 * math.pi * n / d
        if _visible(g.q, centre, width):
            _add_ring(image, g.q, centre, width * (1 + 0.05 * n), amp / n**decay)
            shown += 1
    if shown:
        scene.features.add("rings")
    return image


def render_empty_cell(scene: Scene, g: PixelGeometry, rng: np.random.Generator) -> np.ndarray:
    """SAXS of an empty cell or capillary: parasitic low-q scattering and a flat background, no feature."""
    q = np.maximum(g.q, 1e-4)
    scene.sample = "empty_cell"
    image = rng.uniform(1e-6, 1e-4) * q ** -rng.uniform(3.0, 4.0) + rng.uniform(0.2, 1.0)
    if rng.random() < 0.5:  # a parasitic streak from slits
        angle = rng.uniform(0, np.pi)
        across = np.abs(np.sin(g.chi - angle)) * g.r_px
        image = image * (1 + rng.uniform(1, 20) * np.exp(-0.5 * (across / rng.uniform(1, 3)) ** 2) / (1 + g.r_px / 30))
    return image.astype(np.float32)


def render_grazing_blank(scene: Scene, g: PixelGeometry, rng: np.random.Generator) -> np.ndarray:
    """A bare Si wafer in grazing incidence: weak diffuse scattering, Yoneda band, specular rod, shadow; no feature."""
    from training.scattering.simulate import _grazing_angles, _vineyard

    _, alpha_f, qz = _grazing_angles(scene, g)
    scene.sample = "blank"
    q = np.maximum(g.q, 1e-4)
    image = rng.uniform(1e-7, 1e-5) * q ** -rng.uniform(2.5, 4.0) + rng.uniform(0.3, 1.0)  # roughness + air
    image = image + rng.uniform(0.0, 0.3) * (q / 3.0) ** 2  # thermal diffuse scattering of the substrate
    image = (image * _vineyard(scene, alpha_f)).astype(np.float32)
    rod = np.exp(-0.5 * (g.fx * scene.distance_m / scene.pixel_m / rng.uniform(1.0, 3.0)) ** 2).astype(np.float32)
    reflectivity = 1 / (1 + (np.maximum(qz, 1e-4) / 0.01) ** 4)
    image += rng.uniform(5, 100) * rod * reflectivity * (alpha_f > 0)
    ai = math.radians(scene.incidence_deg)
    image += rng.uniform(1e2, 1e4) * rod * np.exp(-0.5 * ((alpha_f - ai) / (0.0005 + 0.2 * ai * rng.random())) ** 2)
    image[alpha_f < 0] *= rng.uniform(0.0, 0.02)
    return image


def render_variant(scene: Scene, g: PixelGeometry, rng: np.random.Generator) -> np.ndarray | None:
    """The expected image of a scene variant with its own renderer, or None (the ordinary renderer applies)."""
    renderer = {
        "calibrant": render_calibrant,
        "narrow_edge": render_narrow_edge,
        "empty_cell": render_empty_cell,
        "blank": render_grazing_blank,
    }.get(scene.variant)
    return renderer(scene, g, rng) if renderer else None


def is_featureless(variant: str) -> bool:
    """Whether a variant has no feature by design (a wide-angle scene is not redrawn for lack of one)."""
    return variant in ("blank", "empty_cell")


# ---------------------------------------------------------------------------------------------------------
# Detector and source effects on the expected image


def apply_effects(scene: Scene, g: PixelGeometry, expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lab-source blur and window/flight-tube shadows on the expected image (float32, same shape)."""
    if "lab_source" in scene.effects:  # a larger beam: features broadened by 0.7-2.5 px (at the simulated binning)
        expected = gaussian_filter(expected, rng.uniform(0.7, 2.5) / max(scene.binning, 1) ** 0.5).astype(np.float32)
    if "window_shadow" in scene.effects:
        rows, cols = scene.shape
        diagonal = math.hypot(rows, cols)
        if rng.random() < 0.6:  # the circular edge of a flight tube or window about (near) the beam
            cr = scene.beam_row + rng.normal(0, 0.15) * rows
            cc = scene.beam_col + rng.normal(0, 0.15) * cols
            rr = np.hypot(np.arange(rows)[:, None] + 0.5 - cr, np.arange(cols)[None, :] + 0.5 - cc)
            beyond = rr > rng.uniform(0.25, 0.8) * diagonal
        else:  # a straight edge (a half-disc of the image)
            angle = rng.uniform(0, 2 * np.pi)
            offset = rng.uniform(-0.3, 0.3) * diagonal
            yy, xx = np.arange(rows)[:, None] - rows / 2, np.arange(cols)[None, :] - cols / 2
            beyond = (xx * math.cos(angle) + yy * math.sin(angle)) > offset
        factor = rng.uniform(0.0, 0.25) if rng.random() < 0.7 else rng.uniform(1.5, 4.0)
        expected = expected.copy()
        expected[beyond] *= factor
    return expected


def count_scale_factor(scene: Scene, rng: np.random.Generator) -> float:
    """Counts relative to a synchrotron exposure (5-50 % for a laboratory source)."""
    return float(rng.uniform(0.05, 0.5)) if "lab_source" in scene.effects else 1.0


def masked_block(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A large masked region (True): a quadrant, a strip or a rectangle, 8-45 % of the image."""
    rows, cols = shape
    mask = np.zeros(shape, dtype=bool)
    kind = rng.integers(3)
    if kind == 0:  # a quadrant-like corner block
        r = int(rng.uniform(0.3, 0.65) * rows)
        c = int(rng.uniform(0.3, 0.65) * cols)
        rs = slice(0, r) if rng.random() < 0.5 else slice(rows - r, rows)
        cs = slice(0, c) if rng.random() < 0.5 else slice(cols - c, cols)
        mask[rs, cs] = True
    elif kind == 1:  # a strip along an edge
        if rng.random() < 0.5:
            w = max(int(rng.uniform(0.08, 0.4) * rows), 1)
            mask[:w] = True
        else:
            w = max(int(rng.uniform(0.08, 0.4) * cols), 1)
            mask[:, -w:] = True
    else:  # a rectangle somewhere
        h, w = int(rng.uniform(0.2, 0.5) * rows), int(rng.uniform(0.2, 0.5) * cols)
        r0, c0 = int(rng.integers(0, max(rows - h, 1))), int(rng.integers(0, max(cols - w, 1)))
        mask[r0 : r0 + h, c0 : c0 + w] = True
    return mask


def ccd_readout(image: np.ndarray, rng: np.random.Generator, area: int) -> np.ndarray:
    """A CCD's pedestal (10-1000 ADU in 60 % of images) and Gaussian read noise, in float64 counts."""
    pedestal = rng.uniform(10, 1000) if rng.random() < 0.6 else 0.0
    noise = rng.uniform(1.0, 8.0) * math.sqrt(area)
    return np.maximum(image + pedestal * area + rng.normal(0, noise, image.shape), 0)
