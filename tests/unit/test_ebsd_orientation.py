"""The EBSD orientation codec (cubic embedding, axis maps, least squares, decoding) against orix and kikuchipy,
and the training loss's disorientation and decoder (TensorFlow twins) against the served numpy versions."""

from __future__ import annotations

import numpy as np
import pytest

from matserve.codecs.orientation import (
    DETECTOR_TO_SAMPLE,
    axis_map,
    cubic_embedding,
    decode_cubic_embedding,
    detector_directions,
    embedding_from_axis_map,
    matrix_to_quaternion,
    orientations_from_axis_map,
    quaternion_to_matrix,
)
from training.ebsd.evaluate import disorientation_deg
from training.ebsd.simulate import random_quaternions

PCS = np.array([[0.425, 0.213, 0.501], [0.47, 0.18, 0.53], [0.39, 0.25, 0.46]])


@pytest.fixture(scope="module")
def orientations() -> np.ndarray:
    return random_quaternions(300, np.random.default_rng(11))


def test_matrices_match_orix(orientations: np.ndarray) -> None:
    from orix.quaternion import Rotation

    np.testing.assert_allclose(quaternion_to_matrix(orientations), Rotation(orientations).to_matrix(), atol=1e-12)
    assert disorientation_deg(orientations, matrix_to_quaternion(quaternion_to_matrix(orientations))).max() < 1e-6


def test_embedding_is_the_same_for_the_24_symmetry_equivalents_and_decodes_exactly(orientations: np.ndarray) -> None:
    from orix.quaternion import Rotation, symmetry

    embedding = cubic_embedding(orientations)
    for operation in symmetry.O:
        equivalent = (operation * Rotation(orientations)).data
        np.testing.assert_allclose(cubic_embedding(equivalent), embedding, atol=1e-6)
        assert disorientation_deg(orientations, equivalent).max() < 1e-4  # orix agrees they are the same
    decoded = decode_cubic_embedding(embedding)
    assert disorientation_deg(orientations, decoded).max() < 1e-3
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=1e-12)
    assert (decoded[:, 0] >= 0).all()


def test_embedding_separates_different_orientations(orientations: np.ndarray) -> None:
    """A 5 deg rotation changes the embedding: it is not invariant beyond the crystal symmetry."""
    from orix.quaternion import Rotation

    turned = (Rotation.from_axes_angles([1, 2, 3], np.deg2rad(5)) * Rotation(orientations)).data
    assert np.linalg.norm(cubic_embedding(turned) - cubic_embedding(orientations), axis=1).min() > 0.01


def test_detector_directions_match_kikuchipy() -> None:
    import kikuchipy as kp
    from kikuchipy.signals.util._master_pattern import _get_direction_cosines_from_detector

    detector = kp.detectors.EBSDDetector(shape=(15, 15), pc=PCS, sample_tilt=70)
    expected = _get_direction_cosines_from_detector(detector).reshape(len(PCS), -1, 3)
    np.testing.assert_allclose(detector_directions(PCS), expected, atol=1e-12)
    single = kp.detectors.EBSDDetector(shape=(15, 15), pc=PCS[0], sample_tilt=70)
    np.testing.assert_allclose((~single.sample_to_detector).to_matrix().squeeze(), DETECTOR_TO_SAMPLE, atol=1e-12)


def test_exact_axis_maps_give_the_orientation_for_shared_and_per_pattern_pcs(orientations: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    per_pattern = PCS[0] + rng.uniform(-0.05, 0.05, (len(orientations), 3))
    for pcs in (np.tile(PCS[1], (len(orientations), 1)), per_pattern):
        maps = axis_map(orientations, detector_directions(pcs)).reshape(-1, 15, 15)
        quaternions, residual = orientations_from_axis_map(maps, pcs)
        assert disorientation_deg(orientations, quaternions).max() < 1e-3
        assert residual.max() < 1e-5
    # the wrong PC for a map leaves a residual: the fit says when one orientation does not explain the map
    maps = axis_map(orientations, detector_directions(per_pattern)).reshape(-1, 15, 15)
    _, residual = embedding_from_axis_map(maps, per_pattern + 0.05)
    assert np.median(residual) > 1e-3


def test_training_disorientation_loss_matches_orix(orientations: np.ndarray) -> None:
    """The loss's differentiable disorientation over the 24 proper rotations of 432, against orix (m-3m):
    0 deg for symmetry-equivalent rotations, orix's angle for random pairs and for known small rotations."""
    tf = pytest.importorskip("tensorflow")
    from orix.quaternion import Rotation, symmetry

    from training.ebsd.networks import disorientation_rad

    def loss_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.degrees(disorientation_rad(tf.constant(a, tf.float32), tf.constant(b, tf.float32)).numpy())

    equivalent = (symmetry.O[7] * Rotation(orientations)).data
    assert loss_deg(orientations, equivalent).max() < 0.06  # the clip keeps the gradient finite: 0.05 deg floor
    others = random_quaternions(len(orientations), np.random.default_rng(12))
    np.testing.assert_allclose(loss_deg(orientations, others), disorientation_deg(orientations, others), atol=0.06)
    turned = (Rotation.from_axes_angles([0, 0, 1], np.deg2rad(3.0)) * Rotation(orientations)).data
    np.testing.assert_allclose(disorientation_deg(orientations, turned), 3.0, atol=1e-6)
    np.testing.assert_allclose(loss_deg(orientations, turned), 3.0, atol=0.02)


def test_tensorflow_twins_match_the_served_numpy_functions(orientations: np.ndarray) -> None:
    tf = pytest.importorskip("tensorflow")
    from training.ebsd.networks import decode_embedding, embedding_from_map_tf

    rng = np.random.default_rng(4)
    pcs = PCS[0] + rng.uniform(-0.05, 0.05, (len(orientations), 3))
    maps = axis_map(orientations, detector_directions(pcs)).reshape(-1, 15, 15)
    noisy = (maps + rng.normal(0, 0.02, maps.shape)).astype(np.float32)
    expected, _ = embedding_from_axis_map(noisy, pcs)
    got = embedding_from_map_tf(tf.constant(noisy), tf.constant(pcs, tf.float32)).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-3)
    decoded = decode_embedding(tf.constant(expected, tf.float32)).numpy()
    assert disorientation_deg(decode_cubic_embedding(expected), decoded).max() < 0.01
