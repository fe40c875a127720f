"""Master-pattern matching of the EBSD indexer (:mod:`matserve.matching`): the numba projection
against kikuchipy's, the compressed dictionary, and the refinement's accuracy on freshly simulated noisy patterns
(a seed no training or evaluation set uses)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from matserve.codecs.ebsd import NOMINAL_PC
from matserve.codecs.orientation import disorientation_deg, quaternion_multiply
from matserve.matching import (
    CompressedDictionary,
    MasterPattern,
    direction_cosines,
    fundamental_zone_grid,
    prepare_for_matching,
    refine,
    warp_to_pc,
)
from training.ebsd import simulate

SEED = 20261121


@pytest.fixture(scope="module")
def master() -> MasterPattern:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MasterPattern.from_kikuchipy(simulate.master_pattern())


@pytest.fixture(scope="module")
def noisy() -> dict[str, np.ndarray]:
    """24 patterns degraded with the held-out "noisy" recipe (PC jitter up to 0.02, noise, backgrounds)."""
    return simulate.simulate_split(24, simulate.RECIPES["noisy"], np.random.default_rng(SEED))


def rotated(quaternions: np.ndarray, angle_deg: float, seed: int) -> np.ndarray:
    """Each orientation followed by a rotation of ``angle_deg`` about a random axis."""
    axes = np.random.default_rng(seed).normal(size=(len(quaternions), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    half = np.deg2rad(angle_deg) / 2
    turn = np.column_stack([np.full(len(axes), np.cos(half)), np.sin(half) * axes])
    return quaternion_multiply(turn, np.asarray(quaternions, dtype=np.float64))


def test_projection_equals_kikuchipy_get_patterns(master: MasterPattern) -> None:
    rng = np.random.default_rng(SEED)
    quaternions = simulate.random_quaternions(6, rng)
    pc = np.array([0.44, 0.2, 0.52])
    reference = simulate.simulate_clean(quaternions, np.tile(pc, (6, 1)))  # kikuchipy, rescaled to [-1, 1]
    ours = master.project(quaternions, pc).reshape(6, -1).astype(np.float64)
    low, high = ours.min(axis=1, keepdims=True), ours.max(axis=1, keepdims=True)
    rescaled = 2 * (ours - low) / (high - low) - 1
    np.testing.assert_allclose(rescaled.reshape(reference.shape), reference, atol=2e-4)


def kikuchipy_direction_cosines(pc: np.ndarray, shape: tuple[int, int], sample_tilt_deg: float,
                                detector_tilt_deg: float) -> np.ndarray:  # fmt: skip
    """Pixel directions in the sample frame from kikuchipy's own detector (gnomonic bounds, PCz, rotation)."""
    import kikuchipy

    detector = kikuchipy.detectors.EBSDDetector(shape=shape, pc=pc, sample_tilt=sample_tilt_deg, tilt=detector_tilt_deg)
    bounds = np.asarray(detector.gnomonic_bounds, dtype=np.float64).reshape(-1, 4)
    pcz = np.asarray(detector.pcz, dtype=np.float64).reshape(-1)
    detector_to_sample = np.asarray((~detector.sample_to_detector).to_matrix(), dtype=np.float64).reshape(3, 3)
    rows, cols = shape
    gn_x = bounds[:, :1] + (np.arange(cols) + 0.5) * ((bounds[:, 1] - bounds[:, 0]) / cols)[:, None]
    gn_y = bounds[:, 3:4] - (np.arange(rows) + 0.5) * ((bounds[:, 3] - bounds[:, 2]) / rows)[:, None]
    vectors = np.empty((len(pc), rows, cols, 3))
    vectors[..., 0] = gn_x[:, None, :] * pcz[:, None, None]
    vectors[..., 1] = gn_y[:, :, None] * pcz[:, None, None]
    vectors[..., 2] = pcz[:, None, None]
    vectors = vectors.reshape(len(pc), rows * cols, 3) @ detector_to_sample.T
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def test_direction_cosines_are_kikuchipys_without_importing_it() -> None:
    pcs = np.array([NOMINAL_PC, (NOMINAL_PC[0], NOMINAL_PC[1], 0.6), (0.46, 0.18, 0.55)])
    for shape, sample_tilt, detector_tilt in (((60, 60), 70.0, 0.0), ((60, 50), 65.0, 3.0)):
        ours = direction_cosines(pcs, shape, sample_tilt, detector_tilt)
        assert ours.shape == (3, shape[0] * shape[1], 3)
        np.testing.assert_allclose(
            ours, kikuchipy_direction_cosines(pcs, shape, sample_tilt, detector_tilt), atol=1e-12
        )
    vectors = direction_cosines(pcs[:2], (60, 60))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-12)
    # a farther screen (larger PCz) sees a narrower cone: adjacent pixels are closer in angle
    step = [np.arccos(np.clip(np.sum(v[0] * v[1]), -1, 1)) for v in vectors]
    assert step[1] < step[0]


def test_refinement_reaches_a_tenth_of_a_degree_from_two_degrees_off(master: MasterPattern,
                                                                     noisy: dict[str, np.ndarray]) -> None:  # fmt: skip
    prepared = prepare_for_matching(noisy["patterns"])
    start = rotated(noisy["quaternions"], 2.0, seed=1)
    assert disorientation_deg(start, noisy["quaternions"]) == pytest.approx(2.0, abs=1e-6)
    refined, scores = refine(master, prepared, noisy["pc"], start)
    errors = disorientation_deg(refined, noisy["quaternions"])
    assert np.median(errors) < 0.3 and np.mean(errors) < 0.5, errors
    assert np.all((scores > 0) & (scores <= 1))
    # several starts: the best-scoring one wins, so a hopeless start next to a good one changes nothing
    hopeless = rotated(noisy["quaternions"], 40.0, seed=2)
    both, _ = refine(master, prepared, noisy["pc"], np.stack([hopeless, start], axis=1))
    assert np.median(disorientation_deg(both, noisy["quaternions"])) < 0.3


def test_compressed_dictionary_finds_clean_patterns_and_is_deterministic(master: MasterPattern) -> None:
    dictionary = CompressedDictionary.build(master, np.asarray(NOMINAL_PC), resolution_deg=8.0, components=48)
    again = CompressedDictionary.build(master, np.asarray(NOMINAL_PC), resolution_deg=8.0, components=48)
    assert len(dictionary.quaternions) == len(fundamental_zone_grid(8.0)) > 500
    np.testing.assert_array_equal(dictionary.coefficients, again.coefficients)
    # dictionary entries themselves, simulated again, come back as their own best match
    picks = np.arange(0, len(dictionary.quaternions), len(dictionary.quaternions) // 20)[:20]
    patterns = master.project(dictionary.quaternions[picks], np.asarray(NOMINAL_PC))
    candidates, similarity = dictionary.candidates(prepare_for_matching(patterns), 3)
    assert candidates.shape == (20, 3, 4) and np.all(np.diff(similarity, axis=1) <= 0)
    assert disorientation_deg(candidates[:, 0], dictionary.quaternions[picks]).max() < 1e-6


def test_warp_to_pc_shows_a_pattern_as_seen_from_another_pc(master: MasterPattern) -> None:
    """A pattern simulated at a shifted PC, warped to the nominal PC, is the pattern simulated at the nominal PC
    (up to bilinear interpolation, and where the nominal screen's rays still meet the shifted screen)."""
    nominal = np.asarray(NOMINAL_PC)
    shifted = np.array([[0.465, 0.213, 0.501], [0.425, 0.173, 0.53], [0.40, 0.25, 0.48]])
    quaternions = simulate.random_quaternions(3, np.random.default_rng(SEED))
    at_shifted = np.stack([master.project(q[None], pc)[0] for q, pc in zip(quaternions, shifted, strict=True)])
    at_nominal = master.project(quaternions, nominal).reshape(3, 60, 60)
    warped = warp_to_pc(at_shifted.reshape(3, 60, 60), shifted, nominal)
    assert warped.shape == (3, 60, 60) and warped.dtype == np.float32
    interior = (slice(8, 52), slice(8, 52))  # the largest shift moves the screen by 0.04 x 60 px

    def ncc(a: np.ndarray, b: np.ndarray, smoothing_px: float = 0.0) -> float:
        if smoothing_px:
            a, b = gaussian_filter(a, smoothing_px), gaussian_filter(b, smoothing_px)
        return float(np.corrcoef(a[interior].ravel(), b[interior].ravel())[0, 1])

    for original, got, want in zip(at_shifted.reshape(3, 60, 60), warped, at_nominal, strict=True):
        assert ncc(original, want) < 0.5  # the shift matters: unwarped, the patterns differ
        # bilinear resampling of a sharp 60 px simulation costs some correlation (0.92-0.95 even for a 0.005 shift);
        # smoothed by 1 px, what is left is the geometry
        assert ncc(got, want) > 0.9 and ncc(got, want, smoothing_px=1.0) > 0.975
    # a pattern at the target PC is returned unchanged
    np.testing.assert_allclose(warp_to_pc(at_nominal, nominal, nominal), at_nominal, atol=1e-4)


def test_dictionary_graph_matches_the_numpy_search(master: MasterPattern, noisy: dict[str, np.ndarray]) -> None:
    """The exported ONNX graph (preparation, projection, cosine, top-k: ``training.ebsd.dictionary``) answers what
    :meth:`CompressedDictionary.candidates` answers for the same patterns (float16 coefficients: 1e-3)."""
    import onnxruntime as ort

    from training.ebsd.dictionary import dictionary_graph

    dictionary = CompressedDictionary.build(master, np.asarray(NOMINAL_PC), resolution_deg=8.0, components=48)
    session = ort.InferenceSession(dictionary_graph(dictionary, candidates=3).SerializeToString(),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    patterns = noisy["patterns"].astype(np.float32)
    graph_quaternions, graph_similarity = session.run(None, {"patterns": patterns})
    quaternions, similarity = dictionary.candidates(prepare_for_matching(patterns), 3)
    assert graph_quaternions.shape == (24, 3, 4) and graph_similarity.shape == (24, 3)
    np.testing.assert_allclose(graph_similarity, similarity, atol=1e-3)
    same = np.abs(np.abs(np.sum(graph_quaternions[:, 0] * quaternions[:, 0], axis=1)) - 1) < 1e-6
    assert same.mean() >= 0.9  # a near-tie may swap under float16 coefficients
