"""The scattering training pipeline end to end on a few hundred simulated images: simulate every split, train
both networks for an epoch, the histogram baseline, ONNX export (the script fails on a Keras/ONNX mismatch),
card, registry, and the served model class on the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from matserve.codecs.scattering import Setup
from matserve.registry import Registry
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def simulate_command(out: Path, workers: int) -> list[str]:
    """The simulator's command line for the tiny dataset (200 train, 40 val, 6 per test split)."""
    sizes = ["--n-train", "200", "--n-eval", "40", "--n-test", "6"]
    return [sys.executable, "-m", "training.scattering.simulate", "--out", str(out), *sizes, "--workers", str(workers)]


@pytest.fixture(scope="module")
def tiny_scattering_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("pyFAI")
    root = tmp_path_factory.mktemp("scattering_pipeline")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    simulate = simulate_command(root / "data", workers=2)
    done = subprocess.run(simulate, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    train = [
        sys.executable,
        "-m",
        "training.scattering.train",
        "--version",
        "0.0.1-test",
        "--models-dir",
        str(root / "models"),
        "--data",
        str(root / "data"),
        "--epochs",
        "1",
        "--lenet-epochs",
        "1",
        "--with-setup",
    ]
    done = subprocess.run(train, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def test_simulation_is_reproducible_and_fingerprinted(tiny_scattering_registry: Path) -> None:
    manifest = json.loads((tiny_scattering_registry / "data" / "manifest.json").read_text())
    assert manifest["train"]["n"] == 200 and manifest["test_harsh"]["n"] == 6
    again = tiny_scattering_registry / "again"
    command = [*simulate_command(again, workers=1), "--splits", "val"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=600)
    assert json.loads((again / "manifest.json").read_text())["val"]["sha256"] == manifest["val"]["sha256"]


def test_pipeline_writes_a_verified_version_with_a_complete_card(tiny_scattering_registry: Path) -> None:
    card = Registry(tiny_scattering_registry / "models").get("scattering_sorter", "0.0.1-test").card
    assert card["onnx"]["parity_max_diff_vs_keras"] <= 1e-4
    assert set(card["data"]["fingerprint_sha256"]) == {"train", "val", "test", "test_unseen_detectors", "test_harsh"}
    assert card["labels"]["technique"] == ["saxs", "waxs", "gisaxs", "giwaxs"]
    test = card["metrics"]["test"]
    assert test["n"] == 6 and np.array(test["technique"]["confusion_matrix"]["counts"]).sum() == 6
    assert -1.0 <= test["technique"]["cohen_kappa"] <= 1.0 and set(test["features"]) == set(card["labels"]["features"])
    lenet = card["baselines"]["seed_lenet"]
    assert lenet["architecture"]["filters"] == [64, 64, 48] and lenet["onnx_parity"] <= 1e-4
    assert card["baselines"]["histogram_features_random_forest"]["test"]["n"] == 6
    assert [o["name"] for o in card["outputs"]] == [
        "technique_probabilities",
        "geometry_probabilities",
        "feature_probabilities",
        "class_activation_maps",
    ]
    assert [i["name"] for i in card["inputs"]] == ["images", "setup"] and card["architecture"]["setup_units"] == 16
    without = card["metrics_without_setup"]["test"]
    assert without["n"] == 6 and np.array(without["technique"]["confusion_matrix"]["counts"]).sum() == 6


def test_the_stored_setup_is_the_scene_s_and_gives_the_setup_input(tiny_scattering_registry: Path) -> None:
    from training.scattering.simulate import load_split, simulate_item

    split = load_split(tiny_scattering_registry / "data", "test")
    for i in range(3):
        _, scene, _ = simulate_item(0, "test", i)
        assert split["distance_m"][i] == scene.distance_m and split["wavelength_angstrom"][i] == scene.wavelength_a
        q_span = Setup(scene.distance_m, scene.wavelength_a, scene.pixel_m).q_span_inv_angstrom(scene.shape)
        np.testing.assert_allclose(split["setup"][i], [np.log10(q_span), 1.0], rtol=1e-6)
