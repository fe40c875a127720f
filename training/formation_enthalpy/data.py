"""Load, clean and split the OQMD formation enthalpy data (seed 004, chapter 3).

Cleaning follows the seed: drop single-element entries (0 by definition) and
entries outside mean ± 5σ of the formation enthalpy; keep one row per reduced
composition (the lowest enthalpy, as OQMD's convex hull would). The split is a
seeded random split over unique compositions, so no composition is in two sets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from matserve.codecs.formation_enthalpy import encode, parse_formula

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT / "data" / "formation_enthalpy" / "oqmd.csv.gz"
TARGET = "formation_enthalpy_ev_per_atom"

#: The seed's chemical-system hold-out tests: every compound made only of elements of the
#: system and containing all of the named elements is withheld from training and tested on.
HOLDOUT_SYSTEMS: dict[str, dict[str, frozenset[str]]] = {
    # Any compound containing both Ti and O (seed: 561 entries in its OQMD).
    "Ti-O": {"must_contain": frozenset({"Ti", "O"}), "only_from": frozenset()},
    # Any compound made exclusively of Na, Fe, Mn and O (seed: 96 entries).
    "Na-Fe-Mn-O": {"must_contain": frozenset(), "only_from": frozenset({"Na", "Fe", "Mn", "O"})},
}


@dataclass(frozen=True)
class CleanData:
    """Cleaned data set.

    Attributes
    ----------
    formulas : numpy.ndarray of str
        Reduced formulas, one per unique composition.
    features : numpy.ndarray
        float32 (n, 86) atomic fractions from the shared codec.
    targets : numpy.ndarray
        float32 (n,) formation enthalpy in eV/atom.
    fingerprint : str
        sha256 of the cleaned table (formula, target) as CSV text.
    report : dict
        Row counts removed at each cleaning step and the outlier bounds.
    """

    formulas: np.ndarray
    features: np.ndarray
    targets: np.ndarray
    fingerprint: str
    report: dict


def load_clean(path: Path = DEFAULT_DATA, max_rows: int | None = None) -> CleanData:
    """Read the CSV and clean it as the seed describes.

    Parameters
    ----------
    path : Path
        CSV (optionally gzipped) with columns ``formula`` and ``formation_enthalpy_ev_per_atom``.
    max_rows : int, optional
        Keep only the first rows (pipeline tests).
    """
    raw = pd.read_csv(path, nrows=max_rows)
    if TARGET not in raw.columns:  # Materials Project file names the column formation_energy
        raw = raw.rename(columns={c: TARGET for c in raw.columns if c.startswith("formation_")})
    report: dict = {"rows_read": len(raw)}
    parsed = [parse_formula(f) for f in raw["formula"]]
    table = pd.DataFrame(
        {"formula": [p.normalized_formula for p in parsed], TARGET: raw[TARGET].astype(float).to_numpy()}
    )
    keep = np.array([not p.is_element for p in parsed])
    report["single_element_removed"] = int((~keep).sum())
    table, parsed = table[keep], [p for p, k in zip(parsed, keep, strict=True) if k]
    mean, std = float(table[TARGET].mean()), float(table[TARGET].std())
    low, high = mean - 5 * std, mean + 5 * std
    inside = table[TARGET].between(low, high).to_numpy()
    report.update(outlier_bounds_ev_per_atom=[low, high], outliers_removed=int((~inside).sum()))
    table, parsed = table[inside], [p for p, k in zip(parsed, inside, strict=True) if k]
    # One row per reduced composition: the lowest formation enthalpy.
    table = table.assign(_i=np.arange(len(table))).sort_values([TARGET, "formula"]).drop_duplicates("formula")
    table = table.sort_values("formula")
    report["duplicate_compositions_removed"] = len(parsed) - len(table)
    parsed = [parsed[i] for i in table["_i"]]
    table = table.drop(columns="_i").reset_index(drop=True)
    report["rows_clean"] = len(table)
    fingerprint = hashlib.sha256(table.to_csv(index=False, float_format="%.9g").encode()).hexdigest()
    return CleanData(
        formulas=table["formula"].to_numpy(),
        features=encode(parsed),
        targets=table[TARGET].to_numpy(np.float32),
        fingerprint=fingerprint,
        report=report,
    )


def split_indices(n: int, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    """Seeded random train/validation/test split over unique compositions."""
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(fractions[0] * n), int(fractions[1] * n)
    return {
        "train": np.sort(order[:n_train]),
        "validation": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }


def holdout_mask(formulas: np.ndarray, system: str) -> np.ndarray:
    """Boolean mask of compounds belonging to a hold-out chemical system (see :data:`HOLDOUT_SYSTEMS`)."""
    rule = HOLDOUT_SYSTEMS[system]
    mask = np.zeros(len(formulas), dtype=bool)
    for i, formula in enumerate(formulas):
        elements = set(parse_formula(str(formula)).fractions)
        contains = rule["must_contain"] <= elements
        within = not rule["only_from"] or elements <= rule["only_from"]
        mask[i] = contains and within
    return mask
