"""The committed EBSD indexers on held-out simulated patterns and on the real Ni patterns shipped with kikuchipy
(through the served path: 1.0.0 codec, ONNX Runtime, least squares and decoding; 2.0.0 the dictionary graph and
the PC correction).

1. Each card's ``test_noisy`` metrics are reproduced: the split is re-simulated from the seed in the 1.0.0 card's
   manifest (the simulator is deterministic; its fingerprint must match both cards'), so a card that does not
   match its model fails.
2. The 9 real Ni patterns give each card's numbers.
3. The dictionary (2.0.0) is more accurate than the network (1.0.0) on the same re-simulated patterns.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from matserve.registry import Registry
from tests.conftest import MODELS_DIR
from training.ebsd.dictionary import DictionaryIndexer
from training.ebsd.evaluate import OnnxIndexer, disorientation_deg, evaluate_cnn, real_nickel, summary
from training.ebsd.simulate import load_split, write_datasets

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def version():
    return Registry(MODELS_DIR).get("ebsd_indexer", "1.0.0")


@pytest.fixture(scope="module")
def dictionary_version():
    return Registry(MODELS_DIR).get("ebsd_indexer", "2.0.0")


@pytest.fixture(scope="module")
def noisy_split(version, tmp_path_factory) -> dict[str, np.ndarray]:
    """``test_noisy`` re-simulated from the 1.0.0 card's seed; its fingerprint must be the cards'."""
    card = version.card
    folder = tmp_path_factory.mktemp("ebsd_noisy")
    sizes = card["split"]["sizes"]
    write_datasets(folder, n_train=sizes["train"], n_eval=sizes["test_noisy"], seed=card["split"]["seed"],
                   splits=("test_noisy",))  # fmt: skip
    digest = hashlib.sha256((folder / "test_noisy_000.npz").read_bytes()).hexdigest()
    assert digest == card["data"]["fingerprint_sha256"]["test_noisy_000.npz"]
    return load_split(folder, "test_noisy")


@pytest.fixture(scope="module")
def indexer(version) -> OnnxIndexer:
    calibration = version.card["orientation_decoding"]["error_deg_per_fit_residual"]
    return OnnxIndexer(version.path / "model.onnx", calibration)


def test_card_reproduces_on_the_resimulated_noisy_split(version, indexer: OnnxIndexer, noisy_split) -> None:
    got = evaluate_cnn(indexer, noisy_split)
    expected = version.card["metrics"]["test_noisy"]
    assert got["n"] == expected["n"]
    for key in ("mean_disorientation_deg", "median_disorientation_deg", "fraction_above_5_deg"):
        assert got[key] == pytest.approx(expected[key], abs=1e-3), key


def test_real_nickel_patterns_match_the_card(version, indexer: OnnxIndexer) -> None:
    got = real_nickel(indexer)
    expected = version.card["metrics"]["real_nickel_ebsd_small"]
    np.testing.assert_allclose(got["angles_deg"], expected["angles_deg"], atol=1e-2)


def _dictionary_indexer(dictionary_version) -> DictionaryIndexer:
    calibration = dictionary_version.card["orientation_decoding"]["error_by_similarity"]
    return DictionaryIndexer(dictionary_version.path / "model.onnx", calibration)


def test_dictionary_card_reproduces_on_the_resimulated_noisy_split(dictionary_version, indexer: OnnxIndexer,
                                                                    noisy_split) -> None:  # fmt: skip
    card = dictionary_version.card
    assert (
        card["data"]["fingerprint_sha256"]["test_noisy_000.npz"]
        == (Registry(MODELS_DIR).get("ebsd_indexer", "1.0.0").card["data"]["fingerprint_sha256"]["test_noisy_000.npz"])
    )
    found = _dictionary_indexer(dictionary_version).index(noisy_split["patterns"], noisy_split["pc"])
    angles = disorientation_deg(noisy_split["quaternions"], found["quaternion"])
    got, expected = summary(angles), card["metrics"]["test_noisy"]
    assert got["n"] == expected["n"] == 2000
    for key in ("mean_disorientation_deg", "median_disorientation_deg", "fraction_above_5_deg"):
        assert got[key] == pytest.approx(expected[key], abs=2e-2), key
    network = evaluate_cnn(indexer, noisy_split)
    assert got["median_disorientation_deg"] < 2.0 < network["median_disorientation_deg"]
    assert got["mean_disorientation_deg"] < network["mean_disorientation_deg"] / 3
    # the calibrated error estimate ranks the patterns: the worst-rated tenth holds most of the failures
    worst = found["expected_error_deg"] >= np.quantile(found["expected_error_deg"], 0.9)
    assert np.mean(angles[worst] > 5) > 3 * np.mean(angles[~worst] > 5)


def test_dictionary_real_nickel_patterns_match_the_card(dictionary_version) -> None:
    from training.ebsd import baselines

    real = baselines.real_nickel_set()
    found = _dictionary_indexer(dictionary_version).index(real["patterns"], real["pc"])
    angles = disorientation_deg(real["quaternions"], found["quaternion"])
    expected = dictionary_version.card["metrics"]["real_ni_9"]
    assert summary(angles)["mean_disorientation_deg"] == pytest.approx(expected["mean_disorientation_deg"], abs=1e-2)
    assert angles.max() < 3.0
