"""The served XRD 1.1.0 (physics fit + calibrated trust, issue 21) through the model classes, against 1.0.0.

Patterns from the training simulator with fixed seeds, sent as JSON-like items on the model grid (or on part of
it); models loaded once per module from the repository's registry.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from matserve.codecs.xrd import MODEL_GRID_DEG
from matserve.models.xrd_novelty import XrdNoveltyModel
from matserve.models.xrd_phase import XrdPhaseModel
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from tests.conftest import MODELS_DIR
from training.xrd import simulate as sim
from training.xrd.structures import phase_by_name

FCC, BCC, HCP = "fcc_Fm-3m", "bcc_Im-3m", "hcp_P6_3-mmc"
KNOWN = (FCC, BCC, HCP)
ROCK_SALT = "rocksalt_Fm-3m"
NEW, OLD = "1.1.0", "1.0.0"
PHYSICS_FIELDS = ("abstained", "reason", "probability_unknown", "best_fit_phase", "best_fit_residual", "phases")


@pytest.fixture(scope="module")
def models() -> tuple[XrdPhaseModel, XrdNoveltyModel]:
    registry, runtime = Registry(MODELS_DIR), OnnxRuntime()
    return XrdPhaseModel(registry, runtime), XrdNoveltyModel(registry, runtime)


def items(patterns: np.ndarray, first: int = 0) -> list[dict[str, Any]]:
    """Wire items of model-grid patterns, sent from grid point ``first`` on (a partial scan: only measured points)."""
    grid = MODEL_GRID_DEG[first:].tolist()
    return [{"two_theta_deg": grid, "intensity": row[first:].astype(float).tolist()} for row in patterns]


def rock_salt(n: int, seed: int) -> np.ndarray:
    """Rock-salt impostor patterns (MgO, NiO, MnO, NaCl prototypes at 4.15-5.70 Å), standard profile."""
    patterns, _ = sim.simulate_phase(ROCK_SALT, n, np.random.default_rng(seed))
    return patterns


# -- known phases --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", KNOWN)
def test_known_patterns_are_answered_with_their_phase_and_lattice(
    models: tuple[XrdPhaseModel, XrdNoveltyModel], label: str
) -> None:
    n = 8
    patterns, params = sim.simulate_phase(label, n, np.random.default_rng(100 + KNOWN.index(label)))
    prediction = models[0](items(patterns), NEW)
    assert prediction.version == NEW
    right = 0
    for k, result in enumerate(prediction.results):
        assert result["error"] is None and result["abstained"] is False and result["reason"] is None
        assert result["measured_range_deg"] == [20.0, 90.0]
        assert 0.0 <= result["probability_unknown"] < 0.5
        total = sum(result["probabilities"].values())
        assert total == pytest.approx(1.0 - result["probability_unknown"], abs=1e-3)
        assert result["probability"] == pytest.approx(result["probabilities"][result["phase"]], abs=1e-6)
        assert result["unexplained_fraction"] < 0.1
        if result["phase"] != label or [p["phase"] for p in result["phases"]] != [label]:
            continue
        right += 1
        assert result["best_fit_phase"] == label
        strained = params["phase_a_angstrom"][k] * (1.0 + params["phase_strain"][k])
        assert result["phases"][0]["lattice_a_angstrom"] == pytest.approx(strained, rel=0.01)
        if label == HCP:
            c = params["phase_c_angstrom"][k] * (1.0 + params["phase_strain"][k])
            assert result["phases"][0]["lattice_c_angstrom"] == pytest.approx(c, rel=0.01)
        else:
            assert result["phases"][0]["lattice_c_angstrom"] is None
    # measured on 40 per class (same seeds): all right with the code of 21:47 UTC; with that of 21:40, 1 fcc had a
    # spurious second (hcp) phase and 1 hcp (a 2.58 Å, 6 nm) was answered bcc with phases [bcc, hcp]
    assert right >= n - 1


# -- impostors -----------------------------------------------------------------------------------------------------


def test_rock_salt_is_less_trusted_than_known(models: tuple[XrdPhaseModel, XrdNoveltyModel]) -> None:
    phase = models[0]
    impostors = phase(items(rock_salt(20, 200)), NEW).results
    known = phase(items(sim.simulate_phase(FCC, 20, np.random.default_rng(201))[0]), NEW).results
    unknown_rs = np.array([r["probability_unknown"] for r in impostors])
    unknown_fcc = np.array([r["probability_unknown"] for r in known])
    # measured (seeds 200/201, cards of 21:42 UTC): rock salt median 0.287, fcc median 0.070 (max 0.259)
    assert np.median(unknown_rs) > 2.5 * np.median(unknown_fcc)
    assert np.median(unknown_rs) - np.median(unknown_fcc) > 0.1
    assert not any(r["abstained"] for r in known)
    for r in impostors:  # answered or not, the closest known family is named
        assert r["best_fit_phase"] in KNOWN and 0.0 < r["best_fit_residual"] <= 1.0


def test_abstentions_are_explained(models: tuple[XrdPhaseModel, XrdNoveltyModel]) -> None:
    random_peaks, _ = sim.simulate_random_peaks(20, np.random.default_rng(210))  # 3-25 peaks of no structure
    patterns = np.concatenate([random_peaks, rock_salt(20, 200)])
    results = models[0](items(patterns), NEW).results
    # measured: 17 of the 20 random-peak patterns abstained with the code of 21:44 UTC, 13 with that of 21:47
    # (components under MIN_CONFIDENCE no longer make it abstain); 0 of the 20 rock salt ones
    assert np.mean([r["abstained"] for r in results[:20]]) >= 0.5
    for r in results:
        if not r["abstained"]:
            assert r["phase"] in KNOWN and r["reason"] is None and r["phases"]
            continue
        assert r["phase"] is None and r["space_group"] is None and r["probability"] is None
        assert isinstance(r["reason"], str) and len(r["reason"]) > 20
        assert r["best_fit_phase"] in KNOWN and r["phases"] == []
        assert 0.0 < r["best_fit_residual"] <= 1.0  # (also abstains with a low probability_unknown when no
        # component is confident enough: measured 0.35 on one random-peak pattern)


@pytest.mark.xfail(
    strict=True,
    reason="1.1.0 abstains on few rock-salt patterns (a held-out impostor type): 0 of these 20 with the 1.1.0 "
    "cards (probability_unknown median 0.29, threshold 0.954), not the >= 80 % asked; 15 % on the lab evaluation "
    "set (README, 'Knowing what it does not know')",
)
def test_most_rock_salt_patterns_abstain(models: tuple[XrdPhaseModel, XrdNoveltyModel]) -> None:
    results = models[0](items(rock_salt(20, 200)), NEW).results
    abstained = [r for r in results if r["abstained"]]
    for r in abstained:
        assert r["phase"] is None and r["reason"] and r["best_fit_phase"] in KNOWN
    assert len(abstained) >= 0.8 * len(results)


def test_rock_salt_on_1_0_0_does_not_abstain(models: tuple[XrdPhaseModel, XrdNoveltyModel]) -> None:
    """Documents the change: 1.0.0 always answers a known phase, without any of the physics fields."""
    results = models[0](items(rock_salt(20, 200)), OLD).results
    for r in results:
        assert r["phase"] in KNOWN and r["probability"] > 0
        assert not r.get("abstained", False)
        assert all(name not in r for name in PHYSICS_FIELDS)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_an_answered_phase_is_among_its_phases(models: tuple[XrdPhaseModel, XrdNoveltyModel]) -> None:
    """Before 21:40 UTC an answered rock salt could read phase bcc_Im-3m next to phases [fcc_Fm-3m] (9 of 40)."""
    results = models[0](items(rock_salt(20, 200)), NEW).results
    for r in results:
        if not r["abstained"]:
            assert r["phase"] in [p["phase"] for p in r["phases"]]
            if len(r["phases"]) == 1:
                assert r["phase"] == r["phases"][0]["phase"]


# -- mixtures, partial scans ---------------------------------------------------------------------------------------


def test_a_binary_mixture_is_answered_with_both_phases(models: tuple[XrdPhaseModel, XrdNoveltyModel]) -> None:
    rng = np.random.default_rng(300)
    n = 4
    fcc = sim.ideal_phase_params(phase_by_name(FCC), n, prototype=1)  # Cu 3.615 Å
    bcc = sim.ideal_phase_params(phase_by_name(BCC), n, prototype=0)  # Fe 2.866 Å
    measurement = sim.sample_measurement_params(n, rng)
    patterns = sim.mix(FCC, fcc, BCC, bcc, np.full(n, 0.6), measurement, rng)
    for result in models[0](items(patterns), NEW).results:
        assert result["abstained"] is False and result["phase"] == FCC
        assert [p["phase"] for p in result["phases"]] == [FCC, BCC]
        assert result["phases"][0]["weight_fraction"] == pytest.approx(0.6, abs=0.15)
        assert result["phases"][0]["lattice_a_angstrom"] == pytest.approx(3.615, rel=0.01)
        assert result["phases"][1]["lattice_a_angstrom"] == pytest.approx(2.866, rel=0.01)


@pytest.mark.parametrize(("first", "second"), [(FCC, BCC), (FCC, HCP), (BCC, HCP)])
def test_random_binary_mixtures_list_both_phases(
    models: tuple[XrdPhaseModel, XrdNoveltyModel], first: str, second: str
) -> None:
    n = 10
    patterns, _ = sim.simulate_mixtures(first, second, np.full(n, 0.6), np.random.default_rng(310))
    results = models[0](items(patterns), NEW).results
    both = 0
    for r in results:
        assert r["error"] is None
        if r["abstained"]:
            continue
        listed = [p["phase"] for p in r["phases"]]
        assert r["phase"] in listed and 1 <= len(listed) <= 3
        both += {first, second} <= set(listed)
    # measured: 9 of 10 for each pair with the code of 21:47 UTC (the miss: one phase only, or a third); with the
    # fit of 22:01 (cards of 21:53) one bcc + hcp mixture abstains instead (probability_unknown 0.955 > 0.9546)
    assert both >= n - 2


@pytest.mark.parametrize("label", KNOWN)
def test_a_partial_scan_is_accepted_on_its_measured_range(
    models: tuple[XrdPhaseModel, XrdNoveltyModel], label: str
) -> None:
    patterns, _ = sim.simulate_phase(label, 8, np.random.default_rng(400))
    sent = items(patterns, int(np.searchsorted(MODEL_GRID_DEG, 35.0)))  # 35-90° only: nothing below 35° is sent
    for result in models[0](sent, NEW).results:
        assert result["error"] is None
        assert result["measured_range_deg"] == pytest.approx([35.0, 90.0], abs=0.05)
        assert result["coverage"] == pytest.approx(55.0 / 70.0, abs=1e-3)
        assert result["abstained"] is False and result["phase"] == label
        assert [p["phase"] for p in result["phases"]] == [label]
        # the floor-filled 20-35° is not read as a peak at the 35° step (measured: unexplained 0.0, probability
        # unknown <= 0.10; with the range ignored: up to 0.09 and 0.55)
        assert result["unexplained_fraction"] < 0.02 and result["probability_unknown"] < 0.2
    for result in models[1](sent, NEW).results:
        assert result["error"] is None and result["best_fit_phase"] == label
        assert result["novelty_score"] < 0.2  # measured <= 0.08; with the range ignored up to 0.37


# -- novelty -------------------------------------------------------------------------------------------------------


def test_novelty_1_1_0_scores_with_the_physics_fit(models: tuple[XrdPhaseModel, XrdNoveltyModel]) -> None:
    novelty = models[1]
    known = np.concatenate([sim.simulate_phase(label, 5, np.random.default_rng(500 + i))[0]
                            for i, label in enumerate(KNOWN)])  # fmt: skip
    known_results = novelty(items(known), NEW).results
    impostor_results = novelty(items(rock_salt(20, 200)), NEW).results
    for r in known_results + impostor_results:
        assert 0.0 <= r["novelty_score"] <= 1.0
        assert 0.0 <= r["physics_residual"] <= 1.0 and r["best_fit_phase"] in KNOWN
        assert isinstance(r["is_novel"], bool)
    for r, label in zip(known_results, np.repeat(KNOWN, 5), strict=True):
        assert r["best_fit_phase"] == label
    known_score = np.median([r["novelty_score"] for r in known_results])
    impostor_score = np.median([r["novelty_score"] for r in impostor_results])
    # measured (cards of 21:42 UTC): known median 0.013, rock salt 0.37 (is_novel on 2 of 20: threshold 0.938)
    assert impostor_score > known_score + 0.2
    assert np.median([r["physics_residual"] for r in impostor_results]) > 3.0 * np.median(
        [r["physics_residual"] for r in known_results]
    )
    assert not any(r["is_novel"] for r in known_results)


def test_novelty_1_0_0_has_no_novelty_score(models: tuple[XrdPhaseModel, XrdNoveltyModel]) -> None:
    results = models[1](items(rock_salt(3, 200)), OLD).results
    for r in results:
        assert r["novelty_score"] is None and r["physics_residual"] is None and r["best_fit_phase"] is None
        assert 0.0 <= r["novelty_percentile"] <= 100.0


# -- hostile batches -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [NEW, OLD])
def test_a_refused_item_does_not_spoil_the_batch(models: tuple[XrdPhaseModel, XrdNoveltyModel], version: str) -> None:
    good, _ = sim.simulate_phase(HCP, 1, np.random.default_rng(600))
    narrow = items(good, int(np.searchsorted(MODEL_GRID_DEG, 60.0)))[0]  # 60-90°: a 30° span, under the 35° minimum
    batch = [narrow, items(good)[0], {"two_theta_deg": [20.0, 21.0], "intensity": [1.0]}]
    for model in models:
        results = model(batch, version).results
        assert len(results) == 3
        for bad in (results[0], results[2]):
            assert bad["error"] and bad["measured_range_deg"] is None
        assert "span" in results[0]["error"]
        assert results[1]["error"] is None and results[1]["measured_range_deg"] == [20.0, 90.0]
    phase = models[0](batch, version).results
    assert phase[0]["phase"] is None and phase[1]["phase"] == HCP
    novelty = models[1](batch, version).results
    assert novelty[0]["novelty_percentile"] is None and novelty[1]["novelty_percentile"] is not None
    if version == NEW:
        assert phase[1]["abstained"] is False and [p["phase"] for p in phase[1]["phases"]] == [HCP]
        assert novelty[1]["novelty_score"] is not None and novelty[0]["novelty_score"] is None
