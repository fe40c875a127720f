"""The XRD training pipeline end to end on a few hundred simulated patterns: simulate, train both models,
export to ONNX (the script itself fails on a Keras/ONNX mismatch), registry, serve through the model classes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from matserve.codecs.xrd import MODEL_GRID_DEG
from matserve.models.xrd_novelty import XrdNoveltyModel
from matserve.models.xrd_phase import XrdPhaseModel
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_xrd_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("xrd_pipeline")
    command = [
        sys.executable, "-m", "training.xrd.train", "--version", "0.0.1-test", "--models-dir", str(root / "models"),
        "--data", str(root / "data"), "--per-class", "60", "--eval-per-class", "30", "--phase-epochs", "2",
        "--vae-epochs", "2", "--reference-vae-epochs", "1", "--outlier-epochs", "1",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "models"


def test_pipeline_writes_verified_versions_with_complete_cards(tiny_xrd_registry: Path) -> None:
    registry = Registry(tiny_xrd_registry)
    phase = registry.get("xrd_phase", "0.0.1-test").card
    novelty = registry.get("xrd_novelty", "0.0.1-test").card
    for card in (phase, novelty):
        assert card["split"]["sizes"]["train.npz"] == 180 and card["split"]["train_profile"] == "wide"
        assert set(card["data"]["fingerprint_sha256"]) >= {"train.npz", "test.npz", "novel.npz", "mixtures.npz"}
        assert card["onnx"]["parity_max_abs_diff_vs_keras"] <= 1e-4
        assert card["labels"] == ["fcc_Fm-3m", "bcc_Im-3m", "hcp_P6_3-mmc"]
    assert phase["metrics"]["test"]["n"] == 90 and len(phase["metrics"]["test"]["confusion_matrix"]) == 3
    assert phase["baselines"]["knn_raw_patterns"]["k"] in (1, 5, 15)
    assert len(novelty["calibration"]["validation_quantiles"]) == 1001
    assert 0.0 <= novelty["metrics"]["standard"]["novelty_score"]["auroc_unknown_vs_known"] <= 1.0
    assert "outlier_probability" in [o["name"] for o in novelty["outputs"]]
    assert novelty["baselines"]["seed_vae_2d_latent"]["architecture"]["latent_dimensions"] == 2
    assert "latent_reference.npz" in novelty["files"]


def test_the_trained_versions_serve(tiny_xrd_registry: Path) -> None:
    registry, runtime = Registry(tiny_xrd_registry), OnnxRuntime()
    rng = np.random.default_rng(0)
    pattern = {"two_theta_deg": MODEL_GRID_DEG.tolist(), "intensity": rng.random(2048).tolist()}
    bad = {"two_theta_deg": [20.0, 21.0], "intensity": [1.0]}
    phase = XrdPhaseModel(registry, runtime)([pattern, bad])
    assert phase.version == "0.0.1-test"
    assert abs(sum(phase.results[0]["probabilities"].values()) - 1.0) < 1e-4
    assert phase.results[1]["error"] and phase.results[1]["phase"] is None
    novelty = XrdNoveltyModel(registry, runtime)([pattern])
    result = novelty.results[0]
    assert result["reconstruction_error"] > 0 and 0 <= result["novelty_percentile"] <= 100
    assert (
        result["nearest_known_phase"] in ("fcc_Fm-3m", "bcc_Im-3m", "hcp_P6_3-mmc") and len(result["latent_map"]) == 2
    )
