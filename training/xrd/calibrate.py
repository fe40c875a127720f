"""Issue 21: the physics fit, its calibration and the new XRD versions (``xrd_phase`` and ``xrd_novelty`` 1.1.0).

No network is retrained: 1.1.0 serves 1.0.0's ONNX graphs with the physics fit of :mod:`matserve.models.xrd_fit`
and two one-class scores and a logistic regression fitted here on *calibration* data only:

* ``probability_unknown`` (phase answer): a one-class score (:class:`matserve.models.xrd_trust.OneClassScore`) of
  what no mix of known phases explains, mapped to a probability on known patterns and mixtures of known phases
  against the calibration impostor types (:data:`training.xrd.realism.CALIBRATION_IMPOSTORS`); abstain above its
  99.5th percentile on the known calibration patterns (0.5 % false abstain there);
* ``novelty_score`` (novelty answer): the same kind of score of the best single family's residuals and the two
  learned scores; ``is_novel`` at 1 % false alarm on the known calibration patterns;
* component confidence: each mixture component's share, misfit and matched reflections, against whether it is
  one of the true phases.

Calibration data: ``runs/data_seed0/val.npz`` (clean validation), and the lab-realism sets of
``runs/calib_seed2`` (``python -m training.xrd.realism --out training/xrd/runs/calib_seed2 --per-class 500
--seed 2``). The held-out impostor types (:data:`training.xrd.realism.HELD_OUT_IMPOSTORS`) are never used here.
Evaluation (``--evaluate``) calls the *served* models through the registry on ``runs/eval_seed1`` (seed 1, never
used for fitting) and ``runs/data_seed0/{test,novel,mixtures}.npz``, sending partial-range patterns as only their
measured points, and writes the numbers into both cards (``trust_metrics``) with 1.0.0 on the same sets.

    python -m training.xrd.calibrate              # fit, write models/xrd_{phase,novelty}/1.1.0, evaluate (~5 min)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from sklearn.linear_model import LogisticRegression

from matserve.codecs.xrd import MODEL_GRID_DEG
from matserve.models import xrd_novelty, xrd_trust
from matserve.models.xrd_families import REFERENCE_FILE, family_from_json, reference_entry
from matserve.registry import Registry, write_card
from training.xrd.realism import CALIBRATION_IMPOSTORS, HELD_OUT_IMPOSTORS
from training.xrd.structures import KNOWN_PHASES, load_cache
from training.xrd.trust_eval import evaluate, load

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNS = Path(__file__).resolve().parent / "runs"
BASE_VERSION = "1.0.0"
NEW_VERSION = "1.1.0"
FALSE_ALARM_RATE = 0.01
SEED = 21
#: Lattice windows the fit searches, Å (wider than the simulator's wide ranges: real metals like Pb, Li, Zr).
LATTICE_WINDOWS = {
    "fcc_Fm-3m": ((2.9, 5.0), (1.0, 1.0)),
    "bcc_Im-3m": ((2.35, 3.75), (1.0, 1.0)),
    "hcp_P6_3-mmc": ((2.05, 3.8), (1.42, 2.03)),
}
PHASE_FEATURES = ("log_unexplained_left", "log_component_misfit")
"""What the phase answer's ``probability_unknown`` looks at: signal no mix of known phases explains, and the worst
intensity misfit of a phase it names (a mixture is *not* unknown here)."""
NOVELTY_FEATURES = ("log_unexplained_single", "log_misfit_single", "reconstruction_percentile", "outlier_percentile")
"""What ``novelty_score`` looks at: how badly the best single family fits, and the two learned scores."""
PHASE_FALSE_ABSTAIN_RATE = 0.005
QUANTILES = 1001
COMPONENT_FEATURES = ("share", "log_misfit", "matched", "fraction")


def physics_reference(labels: list[str]) -> dict[str, Any]:
    """``physics_reference.json``: the known families in the classifier's label order, from the simulator's cache."""
    cache = load_cache()["phases"]
    phases = {p.name: p for p in KNOWN_PHASES}
    entries = []
    for label in labels:
        phase = phases[label]
        a_window, q_window = LATTICE_WINDOWS[label]
        entries.append(reference_entry(label, phase.space_group.replace("/", ""), phase.crystal_system, cache[label],
                                       [list(d) for d in phase.texture_directions], a_window, q_window))  # fmt: skip
    return {"wavelength_angstrom": 1.54184, "families": entries}


def _mask_outside(x: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """What the codec makes of a partial scan: outside the measured range, the minimum inside it, then [0, 1]."""
    grid = MODEL_GRID_DEG[None, :]
    inside = (grid >= measured[:, :1]) & (grid <= measured[:, 1:])
    floor = np.where(inside, x, np.inf).min(axis=1, keepdims=True)
    y = np.where(inside, x, floor)
    low, high = y.min(axis=1, keepdims=True), y.max(axis=1, keepdims=True)
    return ((y - low) / np.maximum(high - low, 1e-12)).astype(np.float32)


class Graphs:
    """1.0.0's classifier and novelty graphs and the novelty calibration, run directly for the calibration sets."""

    def __init__(self, models_dir: Path) -> None:
        registry = Registry(models_dir)
        self.phase_version = registry.get("xrd_phase", BASE_VERSION)
        self.novelty_version = registry.get("xrd_novelty", BASE_VERSION)
        options = ort.SessionOptions()
        self.phase = ort.InferenceSession(str(self.phase_version.file()), options, providers=["CPUExecutionProvider"])
        self.novelty = ort.InferenceSession(str(self.novelty_version.file()), options,
                                            providers=["CPUExecutionProvider"])  # fmt: skip
        self.calibration = xrd_novelty.calibration(self.novelty_version)

    def run(self, x: np.ndarray, measured: np.ndarray) -> dict[str, np.ndarray]:
        """Classifier probabilities, masked reconstruction error, outlier probability, nearest latent phase."""
        out: dict[str, list[np.ndarray]] = {"probabilities": [], "errors": [], "outlier": [], "nearest": []}
        for start in range(0, len(x), 512):
            xs, ms = x[start : start + 512], measured[start : start + 512]
            (probs,) = self.phase.run(None, {"pattern": xs})
            names = [o.name for o in self.novelty.get_outputs()]
            values = dict(zip(names, self.novelty.run(None, {"pattern": xs}), strict=True))
            errors = xrd_novelty.masked_reconstruction_error(xs, values["reconstruction"], ms)
            out["probabilities"].append(probs)
            out["errors"].append(errors)
            out["outlier"].append(values["outlier_probability"].reshape(-1))
            out["nearest"].append(self.calibration.nearest_phase(values["latent_mean"])[0])
        return {k: np.concatenate(v) for k, v in out.items()}


def evidence(graphs: Graphs, families: tuple, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Phase and novelty features of a set, exactly as the served 1.1.0 computes them."""
    x = _mask_outside(data["x"], data["measured_range_deg"])
    measured = data["measured_range_deg"]
    run = graphs.run(x, measured)
    cal = graphs.calibration
    phase_report, phase_named = xrd_trust.phase_evidence(families, x, measured, run["probabilities"])
    _, novelty_named = xrd_trust.novelty_evidence(
        families, x, measured, run["nearest"], xrd_novelty.percentile_among(run["errors"], cal.error_quantiles),
        xrd_novelty.percentile_among(run["outlier"], cal.outlier_quantiles),
    )  # fmt: skip
    return {"phase_report": phase_report, "phase": phase_named, "novelty": novelty_named}


def fit_logistic(named: list[dict[str, np.ndarray]], labels: list[np.ndarray], names: tuple[str, ...]) -> dict:
    """A balanced logistic regression on standardised features, as a card entry."""
    x = np.concatenate([np.stack([n[k] for k in names], axis=1) for n in named])
    y = np.concatenate(labels)
    mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit((x - mean) / scale, y)
    return {"features": list(names), "mean": mean.round(6).tolist(), "scale": scale.round(6).tolist(),
            "weights": model.coef_[0].round(6).tolist(), "bias": round(float(model.intercept_[0]), 6)}  # fmt: skip


def fit_one_class(
    known: list[dict[str, np.ndarray]],
    positive: list[dict[str, np.ndarray]],
    negative: list[dict[str, np.ndarray]],
    names: tuple[str, ...],
    false_alarm_rate: float,
) -> dict[str, Any]:
    """A :class:`matserve.models.xrd_trust.OneClassScore` card entry: known quantiles, Fisher statistic, a
    one-feature logistic (positives against negatives, balanced) and the threshold at the false-alarm rate on
    ``known``."""
    reference = {k: np.concatenate([n[k] for n in known]) for k in names}
    quantiles = np.stack([np.quantile(reference[k], np.linspace(0.0, 1.0, QUANTILES)) for k in names])
    entry: dict[str, Any] = {"features": list(names), "known_quantiles": quantiles.round(6).tolist(),
                             "tail_floor": 0.5 / len(reference[names[0]]), "slope": 1.0, "intercept": 0.0,
                             "threshold": 0.5}  # fmt: skip
    score = xrd_trust.OneClassScore.from_card(entry)
    x = np.concatenate([score.statistic(n) for n in positive + negative])[:, None]
    y = np.concatenate([np.ones(len(n[names[0]])) for n in positive] + [np.zeros(len(n[names[0]])) for n in negative])
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(x, y)
    entry["slope"], entry["intercept"] = round(float(model.coef_[0, 0]), 6), round(float(model.intercept_[0]), 6)
    score = xrd_trust.OneClassScore.from_card(entry)
    known_p = np.concatenate([score.probability(n) for n in known])
    entry["threshold"] = round(float(np.quantile(known_p, 1.0 - false_alarm_rate)), 6)
    entry["false_alarm_rate"] = false_alarm_rate
    return entry


def component_rows(report: Any, truth: list[set[int]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Component features and whether each component is a true phase."""
    rows, labels = [], []
    for parts, true in zip(report.components, truth, strict=True):
        for p in parts:
            rows.append(xrd_trust.component_features(p))
            labels.append(p.family in true)
    return {k: np.array([r[k] for r in rows]) for k in COMPONENT_FEATURES}, np.array(labels)


def truth_sets(data: dict[str, np.ndarray]) -> list[set[int]]:
    if "components" in data:
        return [{int(c) for c in row if c >= 0} for row in data["components"]]
    if "y_a" in data:
        return [{int(a), int(b)} for a, b in zip(data["y_a"], data["y_b"], strict=True)]
    return [{int(y)} for y in data["y"]]


def fingerprint(paths: list[Path]) -> dict[str, str]:
    return {str(p.relative_to(REPO_ROOT)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--calibration", type=Path, default=RUNS / "calib_seed2")
    parser.add_argument("--clean", type=Path, default=RUNS / "data_seed0")
    parser.add_argument("--evaluation", type=Path, default=RUNS / "eval_seed1")
    parser.add_argument("--per-set", type=int, default=1500, help="patterns per calibration set")
    parser.add_argument("--skip-evaluate", action="store_true")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(SEED)
    graphs = Graphs(args.models_dir)
    labels = list(graphs.phase_version.card["labels"])
    reference = physics_reference(labels)
    families = tuple(family_from_json(entry) for entry in reference["families"])

    paths = {
        "known_val": args.clean / "val.npz",
        "known_lab": args.calibration / "known_lab.npz",
        "known_clean": args.calibration / "known_clean.npz",
        "mixtures2_lab": args.calibration / "mixtures2_lab.npz",
        "mixtures3_lab": args.calibration / "mixtures3_lab.npz",
        "impostors_lab": args.calibration / "impostors_lab.npz",
        "impostors_clean": args.calibration / "impostors_clean.npz",
    }
    sets = {name: load(path, args.per_set * (4 if name.startswith("impostors") else 1), rng)
            for name, path in paths.items()}  # fmt: skip
    for name in ("impostors_lab", "impostors_clean"):  # calibration impostor types only
        data = sets[name]
        keep = np.isin(np.asarray(data["impostor_names"])[data["y"]], CALIBRATION_IMPOSTORS)
        assert not np.isin(np.asarray(data["impostor_names"])[data["y"][keep]], HELD_OUT_IMPOSTORS).any()
        sets[name] = {k: (v[keep] if isinstance(v, np.ndarray) and v.ndim and len(v) == len(keep) else v)
                      for k, v in data.items()}  # fmt: skip
    ev = {name: evidence(graphs, families, data) for name, data in sets.items()}
    known = ("known_val", "known_lab", "known_clean")
    mixtures = ("mixtures2_lab", "mixtures3_lab")
    impostors = ("impostors_lab", "impostors_clean")

    def named(kind: str, names: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
        return [ev[n][kind] for n in names]

    score_phase = fit_one_class(named("phase", known), named("phase", impostors), named("phase", known + mixtures),
                                PHASE_FEATURES, PHASE_FALSE_ABSTAIN_RATE)  # fmt: skip
    score_phase["positive"] = "not a known phase nor a mixture of known phases"
    score_novelty = fit_one_class(named("novelty", known), named("novelty", impostors + mixtures),
                                  named("novelty", known), NOVELTY_FEATURES, FALSE_ALARM_RATE)  # fmt: skip
    score_novelty["positive"] = "not one known phase (unknown phases and mixtures)"
    rows, truth = [], []
    for name in known + mixtures:
        named, y = component_rows(ev[name]["phase_report"], truth_sets(sets[name]))
        rows.append(named)
        truth.append(y)
    confidence = fit_logistic(rows, truth, COMPONENT_FEATURES)

    calibration_data = {
        "command": "python -m training.xrd.calibrate",
        "sets": {name: len(data["x"]) for name, data in sets.items()},
        "fingerprint_sha256": fingerprint(list(paths.values())),
        "calibration_impostor_types": list(CALIBRATION_IMPOSTORS),
        "held_out_impostor_types": list(HELD_OUT_IMPOSTORS),
        "seed": SEED,
    }
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT).stdout.strip()
    for name, score in (("xrd_phase", score_phase), ("xrd_novelty", score_novelty)):
        base = args.models_dir / name / BASE_VERSION
        folder = args.models_dir / name / NEW_VERSION
        folder.mkdir(parents=True, exist_ok=True)
        for f in base.iterdir():
            if f.name != "card.json":
                shutil.copy2(f, folder / f.name)
        (folder / REFERENCE_FILE).write_text(json.dumps(reference, separators=(",", ":")) + "\n")
        card = json.loads((base / "card.json").read_text())
        card.pop("files", None)
        card.update({
            "version": NEW_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "code_commit": commit,
            "description": card["description"] + " 1.1.0 (issue 21): the same network with the physics fit of every "
                           "known family (matserve.models.xrd_fit) and a calibrated "
                           + ("abstain (probability_unknown) and up-to-3-phase decomposition."
                              if name == "xrd_phase" else "novelty_score (is_novel at 1 % false alarm)."),
            "physics": {"reference_file": REFERENCE_FILE, "score": score,
                        **({"component_confidence": confidence} if name == "xrd_phase" else {}),
                        "calibration_data": calibration_data},
        })  # fmt: skip
        write_card(folder, card)
        print(f"wrote {folder}")
    if not args.skip_evaluate:
        evaluate(args.models_dir, args.evaluation, args.clean)


if __name__ == "__main__":
    main()
