"""The committed EBSD indexer on held-out simulated patterns and on the real Ni patterns shipped with kikuchipy
(through the served path: codec, ONNX Runtime, least squares and decoding).

1. The card's ``test_noisy`` metrics are reproduced: the split is re-simulated from the seed in the card's
   manifest (the simulator is deterministic; its fingerprint must match), so a card that does not match its
   model fails.
2. The 9 real Ni patterns give the card's numbers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from matserve.registry import Registry
from tests.conftest import MODELS_DIR
from training.ebsd.evaluate import OnnxIndexer, evaluate_cnn, real_nickel
from training.ebsd.simulate import load_split, write_datasets

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def version():
    return Registry(MODELS_DIR).get("ebsd_indexer")


@pytest.fixture(scope="module")
def indexer(version) -> OnnxIndexer:
    calibration = version.card["orientation_decoding"]["error_deg_per_fit_residual"]
    return OnnxIndexer(version.path / "model.onnx", calibration)


def test_card_reproduces_on_the_resimulated_noisy_split(version, indexer: OnnxIndexer, tmp_path: Path) -> None:
    card = version.card
    sizes = card["split"]["sizes"]
    write_datasets(tmp_path, n_train=sizes["train"], n_eval=sizes["test_noisy"], seed=card["split"]["seed"],
                   splits=("test_noisy",))  # fmt: skip
    digest = hashlib.sha256((tmp_path / "test_noisy_000.npz").read_bytes()).hexdigest()
    assert digest == card["data"]["fingerprint_sha256"]["test_noisy_000.npz"]
    got = evaluate_cnn(indexer, load_split(tmp_path, "test_noisy"))
    expected = card["metrics"]["test_noisy"]
    assert got["n"] == expected["n"]
    for key in ("mean_disorientation_deg", "median_disorientation_deg", "fraction_above_5_deg"):
        assert got[key] == pytest.approx(expected[key], abs=1e-3), key


def test_real_nickel_patterns_match_the_card(version, indexer: OnnxIndexer) -> None:
    got = real_nickel(indexer)
    expected = version.card["metrics"]["real_nickel_ebsd_small"]
    np.testing.assert_allclose(got["angles_deg"], expected["angles_deg"], atol=1e-2)
