"""Robustness of the committed XRD models beyond their training ranges (the issue's independent evaluation).

Each row draws fresh known-phase patterns (seeded) from the wide profile with one range pushed further, and
reports the classifier's accuracy per class and the fraction of known patterns the novelty scorer flags
(``is_novel``; 1 % on its own validation patterns). Run from the repository root::

    python -m training.xrd.robustness            # prints a table, writes training/xrd/robustness.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from matserve.models.xrd_novelty import calibration
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from training.xrd import simulate as sim
from training.xrd.structures import KNOWN_PHASES

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "robustness.json"


def stress_profiles() -> dict[str, sim.RangeProfile]:
    """The wide profile, and variants with one range pushed beyond it."""
    wide = sim.WIDE

    def phase(**ranges: tuple[float, float]) -> sim.RangeProfile:
        return dataclasses.replace(wide, phase={**wide.phase, **ranges})

    def measurement(**ranges: tuple[float, float]) -> sim.RangeProfile:
        return dataclasses.replace(wide, measurement={**wide.measurement, **ranges})

    return {
        "standard ranges": sim.STANDARD,
        "wide ranges (training)": wide,
        "lattice margin 0.25 (training: 0.15)": dataclasses.replace(wide, lattice_margin=0.25),
        "texture r 0.3-2.0": phase(texture_r=(0.3, 2.0)),
        "crystallites 1.5-5 nm": phase(crystallite_size_nm=(1.5, 5.0)),
        "strain ±2 %": phase(strain=(-0.02, 0.02)),
        "counts 20-200": measurement(max_counts=(20.0, 200.0)),
        "zero offset ±0.5°": measurement(zero_offset_deg=(-0.5, 0.5)),
        "background level 0.3-0.8": measurement(background_level=(0.3, 0.8)),
        "amorphous hump 0.4-1.0": measurement(hump_amplitude=(0.4, 1.0)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    registry, runtime = Registry(args.models_dir), OnnxRuntime()
    phase_model, novelty_model = registry.get("xrd_phase"), registry.get("xrd_novelty")
    cal = calibration(novelty_model)
    names = [p.name for p in KNOWN_PHASES]
    rows = {}
    for k, (label, profile) in enumerate(stress_profiles().items()):
        arrays = sim.single_phase_set(names, args.per_class, np.random.default_rng([args.seed, k]), "float16", profile)
        x, y = arrays["x"].astype(np.float32), arrays["y"]
        predicted = runtime.run(phase_model, {"pattern": x})["phase_probabilities"].argmax(axis=1)
        out = runtime.run(novelty_model, {"pattern": x})
        outlier = out["outlier_probability"].reshape(-1) if "outlier_probability" in out else None
        flagged = cal.score(out["reconstruction_error"].reshape(-1), outlier) > cal.threshold_score
        rows[label] = {
            "accuracy": float((predicted == y).mean()),
            "accuracy_per_class": {n: float((predicted[y == j] == j).mean()) for j, n in enumerate(names)},
            "known_flagged_as_novel": float(flagged.mean()),
        }
    report = {
        "models": {"xrd_phase": phase_model.version, "xrd_novelty": novelty_model.version},
        "per_class": args.per_class,
        "seed": args.seed,
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'patterns drawn from':<40} {'accuracy':>9} {'fcc':>7} {'bcc':>7} {'hcp':>7} {'flagged novel':>14}")
    for label, row in rows.items():
        per_class = " ".join(f"{v:7.4f}" for v in row["accuracy_per_class"].values())
        print(f"{label:<40} {row['accuracy']:9.4f} {per_class} {row['known_flagged_as_novel']:14.3f}")


if __name__ == "__main__":
    main()
