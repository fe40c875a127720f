"""The active scattering sorter on the real development images (``../shared/data/scattering_real``, read in place:
their licences do not allow copying them here), through the served reader and lifecycle.

The card's ``real_development_set`` (written by ``python -m training.scattering.calibrate_real --write-card``)
reports what the version does on these 20 images. Sorting them again must give at least that many right, the
same confident answers, and the same leave-one-repository-out result, so a reader or codec change that loses
accuracy on real files, or a card that does not match its model, fails here.
"""

from __future__ import annotations

import pytest

from matserve.models.scattering_sorter import ScatteringSorterModel
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from tests.conftest import MODELS_DIR
from training.scattering.calibrate_real import DEV_SET, RUNS, report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sorter() -> ScatteringSorterModel:
    return ScatteringSorterModel(Registry(MODELS_DIR), OnnxRuntime(intra_op_threads=2))


@pytest.fixture(scope="module")
def measured(sorter: ScatteringSorterModel) -> dict:
    if not (DEV_SET / "manifest.tsv").is_file():
        pytest.skip(f"the real development set is not at {DEV_SET}")
    return report(sorter, sorter.version().version)


def test_the_active_version_reports_the_real_development_set(sorter: ScatteringSorterModel) -> None:
    card = sorter.card()
    assert "real_development_set" in card, "the active scattering sorter's card has no real_development_set"
    assert card["feature_distance"]["threshold"] > 0


@pytest.mark.parametrize("run", RUNS)
def test_real_accuracy_and_confident_answers_match_the_card(
    sorter: ScatteringSorterModel, measured: dict, run: str
) -> None:
    stated = sorter.card()["real_development_set"]
    now, card = measured["in_sample_with_served_thresholds"][run], stated["in_sample_with_served_thresholds"][run]
    assert now["images"] == card["images"] == 20
    assert now["right"] >= card["right"], f"{run}: {now['right']} of 20 right, the card says {card['right']}"
    assert (now["confident"], now["confident_right"]) == (card["confident"], card["confident_right"])
    assert measured["thresholds"]["served"] == stated["thresholds"]["served"]
    loro_now = measured["leave_one_repository_out"]["pooled"][run]
    loro_card = stated["leave_one_repository_out"]["pooled"][run]
    assert loro_now["right"] >= loro_card["right"]
    assert loro_now["confident_right"] >= loro_card["confident_right"]
    assert loro_now["confident"] - loro_now["confident_right"] <= loro_card["confident"] - loro_card["confident_right"]


def test_every_real_file_is_read_and_sorted(measured: dict) -> None:
    errors = [(s["file"], s["error"]) for s in measured["images"] if s["error"]]
    assert not errors


def test_images_unlike_any_detector_frame_are_flagged_and_never_confident(sorter: ScatteringSorterModel) -> None:
    """Stripes, a checkerboard and a grey-level gradient are no scattering image: the network still puts most of
    its probability on one technique, but feature_distance flags them and they are not confident."""
    import numpy as np

    from matserve.codecs.detector_files import Frame

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:512, 0:512]
    aliens = {
        "stripes": ((np.sin(x / 5) + 1) * 500).astype(np.int32),
        "checkerboard": (((x // 32) + (y // 32)) % 2 * 1000 + rng.poisson(5, (512, 512))).astype(np.int32),
        "gradient": (x + y).astype(np.int32),
    }
    results = sorter.sort([Frame(image, None, name) for name, image in aliens.items()]).results
    threshold = sorter.card()["feature_distance"]["threshold"]
    for name, result in zip(aliens, results, strict=True):
        assert result["feature_distance"] > threshold, name
        assert result["out_of_distribution"] is True and result["technique_confident"] is False, name
