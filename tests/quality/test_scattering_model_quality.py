"""The committed scattering sorter on held-out full-resolution simulated detector images, through the served path
(decoded frames -> codec -> ONNX Runtime -> probabilities).

1. The first images of the card's ``test`` and ``test_unseen_detectors`` splits are re-simulated from their seeds
   (on this machine the simulator reproduces the stored split exactly; another CPU's SIMD paths may round a few
   pixels differently) and sorted by the served model: the technique accuracy and the confidence coverage must
   be within sampling error of the card's numbers (compared by value, never by bytes), so a card that does not
   match its model fails. Both with the scene's setup given to the model (as a CBF/EDF/NeXus header gives it:
   ``metrics``) and without it (``metrics_without_setup``); with it, the model must do better on the same images.
2. The answer does not depend on how the detector was mounted or the file written (90-degree rotations and
   flips), nor on the gap convention of the file (-1 in int32, 2**32-1 in uint32, NaN in float32).
"""

from __future__ import annotations

import numpy as np
import pytest

from matserve.codecs.detector_files import Frame
from matserve.codecs.scattering import Setup
from matserve.models.scattering_sorter import ScatteringSorterModel
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from tests.conftest import MODELS_DIR

pytest.importorskip("pyFAI")
from training.scattering.labels import TECHNIQUES
from training.scattering.simulate import simulate_item

pytestmark = pytest.mark.slow
N_IMAGES = 48


@pytest.fixture(scope="module")
def sorter() -> ScatteringSorterModel:
    return ScatteringSorterModel(Registry(MODELS_DIR), OnnxRuntime(intra_op_threads=2))


@pytest.fixture(scope="module")
def test_images() -> list[tuple[np.ndarray, str]]:
    """(raw image, true technique) of the first test images, re-simulated at full resolution."""
    out = []
    for i in range(N_IMAGES):
        image, scene, _ = simulate_item(0, "test", i)
        out.append((image, scene.technique))
    return out


def sort(sorter: ScatteringSorterModel, images: list[np.ndarray], setups: list[Setup] | None = None) -> list[dict]:
    setups = setups or [Setup()] * len(images)
    frames = [
        Frame(image, None, f"image {k}", setup) for k, (image, setup) in enumerate(zip(images, setups, strict=True))
    ]
    results = sorter.sort(frames).results
    assert not any(r.get("error") for r in results)
    assert all((r["q_span_inv_angstrom"] is not None) == s.complete for r, s in zip(results, setups, strict=True))
    return results


def techniques(sorter: ScatteringSorterModel, images: list[np.ndarray], setups: list[Setup] | None = None) -> list[str]:
    return [r["technique"] for r in sort(sorter, images, setups)]


@pytest.mark.parametrize("split", ["test", "test_unseen_detectors"])
def test_card_accuracy_reproduces_on_resimulated_images(sorter: ScatteringSorterModel, split: str) -> None:
    card = sorter.card()
    truth, images, setups = [], [], []
    for i in range(N_IMAGES):
        image, scene, _ = simulate_item(0, split, i)
        images.append(image)
        truth.append(scene.technique)
        setups.append(Setup(scene.distance_m, scene.wavelength_a, scene.pixel_m, source="header"))
    assert set(truth) <= set(TECHNIQUES)
    accuracies = {}
    for metrics, given in (("metrics", setups), ("metrics_without_setup", None)):
        expected = card[metrics][split]["technique"]["accuracy"]
        results = sort(sorter, images, given)
        right = np.array([r["technique"] == t for r, t in zip(results, truth, strict=True)])
        accuracies[metrics] = float(right.mean())
        margin = 3.5 * np.sqrt(max(expected * (1 - expected), 0.02) / N_IMAGES)  # 3.5 standard errors
        assert accuracies[metrics] >= expected - margin, (split, metrics, accuracies[metrics], expected)
        # The confidence flag: as often set as the card says (within sampling error), and no worse than all images.
        confident = np.array([r["technique_confident"] for r in results], dtype=bool)
        coverage = card[metrics][split]["technique"]["confident"]["coverage"]
        assert abs(confident.mean() - coverage) <= 3.5 * np.sqrt(max(coverage * (1 - coverage), 0.02) / N_IMAGES)
        assert right[confident].mean() >= right.mean(), (split, metrics)
    assert (
        card["metrics"][split]["technique"]["accuracy"] > card["metrics_without_setup"][split]["technique"]["accuracy"]
    )
    assert accuracies["metrics"] >= accuracies["metrics_without_setup"], accuracies


def test_answers_do_not_depend_on_detector_mounting(sorter: ScatteringSorterModel, test_images: list) -> None:
    images = [image for image, _ in test_images]
    reference = techniques(sorter, images)
    for transform in (lambda a: np.rot90(a, 1), lambda a: np.rot90(a, 2), lambda a: a[:, ::-1], lambda a: a.T):
        moved = techniques(sorter, [np.ascontiguousarray(transform(image)) for image in images])
        agreement = np.mean([a == b for a, b in zip(moved, reference, strict=True)])
        assert agreement >= 0.85, agreement


def test_answers_do_not_depend_on_the_gap_convention(sorter: ScatteringSorterModel, test_images: list) -> None:
    signed = [image for image, _ in test_images if image.dtype == np.int32 and (image < 0).any()][:8]
    assert signed, "no int32 image with -1 gaps among the test images"
    as_uint32 = [np.where(image < 0, np.uint32(2**32 - 1), image.astype(np.uint32)) for image in signed]
    as_float = [np.where(image < 0, np.nan, image.astype(np.float32)) for image in signed]
    probabilities = [
        [r["technique_probabilities"] for r in sorter.sort([Frame(a, None, "x") for a in batch]).results]
        for batch in (signed, as_uint32, as_float)
    ]
    for other in probabilities[1:]:
        for a, b in zip(probabilities[0], other, strict=True):
            assert max(abs(a[k] - b[k]) for k in a) < 1e-4
