"""Random-forest baselines on the same splits as the network (seed 004, chapter 3).

* RF-Comp: a random forest on the 86 element fractions (the network's own input).
* RF-Phys: a random forest on Magpie physical attributes (matminer, offline element
  tables; 149 features). Featurisation is slow (~200 formulas/s), so features are
  cached under ``runs/`` keyed by the data fingerprint.

Run: ``python -m training.formation_enthalpy.baselines`` (writes ``runs/baselines.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from training.formation_enthalpy.data import HOLDOUT_SYSTEMS, CleanData, holdout_mask, load_clean, split_indices
from training.formation_enthalpy.evaluation import regression_metrics

RUNS = Path(__file__).resolve().parent / "runs"


def magpie_features(data: CleanData, cache_dir: Path = RUNS) -> np.ndarray:
    """Magpie-style physical attributes for every composition, cached on disk by data fingerprint."""
    cache = cache_dir / f"magpie_{data.fingerprint[:16]}.npy"
    if cache.exists():
        return np.load(cache)
    from matminer.featurizers.base import MultipleFeaturizer
    from matminer.featurizers.composition import ElementProperty, IonProperty, Stoichiometry, ValenceOrbital
    from pymatgen.core import Composition

    featurizer = MultipleFeaturizer(
        [ElementProperty.from_preset("magpie"), Stoichiometry(), ValenceOrbital(), IonProperty(fast=True)]
    )
    rows = [featurizer.featurize(Composition(str(f))) for f in data.formulas]
    features = np.nan_to_num(np.asarray(rows, dtype=np.float32))
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache, features)
    return features


def fit_forest(x: np.ndarray, y: np.ndarray, seed: int, n_estimators: int):
    """The baseline forest: sklearn defaults but a third of the features per split, as is usual for regression."""
    from sklearn.ensemble import RandomForestRegressor

    forest = RandomForestRegressor(n_estimators=n_estimators, max_features=0.33, n_jobs=-1, random_state=seed)
    return forest.fit(x, y)


def run(seed: int, n_estimators: int, max_rows: int | None = None) -> dict:
    """Fit RF-Comp and RF-Phys on the main split and on both chemical-system hold-outs."""
    data = load_clean(max_rows=max_rows)
    split = split_indices(len(data.targets), seed)
    inputs = {"rf_comp": data.features, "rf_phys": magpie_features(data)}
    results: dict = {"data_fingerprint": data.fingerprint, "seed": seed, "n_estimators": n_estimators}
    for name, x in inputs.items():
        started = time.perf_counter()
        forest = fit_forest(x[split["train"]], data.targets[split["train"]], seed, n_estimators)
        prediction = forest.predict(x[split["test"]])
        results[name] = {"test": regression_metrics(data.targets[split["test"]], prediction, len(split["train"]))}
        for system in HOLDOUT_SYSTEMS:
            held = holdout_mask(data.formulas, system)
            if not held.any():  # tiny pipeline runs may not contain the system
                continue
            train = np.setdiff1d(split["train"], np.flatnonzero(held))
            forest = fit_forest(x[train], data.targets[train], seed, n_estimators)
            results[name][f"holdout_{system}"] = regression_metrics(
                data.targets[held], forest.predict(x[held]), len(train)
            )
        results[name]["fit_seconds"] = time.perf_counter() - started
        print(name, json.dumps(results[name]["test"]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n-estimators", type=int, default=100)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RUNS / "baselines.json")
    args = parser.parse_args()
    results = run(args.seed, args.n_estimators, args.max_rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
