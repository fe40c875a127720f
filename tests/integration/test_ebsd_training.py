"""The EBSD training pipeline end to end on a few hundred simulated patterns: simulate (kikuchipy master
pattern), train a few steps, export to ONNX (the script fails on a Keras/ONNX mismatch), registry, serve
through the model class; and the simulator's reproducibility."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from matserve.models.ebsd_indexer import EbsdIndexerModel
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_ebsd_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ebsd_pipeline")
    command = [
        sys.executable, "-m", "training.ebsd.train", "--version", "0.0.1-test", "--models", str(root / "models"),
        "--data", str(root / "data"), "--n-train", "300", "--n-eval", "40", "--n-easy", "100", "--steps", "12",
        "--steps-per-epoch", "6", "--batch-size", "32", "--runs", str(root / "runs"),
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def test_pipeline_writes_a_verified_version_with_a_complete_card(tiny_ebsd_registry: Path) -> None:
    card = Registry(tiny_ebsd_registry / "models").get("ebsd_indexer", "0.0.1-test").card
    assert card["split"]["sizes"]["train"] == 300 and card["split"]["sizes"]["test_noisy"] == 40
    assert {"train_000.npz", "test_noisy_000.npz", "test_low_dose_000.npz"} <= set(card["data"]["fingerprint_sha256"])
    assert card["onnx"]["parity_max_abs_axis_map"] <= 1e-4
    assert card["training"]["steps"] == 12 and len(card["training"]["validation_per_epoch"]) >= 2
    for name in ("test_clean", "test_noisy", "test_pc_shifted", "test_low_dose", "real_nickel_ebsd_small"):
        metrics = card["metrics"][name]
        assert 0.0 <= metrics["mean_disorientation_deg"] <= 62.8  # the largest m-3m disorientation
    assert card["orientation_decoding"]["error_deg_per_fit_residual"] > 0
    assert card["geometry"]["nominal_pc"] == [0.425, 0.213, 0.501]


def test_the_trained_version_serves(tiny_ebsd_registry: Path) -> None:
    model = EbsdIndexerModel(Registry(tiny_ebsd_registry / "models"), OnnxRuntime())
    rng = np.random.default_rng(0)
    prediction = model([{"pattern": (rng.random((60, 60)) * 255).tolist()}, {"pattern": [[1.0] * 60] * 60}])
    good, constant = prediction.results
    assert prediction.version == "0.0.1-test"
    assert len(good["quaternion"]) == 4 and abs(np.linalg.norm(good["quaternion"]) - 1) < 1e-6
    assert good["error"] is None and "constant" in constant["error"]


def test_simulation_is_reproducible_and_seeded(tiny_ebsd_registry: Path) -> None:
    """Re-simulating a split with the same seed gives the same patterns (compared by value: both runs are on this
    machine, but byte identity is not what the simulator promises across CPUs); the manifest and the card record
    the fingerprint of the files as written (provenance: bytes read back from disk)."""
    from training.ebsd.simulate import load_split, write_datasets

    data, again = tiny_ebsd_registry / "data", tiny_ebsd_registry / "again"
    manifest = write_datasets(again, n_train=300, n_eval=40, seed=0, splits=("test_noisy",))
    digest = hashlib.sha256((again / "test_noisy_000.npz").read_bytes()).hexdigest()
    assert manifest["files"]["test_noisy_000.npz"]["sha256"] == digest
    card = Registry(tiny_ebsd_registry / "models").get("ebsd_indexer", "0.0.1-test").card
    written = hashlib.sha256((data / "test_noisy_000.npz").read_bytes()).hexdigest()
    assert card["data"]["fingerprint_sha256"]["test_noisy_000.npz"] == written
    original, split = load_split(data, "test_noisy"), load_split(again, "test_noisy")
    # Ground truth from the seeded generator (float64 through sqrt/sin/cos; PCs float32): a few ulps at most.
    np.testing.assert_allclose(split["quaternions"], original["quaternions"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(split["pc"], original["pc"], rtol=0, atol=1e-7)
    # Patterns: uint8 camera images. Rounding may differ in a rare pixel (another CPU changed 2 pixels in a million
    # of the 2,000-pattern split); a change of seed, recipe or simulator changes nearly all of them.
    assert split["patterns"].dtype == np.uint8 and split["patterns"].shape == (40, 60, 60)
    assert np.mean(split["patterns"] != original["patterns"]) <= 1e-4
    difference = np.abs(split["patterns"].astype(np.float64) - original["patterns"].astype(np.float64))
    assert difference.mean() <= 0.01  # grey levels
    assert np.abs(split["pc"] - np.array([0.425, 0.213, 0.501])).max() <= 0.02 + 1e-6
