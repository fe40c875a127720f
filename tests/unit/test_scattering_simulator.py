"""The scattering simulator: reproducible, real detector shapes and gap conventions, physically placed features."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyFAI")

from matserve.codecs.scattering import encode_image, invalid_pixels
from training.scattering import realism
from training.scattering import simulate as sim
from training.scattering.labels import FEATURES, TECHNIQUES


def test_same_seed_same_image_and_labels() -> None:
    a, scene_a = sim.simulate(np.random.SeedSequence([7, 3]), full_resolution=False)
    b, scene_b = sim.simulate(np.random.SeedSequence([7, 3]), full_resolution=False)
    c, _ = sim.simulate(np.random.SeedSequence([7, 4]), full_resolution=False)
    assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    assert scene_a.features == scene_b.features and scene_a.technique == scene_b.technique
    assert a.shape != c.shape or not np.array_equal(a, c, equal_nan=True)


@pytest.mark.parametrize("name", ["Pilatus1M", "Eiger1M"])
def test_full_resolution_images_have_the_detector_shape_gaps_and_dtype(name: str) -> None:
    shape, pixel_m, gaps = sim.detector(name)
    assert gaps.any() and pixel_m in (172e-6, 75e-6)
    seen_dtypes = set()
    for i in range(6):
        image, scene = sim.simulate(np.random.SeedSequence([11, i]), "waxs", {name: 1.0})
        assert scene.binning == 1 and sorted(image.shape) == sorted(shape)
        seen_dtypes.add(image.dtype.kind)
        bad = invalid_pixels(image)
        if image.dtype.kind in "iu" and bad.any():  # gaps written as -1 / dtype max are found by the codec
            assert bad.mean() >= 0.5 * gaps.mean()
        encoded = encode_image(image)
        assert encoded.tensor.shape == (128, 128, 2)
    assert seen_dtypes <= {"i", "u", "f"}


def test_binned_detector_keeps_the_gap_fraction() -> None:
    _, _, full = sim.detector("Pilatus2M")
    binning = sim.sim_binning("Pilatus2M", full_resolution=False)
    shape, _, binned = sim.detector("Pilatus2M", binning)
    assert max(shape) <= sim.SIM_LONG_SIDE_PX and binning > 1
    assert abs(binned.mean() - full.mean()) < 0.03


def test_grazing_images_are_dark_below_the_horizon() -> None:
    """Unrotated GISAXS: the sample shadows everything below the horizon (alpha_f < 0)."""
    rng = np.random.default_rng(5)
    scene = sim.draw_scene(rng, "gisaxs", {"Pilatus1M": 1.0}, full_resolution=False)
    scene.beam_row = scene.shape[0] * 0.8
    geometry = sim.pixel_geometry(scene)
    expected = sim.render(scene, rng, geometry)
    _, alpha_f, _ = sim._grazing_angles(scene, geometry)
    above, below = expected[alpha_f > 0.002], expected[alpha_f < -0.002]
    assert below.size and above.size
    assert np.median(below) < 0.05 * np.median(above)


def test_labels_cover_every_technique_and_feature() -> None:
    techniques, features = set(), set()
    for i in range(40):
        _, scene = sim.simulate(np.random.SeedSequence([3, i]), full_resolution=False)
        technique, geometry, vector = sim.labels(scene)
        assert geometry == (0 if scene.technique in ("saxs", "waxs") else 1)
        techniques.add(TECHNIQUES[technique])
        features |= {FEATURES[j] for j in np.flatnonzero(vector)}
    assert techniques == set(TECHNIQUES)
    assert len(features) >= 4


def test_powder_rings_sit_at_the_bragg_q() -> None:
    """A WAXS powder ring is drawn where |q| = 2 pi / d: check the pixel geometry against Bragg's law."""
    scene = sim.Scene("waxs", "Pilatus1M", 1, (1043, 981), 172e-6, 0.2, 12.398419843, 521.5, 490.5)
    geometry = sim.pixel_geometry(scene)
    # A pixel ~0.05 m right of the beam at 0.2 m: 2 theta = atan(x / D); q = 4 pi sin(theta) / lambda (1 A).
    row, col = 521, int(490.5 + 0.05 / 172e-6)
    two_theta = np.arctan((col + 0.5 - 490.5) * 172e-6 / 0.2)
    assert geometry.q[row, col] == pytest.approx(4 * np.pi * np.sin(two_theta / 2), rel=1e-4)


@pytest.mark.parametrize("technique", ["gisaxs", "giwaxs"])
def test_grazing_scenes_put_the_horizon_on_the_detector(technique: str) -> None:
    """The horizon (exit angle 0) and the shadow below it are on the image, as grazing setups are aligned."""
    rng = np.random.default_rng(8)
    for _ in range(30):
        scene = sim.draw_scene(rng, technique, {"Pilatus1M": 1.0, "Pilatus300k": 1.0}, full_resolution=False)
        _, alpha_f, _ = sim._grazing_angles(scene, sim.pixel_geometry(scene))
        below = (alpha_f < 0).mean(axis=1)  # per detector row: the fraction in the sample's shadow
        assert 0.04 < (alpha_f < 0).mean() < 0.66, scene
        assert below[0] == 0 and below[-1] == 1  # the top row sees the sample, the bottom row its shadow


def test_wide_angle_scenes_always_show_a_reflection_or_halo() -> None:
    """Except the featureless variants drawn on purpose (a bare wafer in grazing incidence, since simulator 1.4)."""
    for i in range(24):
        _, scene = sim.simulate(np.random.SeedSequence([13, i]), ["waxs", "giwaxs"][i % 2], full_resolution=False)
        if realism.is_featureless(scene.variant):
            continue
        assert scene.features & {"rings", "arcs", "bragg_peaks", "diffuse_halo"}, scene


def test_solid_angle_and_polarisation_weaken_wide_angles_along_the_polarisation() -> None:
    scene = sim.Scene("waxs", "Pilatus1M", 1, (1043, 981), 172e-6, 0.1, 12.0, 521.5, 490.5)
    geometry = sim.pixel_geometry(scene)
    factor = sim.solid_angle_and_polarization(geometry, np.random.default_rng(0))  # draws a polarised beam
    centre, right, up = factor[521, 490], factor[521, 960], factor[60, 490]
    assert centre == pytest.approx(1.0, abs=1e-3)
    assert right < up < 0.9  # ~36 deg off axis: cos^3 and, along the horizontal polarisation, cos^2 2theta


# ---------------------------------------------------------------------------------------------------------
# Simulator 1.4: scene variants and detector effects (training.scattering.realism)

VARIANT_CASES = [(technique, name) for technique, names in realism.SCENE_VARIANTS.items() for name in names]


def test_every_variant_and_effect_is_drawn_with_its_probability() -> None:
    rng = np.random.default_rng(0)
    for technique, options in realism.SCENE_VARIANTS.items():
        drawn = [realism.draw_variant(rng, technique) for _ in range(4000)]
        assert drawn.count("") / len(drawn) > 0.75  # the 1.3 scene stays dominant
        for name, p in options.items():
            assert abs(drawn.count(name) / len(drawn) - p) < 0.02, (technique, name)
    effects = [realism.draw_effects(rng) for _ in range(4000)]
    for name, p in realism.DETECTOR_EFFECTS.items():
        assert abs(np.mean([name in e for e in effects]) - p) < 0.02, name


@pytest.mark.parametrize("full_resolution", [False, True])
@pytest.mark.parametrize(("technique", "variant"), VARIANT_CASES)
def test_variants_render_finite_images_of_the_detector_shape(
    technique: str, variant: str, full_resolution: bool
) -> None:
    effects = set(realism.DETECTOR_EFFECTS)
    image, scene = sim.simulate(
        np.random.SeedSequence([17, len(variant)]), technique, full_resolution=full_resolution, variant=variant,
        effects=effects,
    )  # fmt: skip
    shape, _, _ = sim.detector(scene.detector, scene.binning)
    assert scene.variant == variant and scene.effects == effects and scene.technique == technique
    assert sorted(image.shape) == sorted(shape)
    assert (full_resolution and scene.binning == 1) or (not full_resolution and max(shape) <= sim.SIM_LONG_SIDE_PX)
    encoded = encode_image(image)
    assert encoded.tensor.shape == (128, 128, 2) and np.isfinite(encoded.tensor).all()
    if realism.is_featureless(variant):
        assert not scene.features
    else:
        assert scene.features, scene


def test_offside_giwaxs_has_no_horizon_on_the_detector() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        scene = sim.draw_scene(rng, "giwaxs", {"Pilatus1M": 1.0, "Pilatus300k": 1.0}, full_resolution=False)
        realism.adjust_scene(scene, "offside", set(), rng)
        _, alpha_f, _ = sim._grazing_angles(scene, sim.pixel_geometry(scene))
        assert (alpha_f > 0).all(), scene


def test_narrow_edge_saxs_sees_q_1_to_1_8_with_the_beam_off_a_narrow_detector() -> None:
    for i in range(8):
        _, scene = sim.simulate(np.random.SeedSequence([19, i]), "saxs", full_resolution=False, variant="narrow_edge")
        rows, cols = scene.shape
        assert max(rows, cols) >= 2 * min(rows, cols)
        assert not (0 < scene.beam_row < rows and 0 < scene.beam_col < cols) or min(
            scene.beam_row, rows - scene.beam_row, scene.beam_col, cols - scene.beam_col) < 0.35 * min(rows, cols)  # fmt: skip
        q_max = float(sim.pixel_geometry(scene).q.max())
        assert 0.95 < q_max < 1.9 and scene.technique == "saxs"


def test_circular_ccd_writes_zero_outside_its_disc_and_uint16() -> None:
    image, scene = sim.simulate(np.random.SeedSequence([23, 1]), "gisaxs", {"Rayonix133": 1.0}, full_resolution=False,
                                variant="", effects=set())  # fmt: skip
    _, _, outside = sim.detector("Rayonix133", scene.binning)
    assert image.dtype == np.uint16 and outside.mean() > 0.15
    corners = [image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]]
    assert all(c == 0 for c in corners)


def test_ccd_pedestal_and_lab_source() -> None:
    pedestals, energies = [], []
    for i in range(12):
        image, scene = sim.simulate(np.random.SeedSequence([29, i]), "waxs", {"CCD1042": 1.0}, full_resolution=False,
                                    effects={"lab_source"})  # fmt: skip
        assert image.dtype == np.uint16 and image.shape == sim.detector("CCD1042", scene.binning)[0]
        pedestals.append(np.percentile(image, 1))
        energies.append(scene.energy_kev)
    assert max(pedestals) > 50  # some images carry a dark pedestal
    assert set(np.round(energies, 2)) <= {round(e, 2) for e in realism.LAB_ENERGIES_KEV.values()}
