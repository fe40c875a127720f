"""The committed XRD models on held-out simulated patterns (through ONNX Runtime, as served).

1. The card's test metrics are reproduced: the test/novel/mixture splits are re-simulated from the seed in the
   card's data manifest and the metrics compared with the card's within tolerances (the simulator is deterministic
   on one machine, not bit-identical across CPUs; neither is ONNX Runtime), so a card that does not match its
   model fails.
2. Fresh draws the training never saw (other seeds) meet the issue's targets, on the standard ranges and on
   the wide ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from matserve.models.xrd_novelty import XrdNoveltyModel, calibration
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from tests.conftest import MODELS_DIR
from training.xrd import simulate as sim
from training.xrd.structures import KNOWN_PHASES, NOVEL_PHASES

KNOWN = [p.name for p in KNOWN_PHASES]
NOVEL = [p.name for p in NOVEL_PHASES]
RUNTIME = OnnxRuntime()
UNKNOWN_AUROC_FLOOR = 0.95  # card: 0.985 on 4,000 unknown patterns; a fresh draw of 600 varies
MIXTURE_AUROC_FLOOR = 0.9  # card: 0.962
SPLIT_INDEX = {"test": 2, "novel": 3, "mixtures": 4}  # SeedSequence children, see simulate.write_datasets
#: Test patterns whose predicted phase may differ from the card's run on another CPU. None can: the least
#: confident of the 3,000 has a top probability 0.998 above the runner-up, while another CPU changes a rare
#: re-simulated float16 value by one ulp (~1e-3; none with numpy's AVX-512 paths disabled) and ONNX Runtime's
#: outputs by ~1e-6 relative. One is allowed as a margin; a changed model or simulator shows more (the card's
#: wide-range test split has 8 errors).
PHASE_ERRORS_ALLOWED = 1
#: Absolute tolerance of the re-computed AUROCs (12 and 9 million known/other pairs): flipping 1 float16 ulp in up
#: to 0.1 % of the re-simulated inputs, or 1e-5 relative noise on the scores (ONNX Runtime differs by ~1e-6),
#: moved them by < 5e-7 (a few pairs swapping order). 1e-4 is 200 times that and still 20 times below the AUROCs'
#: sampling error (~2e-3), so another model or a changed simulator shows.
AUROC_ATOL = 1e-4


def registry_version(name: str):
    return Registry(MODELS_DIR).get(name)


def card_split(card: dict, split: str) -> dict[str, np.ndarray]:
    """Re-simulate a split exactly as the dataset command of the card did."""
    seed, n = card["split"]["seed"], card["split"]["sizes"][f"{split}.npz"]
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(8)[SPLIT_INDEX[split]])
    if split == "mixtures":
        arrays = sim.mixture_set(KNOWN, n // 3, rng, "float16")
    else:
        names = KNOWN if split == "test" else NOVEL
        arrays = sim.single_phase_set(names, n // len(names), rng, "float16")
    arrays["x"] = arrays["x"].astype(np.float32)
    return arrays


def run(name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    return RUNTIME.run(registry_version(name), {"pattern": x.astype(np.float32)})


def test_phase_card_accuracy_is_reproduced() -> None:
    card = registry_version("xrd_phase").card
    test = card_split(card, "test")
    predicted = run("xrd_phase", test["x"])["phase_probabilities"].argmax(axis=1)
    right, expected = int((predicted == test["y"]).sum()), card["metrics"]["test"]
    assert len(predicted) == expected["n"]
    assert abs(right - round(expected["accuracy"] * expected["n"])) <= PHASE_ERRORS_ALLOWED, right


def novelty_score(x: np.ndarray) -> np.ndarray:
    """The served novelty score (see ``Calibration.score``) of patterns on the model grid."""
    out = run("xrd_novelty", x)
    cal = calibration(registry_version("xrd_novelty"))
    outlier = out["outlier_probability"].reshape(-1) if "outlier_probability" in out else None
    return cal.score(out["reconstruction_error"].reshape(-1), outlier)


def auroc(known: np.ndarray, other: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(known)), np.ones(len(other))], np.r_[known, other]))


def test_novelty_card_aurocs_are_reproduced() -> None:
    card = registry_version("xrd_novelty").card
    scores = {split: novelty_score(card_split(card, split)["x"]) for split in ("test", "novel", "mixtures")}
    standard = card["metrics"]["standard"]["novelty_score"]
    assert auroc(scores["test"], scores["novel"]) == pytest.approx(standard["auroc_unknown_vs_known"], abs=AUROC_ATOL)
    assert auroc(scores["test"], scores["mixtures"]) == pytest.approx(
        standard["auroc_mixtures_vs_known"], abs=AUROC_ATOL
    )


@pytest.mark.parametrize("profile", [sim.STANDARD, sim.WIDE], ids=lambda p: p.name)
def test_phase_accuracy_on_fresh_patterns(profile: sim.RangeProfile) -> None:
    rng = np.random.default_rng(20261121)
    arrays = sim.single_phase_set(KNOWN, 300, rng, "float16", profile)
    predicted = run("xrd_phase", arrays["x"].astype(np.float32))["phase_probabilities"].argmax(axis=1)
    accuracy = (predicted == arrays["y"]).mean()
    assert accuracy >= 0.99, f"{profile.name}: {accuracy:.4f}"


def test_novelty_separates_fresh_unknown_phases_and_mixtures() -> None:
    rng = np.random.default_rng(777)
    known = novelty_score(sim.single_phase_set(KNOWN, 300, rng, "float16")["x"].astype(np.float32))
    novel = novelty_score(sim.single_phase_set(NOVEL, 150, rng, "float16")["x"].astype(np.float32))
    mixtures = novelty_score(sim.mixture_set(KNOWN, 200, rng, "float16")["x"].astype(np.float32))
    assert auroc(known, novel) >= UNKNOWN_AUROC_FLOOR
    assert auroc(known, mixtures) >= MIXTURE_AUROC_FLOOR
    cal = calibration(registry_version("xrd_novelty"))
    assert (known > cal.threshold_score).mean() <= 0.05  # ~1 % by construction (99th percentile of val)


def test_nearest_known_phase_agrees_with_the_label() -> None:
    rng = np.random.default_rng(31)
    arrays = sim.single_phase_set(KNOWN, 100, rng, "float32")
    items = [{"two_theta_deg": sim.TWO_THETA_DEG.tolist(), "intensity": x.tolist()} for x in arrays["x"]]
    results = XrdNoveltyModel(Registry(MODELS_DIR), RUNTIME)(items).results
    nearest = np.array([KNOWN.index(r["nearest_known_phase"]) for r in results])
    # The card reports 0.64 for latent 15-NN (chance: 0.33): the unsupervised latent mixes the phases over the
    # wide lattice ranges; the classifier (xrd_phase) is the one to ask for the phase.
    assert (nearest == arrays["y"]).mean() >= 0.5
