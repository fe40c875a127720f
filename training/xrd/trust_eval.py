"""Issue 21's evaluation: the *served* XRD models on sets never used for fitting or calibration.

Sets: ``runs/eval_seed1`` (lab-realism and clean known phases, every impostor type, binary mixtures with minor
phases at 5-50 %, ternary mixtures; ``python -m training.xrd.realism --out training/xrd/runs/eval_seed1 --per-class
500 --seed 1``) and the seed-0 ``test``/``novel``/``mixtures`` sets of the original simulator. Partial-range
patterns are sent as only their measured points, as a lab would send them. Every number is computed for the new
version and for 1.0.0 on the same patterns, and written into the new cards (``trust_metrics``)::

    python -m training.xrd.trust_eval           # ~3 min; prints the tables
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from matserve.codecs.xrd import MODEL_GRID_DEG
from matserve.models.xrd_novelty import XrdNoveltyModel
from matserve.models.xrd_phase import XrdPhaseModel
from matserve.registry import Registry, write_card
from matserve.runtimes.onnxruntime import OnnxRuntime

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNS = Path(__file__).resolve().parent / "runs"
NEW, BASE = "1.1.0", "1.0.0"
CHUNK = 256


def auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of scores, positives above negatives (ties count half)."""
    scores = np.concatenate([negative, positive])
    ranks = rankdata(scores)
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def items_of(x: np.ndarray, measured: np.ndarray) -> list[dict[str, Any]]:
    """Patterns as a client sends them: a partial scan is only its measured points."""
    items = []
    for row, (low, high) in zip(x.astype(np.float64), measured, strict=True):
        if low <= 20.0 + 1e-6 and high >= 90.0 - 1e-6:
            items.append({"two_theta_deg": MODEL_GRID_DEG, "intensity": row})
        else:
            inside = (MODEL_GRID_DEG >= low) & (MODEL_GRID_DEG <= high)
            items.append({"two_theta_deg": MODEL_GRID_DEG[inside], "intensity": row[inside]})
    return items


def load(path: Path, limit: int | None = None, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """A simulated set without its generation parameters: ``x`` float32, ``measured_range_deg`` (all of 20-90° where
    the file has none), a seeded subsample of ``limit`` patterns (default rng: seed 1), and a binary-mixture set of
    the original simulator (``y_a``, ``y_b``, ``fraction_a``) given the ``components``/``fractions`` of realism's."""
    with np.load(path) as data:
        out = {k: data[k] for k in data.files if not k.startswith("param_")}
    n = len(out["x"])
    if "measured_range_deg" not in out:
        out["measured_range_deg"] = np.tile(np.array([20.0, 90.0]), (n, 1))
    if "y_a" in out and "components" not in out:
        out["components"] = np.stack([out["y_a"], out["y_b"], np.full(n, -1)], axis=1)
        out["fractions"] = np.stack([out["fraction_a"], 1.0 - out["fraction_a"], np.zeros(n)], axis=1)
    if limit is not None and n > limit:
        rng = np.random.default_rng(1) if rng is None else rng
        keep = np.sort(rng.choice(n, limit, replace=False))
        out = {k: (v[keep] if isinstance(v, np.ndarray) and v.ndim and len(v) == n else v) for k, v in out.items()}
    out["x"] = out["x"].astype(np.float32)
    out["measured_range_deg"] = out["measured_range_deg"].astype(np.float32)
    return out


class Served:
    """Both XRD models of the registry, called as the service calls them."""

    def __init__(self, models_dir: Path) -> None:
        registry = Registry(models_dir)
        runtime = OnnxRuntime()
        self.phase = XrdPhaseModel(registry, runtime)
        self.novelty = XrdNoveltyModel(registry, runtime)

    def answer(self, data: dict[str, np.ndarray], version: str) -> tuple[list[dict], list[dict]]:
        items = items_of(data["x"], data["measured_range_deg"])
        phase, novelty = [], []
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            phase += self.phase(chunk, version).results
            novelty += self.novelty(chunk, version).results
        return phase, novelty


def novelty_value(result: dict[str, Any]) -> float:
    """The version's novelty score: ``novelty_score`` (1.1.0) or the validation percentile (1.0.0)."""
    score = result.get("novelty_score")
    return float(score) if score is not None else float(result["novelty_percentile"]) / 100.0


def unknown_value(result: dict[str, Any]) -> float:
    """P(unknown) of a phase answer; 1.0.0 has none, so 1 - its top probability."""
    p = result.get("probability_unknown")
    return float(p) if p is not None else 1.0 - float(result["probability"])


def mixture_stats(phase: list[dict], data: dict[str, np.ndarray], labels: list[str]) -> dict[str, Any]:
    """Both (all) phases named, signal-fraction MAE; for minor phases >= 20 % and for all."""
    components, fractions = data["components"], data["fractions"]
    named_all, named_major, errors = [], [], []
    for result, comp, frac in zip(phase, components, fractions, strict=True):
        truth = {labels[int(c)]: float(f) for c, f in zip(comp, frac, strict=True) if c >= 0}
        found = {p["phase"]: p["weight_fraction"] for p in result.get("phases") or []}
        if not found and result.get("phase"):
            found = {result["phase"]: 1.0}
        ok = all(t in found for t in truth)
        named_all.append(ok)
        if min(truth.values()) >= 0.2:
            named_major.append(ok)
            if ok:
                errors += [abs(found[t] - f) for t, f in truth.items()]
    return {
        "n": len(phase),
        "all_named_minor_ge_20pct": round(float(np.mean(named_major)), 4) if named_major else None,
        "n_minor_ge_20pct": len(named_major),
        "fraction_mae_minor_ge_20pct": round(float(np.mean(errors)), 4) if errors else None,
        "all_named_any_minor": round(float(np.mean(named_all)), 4),
        "abstained": round(float(np.mean([bool(r.get("abstained")) for r in phase])), 4),
    }


def evaluate(models_dir: Path, evaluation: Path = RUNS / "eval_seed1", clean: Path = RUNS / "data_seed0") -> dict:
    """Compute, print and write into the new cards every number of the issue's targets."""
    served = Served(models_dir)
    labels = list(served.phase.card(NEW)["labels"])
    sets = {
        "known_lab": load(evaluation / "known_lab.npz"),
        "known_clean": load(evaluation / "known_clean.npz"),
        "known_seed0_test": load(clean / "test.npz", 1500),
        "impostors_lab": load(evaluation / "impostors_lab.npz"),
        "impostors_clean": load(evaluation / "impostors_clean.npz"),
        "novel_seed0": load(clean / "novel.npz", 1600),
        "mixtures2_lab": load(evaluation / "mixtures2_lab.npz"),
        "mixtures3_lab": load(evaluation / "mixtures3_lab.npz"),
        "mixtures_seed0": load(clean / "mixtures.npz", 1500),
    }
    answers = {v: {name: served.answer(data, v) for name, data in sets.items()} for v in (NEW, BASE)}
    metrics: dict[str, Any] = {"sets": {name: len(d["x"]) for name, d in sets.items()}}
    pairs = {"impostors_lab": "known_lab", "impostors_clean": "known_clean", "novel_seed0": "known_seed0_test"}
    for version in (NEW, BASE):
        out: dict[str, Any] = {}
        a = answers[version]
        for name in ("known_lab", "known_clean", "known_seed0_test"):
            phase, novelty = a[name]
            y = sets[name]["y"]
            out[name] = {
                "accuracy": round(float(np.mean([r["phase"] == labels[int(t)] for r, t in zip(phase, y, strict=True)])), 4),
                "abstained": round(float(np.mean([bool(r.get("abstained")) for r in phase])), 4),
                "flagged_novel": round(float(np.mean([r["is_novel"] for r in novelty])), 4),
                "more_than_one_phase_listed": round(float(np.mean([len(r.get("phases") or []) > 1 for r in phase])), 4),
            }  # fmt: skip
        for name, reference in pairs.items():
            data = sets[name]
            names = [str(n) for n in (data.get("impostor_names") if "impostor_names" in data else data["class_names"])]
            held = data.get("held_out")
            phase, novelty = a[name]
            known_phase, known_novelty = a[reference]
            known_u = np.array([unknown_value(r) for r in known_phase])
            known_n = np.array([novelty_value(r) for r in known_novelty])
            per_type = {}
            for j, type_name in enumerate(names):
                sel = np.nonzero(data["y"] == j)[0]
                if not len(sel):
                    continue
                u = np.array([unknown_value(phase[i]) for i in sel])
                s = np.array([novelty_value(novelty[i]) for i in sel])
                per_type[type_name] = {
                    "held_out": None if held is None else bool(held[j]),
                    "novelty_auroc": round(auroc(known_n, s), 4),
                    "flagged_novel": round(float(np.mean([novelty[i]["is_novel"] for i in sel])), 4),
                    "phase_unknown_auroc": round(auroc(known_u, u), 4),
                    "abstained": round(float(np.mean([bool(phase[i].get("abstained")) for i in sel])), 4),
                    "confident_p_ge_0_9": round(
                        float(np.mean([(phase[i].get("probability") or 0) >= 0.9 for i in sel])), 4
                    ),
                }
            all_s = np.array([novelty_value(r) for r in novelty])
            out[name] = {"per_type": per_type, "novelty_auroc_all": round(auroc(known_n, all_s), 4),
                         "abstained_all": round(float(np.mean([bool(r.get("abstained")) for r in phase])), 4)}  # fmt: skip
            if held is not None:
                held_sel = np.isin(data["y"], np.nonzero(held)[0])
                out[name]["novelty_auroc_held_out_types"] = round(auroc(known_n, all_s[held_sel]), 4)
        for name in ("mixtures2_lab", "mixtures3_lab", "mixtures_seed0"):
            phase, novelty = a[name]
            known_n = np.array([novelty_value(r) for r in a["known_lab"][1]])
            out[name] = {**mixture_stats(phase, sets[name], labels),
                         "novelty_auroc_vs_known_lab": round(auroc(known_n, np.array([novelty_value(r) for r in novelty])), 4)}  # fmt: skip
        metrics[version] = out
    print(json.dumps(metrics, indent=1))
    for name in ("xrd_phase", "xrd_novelty"):
        folder = models_dir / name / NEW
        card = json.loads((folder / "card.json").read_text())
        card.pop("files", None)
        card["trust_metrics"] = {"command": "python -m training.xrd.trust_eval", **metrics}
        write_card(folder, card)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--evaluation", type=Path, default=RUNS / "eval_seed1")
    parser.add_argument("--clean", type=Path, default=RUNS / "data_seed0")
    args = parser.parse_args(argv)
    evaluate(args.models_dir, args.evaluation, args.clean)


if __name__ == "__main__":
    main()
