"""The scattering training pipeline end to end on a few hundred simulated images: simulate every split, train
both networks for an epoch, the histogram baseline, ONNX export (the script fails on a Keras/ONNX mismatch),
card, registry, and the served model class on the result."""

from __future__ import annotations

import hashlib
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
    """The val split re-simulated with one worker instead of two holds the same images, labels and setups,
    compared by value; the manifest holds the sha256 of each file as written (provenance: bytes read back)."""
    from training.scattering.simulate import SETUP_FIELDS

    data = tiny_scattering_registry / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["train"]["n"] == 200 and manifest["test_harsh"]["n"] == 6
    assert manifest["val"]["sha256"] == hashlib.sha256((data / "val.npz").read_bytes()).hexdigest()
    again = tiny_scattering_registry / "again"
    command = [*simulate_command(again, workers=1), "--splits", "val"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=600)
    with np.load(data / "val.npz") as stored, np.load(again / "val.npz") as fresh:
        assert sorted(stored.files) == sorted(fresh.files)
        for key in ("technique", "geometry", "features", "detector"):  # labels: integers drawn with the scene
            np.testing.assert_array_equal(fresh[key], stored[key], err_msg=key)
        for key in SETUP_FIELDS:  # drawn from the seeded generator (float64): rounding at most
            np.testing.assert_allclose(fresh[key], stored[key], rtol=1e-12, err_msg=key)
        # The codec tensors are stored as round(255 x value): a rounding difference moves a rare pixel by one
        # level; another seed, worker-dependent seeding or a changed simulator changes far more, by far more.
        difference = np.abs(fresh["tensors"].astype(np.int16) - stored["tensors"].astype(np.int16))
        assert difference.max() <= 1 and np.mean(difference > 0) <= 1e-3


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
        stored = (split["distance_m"][i], split["wavelength_angstrom"][i])
        assert stored == pytest.approx((scene.distance_m, scene.wavelength_a), rel=1e-12)  # float64 draws
        q_span = Setup(scene.distance_m, scene.wavelength_a, scene.pixel_m).q_span_inv_angstrom(scene.shape)
        np.testing.assert_allclose(split["setup"][i], [np.log10(q_span), 1.0], rtol=1e-6)


def test_confidence_thresholds_are_calibrated_and_reported(tiny_scattering_registry: Path) -> None:
    card = Registry(tiny_scattering_registry / "models").get("scattering_sorter", "0.0.1-test").card
    thresholds = card["technique_confidence_thresholds"]
    assert set(thresholds) == {"setup_known", "setup_unknown"}
    assert all(0.5 <= t <= 0.99 for t in thresholds.values())
    for metrics, case in (("metrics", "setup_known"), ("metrics_without_setup", "setup_unknown")):
        confident = card[metrics]["test"]["technique"]["confident"]
        assert confident["threshold"] == thresholds[case] and 0.0 <= confident["coverage"] <= 1.0


def test_calibrated_confidence_threshold_is_the_smallest_reaching_the_target() -> None:
    from training.scattering.train import calibrate_confidence_threshold

    # 100 images: the 10 least confident (top probability 0.55) are all wrong, the other 90 (0.75-0.97) right.
    confidence = np.r_[np.full(10, 0.55), np.linspace(0.75, 0.97, 90)]
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    truth = np.r_[np.ones(10, dtype=int), np.zeros(90, dtype=int)]
    assert calibrate_confidence_threshold(probabilities, truth, target=0.995) == 0.56
    assert calibrate_confidence_threshold(probabilities, truth, target=0.9) == 0.5  # 90 % right overall
    assert calibrate_confidence_threshold(probabilities[:10], truth[:10], target=0.995) == 0.99  # never reached


def test_a_served_onnx_graph_is_undone_into_keras_exactly(tiny_scattering_registry: Path) -> None:
    """``--init-from-onnx``: the folded batch normalisations are recovered, so Keras answers what ONNX answers."""
    import onnxruntime as ort

    from training.scattering import networks
    from training.scattering.simulate import load_split

    path = tiny_scattering_registry / "models" / "scattering_sorter" / "0.0.1-test" / "model.onnx"
    train, val = (load_split(tiny_scattering_registry / "data", name) for name in ("train", "val"))
    network = networks.sorter_cnn(with_setup=True)
    networks.load_from_onnx(network, str(path), train["images"][:128], train["setup"][:128])
    inputs = {"images": val["images"], "setup": val["setup"]}
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)
    got = network.predict(inputs, verbose=0)
    for g, e in zip(got, expected, strict=True):
        assert np.abs(g - e).max() <= 1e-4 * max(1.0, float(np.abs(e).max()))
    norm = next(layer for layer in network.layers if layer.__class__.__name__ == "BatchNormalization")
    gamma, _, _, moving_variance = norm.get_weights()
    np.testing.assert_allclose(gamma, np.sqrt(moving_variance + norm.epsilon), rtol=1e-6)
    assert moving_variance.min() > 0  # real statistics, not the identity of the first pass
