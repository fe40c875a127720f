"""Score, calibrate and report the scattering sorter on the real development images (issue 20).

The development set is ``../shared/data/scattering_real/`` (20 real detector files from 8 public repositories;
``manifest.tsv`` gives each label, its source repository and the setup the source states). Its licences do not
allow copying it into this repository: this script and the tests read it in place.

Every image is read by the served reader (:func:`matserve.codecs.detector_files.read_frames`) and sorted by the
served lifecycle (:class:`~matserve.models.scattering_sorter.ScatteringSorterModel`, ONNX Runtime) twice:

* ``as_files``: only what the file itself holds (the setup from its header, if any), as a user sends it;
* ``with_stated_setup``: with the manifest's setup values given as request options (where the source states them).

**Calibration of ``technique_confident`` on real images.** The card's thresholds (top technique probability, one
with the setup known, one without) were set on simulated validation images to be right 99.5 % of the time; real
images are not that easy. The real threshold is the smallest probability on a grid (0.50-0.99) at or above which
*every* calibration image is right (with at least :data:`MIN_KEPT` images kept; else 0.99; both runs pooled). The
served threshold for each case is the larger of the simulated and the real one, so confidence is never looser
than either says. Out-of-distribution images (``feature_distance`` above the card's threshold, set here at
:data:`DISTANCE_PERCENTILE` of the simulated validation distances) are never confident.

**Leave-one-repository-out (LORO).** Several images come from one repository, so the procedure is scored by
fitting the real threshold on the images of the other repositories and applying it to the held-out repository's
images, for each repository in turn; accuracy, coverage (share flagged confident) and the confident answers'
accuracy are pooled over the held-out predictions. The network itself never trained on these images.

Run from the repository root (needs ``../shared``)::

    python -m training.scattering.calibrate_real --version 1.4.0            # report only
    python -m training.scattering.calibrate_real --version 1.4.0 --write-card  # + thresholds and report in card
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matserve.codecs.detector_files import read_frames
from matserve.models.scattering_sorter import ScatteringSorterModel, setup_of
from matserve.registry import CARD_FILE, Registry, write_card
from matserve.runtimes.onnxruntime import OnnxRuntime

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_SET = REPO_ROOT.parent / "shared" / "data" / "scattering_real"
MIN_KEPT = 3
"""Fewest calibration images a real threshold may keep (else 0.99)."""
DISTANCE_PERCENTILE = "p99.5"
"""The simulated validation percentile of ``feature_distance`` above which an image is out of distribution."""
GRID = np.round(np.arange(0.50, 0.991, 0.01), 2)
RELIABILITY_BINS = (0.0, 0.6, 0.8, 0.9, 0.97, 1.0001)
RUNS = ("as_files", "with_stated_setup")


@dataclass
class Scored:
    """One image's answer in one run."""

    file: str
    repo: str
    label: str
    run: str
    technique: str | None
    probability: float
    setup_known: bool
    out_of_distribution: bool
    feature_distance: float | None
    setup_source: str | None
    error: str | None = None

    @property
    def right(self) -> bool:
        return self.technique == self.label


def read_manifest(root: Path = DEV_SET) -> list[dict[str, str]]:
    """The manifest's rows (``label``, ``repo``, ``local_file``, ``distance_m``, ...)."""
    with (root / "manifest.tsv").open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def stated_setup(row: dict[str, str]) -> dict[str, float]:
    """The setup values the manifest states for an image, as request options (wire names and units)."""
    values = {"distance_m": row.get("distance_m"), "wavelength_angstrom": row.get("wavelength_angstrom"),
              "pixel_size_um": row.get("pixel_size_um")}  # fmt: skip
    return {key: float(value) for key, value in values.items() if value not in (None, "")}


def score(model: ScatteringSorterModel, version: str | None, root: Path = DEV_SET) -> list[Scored]:
    """Sort every development image in both :data:`RUNS` with the served reader and lifecycle."""
    scored = []
    for row in read_manifest(root):
        path = root / row["local_file"]
        frames = read_frames(path.read_bytes(), path.name)[:1]
        for run in RUNS:
            setup = setup_of(stated_setup(row), "request") if run == "with_stated_setup" else None
            result = model.sort(frames, version=version, setup=setup).results[0]
            probabilities = result.get("technique_probabilities") or {}
            scored.append(Scored(
                file=path.name, repo=row["repo"], label=row["label"].lower(), run=run, technique=result["technique"],
                probability=max(probabilities.values(), default=0.0),
                setup_known=result.get("q_span_inv_angstrom") is not None,
                out_of_distribution=bool(result.get("out_of_distribution")),
                feature_distance=result.get("feature_distance"), setup_source=result.get("setup_source"),
                error=result.get("error"),
            ))  # fmt: skip
    return scored


def real_threshold(images: list[Scored]) -> float:
    """The smallest grid probability at or above which every (in-distribution) image is right, keeping at least
    :data:`MIN_KEPT`; 0.99 if none."""
    for threshold in GRID:
        kept = [s for s in images if s.probability >= threshold and not s.out_of_distribution]
        if len(kept) >= MIN_KEPT and all(s.right for s in kept):
            return float(threshold)
    return 0.99


def served_thresholds(simulated: dict[str, float], real: float) -> dict[str, float]:
    """Per setup case, the larger of the simulated and the real threshold."""
    return {case: round(max(float(value), real), 2) for case, value in simulated.items()}


def confident(s: Scored, thresholds: dict[str, float]) -> bool:
    threshold = thresholds["setup_known" if s.setup_known else "setup_unknown"]
    return s.technique is not None and s.probability >= threshold and not s.out_of_distribution


def summary(images: list[Scored], flags: list[bool]) -> dict[str, Any]:
    """Accuracy, coverage (share confident) and the confident answers' accuracy."""
    kept = [s for s, f in zip(images, flags, strict=True) if f]
    return {
        "images": len(images),
        "right": sum(s.right for s in images),
        "accuracy": round(sum(s.right for s in images) / max(len(images), 1), 4),
        "confident": len(kept),
        "confident_right": sum(s.right for s in kept),
        "coverage": round(len(kept) / max(len(images), 1), 4),
        "confident_accuracy": None if not kept else round(sum(s.right for s in kept) / len(kept), 4),
        "out_of_distribution": sum(s.out_of_distribution for s in images),
    }


def reliability(images: list[Scored]) -> list[dict[str, Any]]:
    """Accuracy against the top probability, in :data:`RELIABILITY_BINS`."""
    rows = []
    for low, high in itertools.pairwise(RELIABILITY_BINS):
        inside = [s for s in images if low <= s.probability < high]
        rows.append({"probability": f"{low:.2f}-{min(high, 1.0):.2f}", "images": len(inside),
                     "mean_probability": None if not inside else round(float(np.mean([s.probability for s in inside])), 3),
                     "accuracy": None if not inside else round(sum(s.right for s in inside) / len(inside), 3)})  # fmt: skip
    return rows


def leave_one_repository_out(scored: list[Scored], simulated: dict[str, float]) -> dict[str, Any]:
    """The calibration procedure scored per held-out repository (see the module docstring)."""
    repos = sorted({s.repo for s in scored})
    held_out: dict[str, list[tuple[Scored, bool]]] = defaultdict(list)
    per_repo = {}
    for repo in repos:
        thresholds = served_thresholds(simulated, real_threshold([s for s in scored if s.repo != repo]))
        for s in scored:
            if s.repo == repo:
                held_out[s.run].append((s, confident(s, thresholds)))
        per_repo[repo] = {"thresholds": thresholds, **{
            run: summary([s for s, _ in held_out[run] if s.repo == repo], [f for s, f in held_out[run] if s.repo == repo])
            for run in RUNS}}  # fmt: skip
    pooled = {run: summary([s for s, _ in held_out[run]], [f for _, f in held_out[run]]) for run in RUNS}
    by_label = {run: {label: summary([s for s, _ in held_out[run] if s.label == label],
                                     [f for s, f in held_out[run] if s.label == label])
                      for label in sorted({s.label for s in scored})} for run in RUNS}  # fmt: skip
    return {"pooled": pooled, "by_label": by_label, "per_repository": per_repo}


def report(model: ScatteringSorterModel, version: str, root: Path = DEV_SET) -> dict[str, Any]:
    """Score the development set, calibrate, and return the card's ``real_development_set`` section."""
    card = model.card(version)
    simulated = dict(card.get("technique_confidence_thresholds_simulated") or card["technique_confidence_thresholds"])
    scored = score(model, version, root)
    real = real_threshold(scored)
    thresholds = served_thresholds(simulated, real)
    return {
        "data": "../shared/data/scattering_real (20 real images, 8 repositories; not copied into the project)",
        "method": __doc__.split("\n\n")[2].replace("\n", " ") + " " + __doc__.split("\n\n")[3].replace("\n", " "),
        "thresholds": {"simulated": simulated, "real": real, "served": thresholds},
        "leave_one_repository_out": leave_one_repository_out(scored, simulated),
        "in_sample_with_served_thresholds": {
            run: summary(
                [s for s in scored if s.run == run], [confident(s, thresholds) for s in scored if s.run == run]
            )
            for run in RUNS
        },
        "reliability": {run: reliability([s for s in scored if s.run == run]) for run in RUNS},
        "images": [s.__dict__ | {"right": s.right} for s in scored],
        "command": f"python -m training.scattering.calibrate_real --version {version} --write-card",
    }


def set_distance_threshold(folder: Path) -> None:
    """Store the ``feature_distance`` threshold (:data:`DISTANCE_PERCENTILE` of the simulated validation
    distances) in the card of a version that has the output, before its images are scored."""
    card = json.loads((folder / CARD_FILE).read_text())
    if "feature_distance" not in card:
        return
    section = card["feature_distance"]
    section["threshold"] = section["simulated_val_percentiles"][DISTANCE_PERCENTILE]
    section["threshold_method"] = f"the {DISTANCE_PERCENTILE} percentile of the simulated validation images' distances"
    write_card(folder, card)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", required=True)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--data", type=Path, default=DEV_SET)
    parser.add_argument("--write-card", action="store_true", help="store thresholds and the report in the card")
    args = parser.parse_args(argv)

    folder = args.models_dir / "scattering_sorter" / args.version
    if args.write_card:
        set_distance_threshold(folder)
    model = ScatteringSorterModel(Registry(args.models_dir), OnnxRuntime(intra_op_threads=2))
    section = report(model, args.version, args.data)
    for s in section["images"]:
        if s["run"] == "as_files":
            print(f"{'ok ' if s['right'] else 'BAD'} {s['label']:6s} -> {s['technique']!s:6s} p={s['probability']:.2f} "
                  f"d={s['feature_distance']} ood={s['out_of_distribution']} setup={s['setup_source']} {s['file'][:48]}")  # fmt: skip
    print(json.dumps({k: section[k] for k in ("thresholds", "in_sample_with_served_thresholds")}, indent=1))
    print(json.dumps(section["leave_one_repository_out"]["pooled"], indent=1))
    if args.write_card:
        card = json.loads((folder / CARD_FILE).read_text())
        card.setdefault("technique_confidence_thresholds_simulated", card["technique_confidence_thresholds"])
        card["technique_confidence_thresholds"] = section["thresholds"]["served"]
        card["technique_confidence_method"] = (
            "technique_confident is true when the image is not out of distribution and its top technique probability "
            "reaches the larger of two thresholds: the simulated one (technique_confidence_thresholds_simulated: "
            "right >= 99.5 % on simulated validation images) and the real one (real_development_set.thresholds.real: "
            "every real development image at or above it right); see real_development_set"
        )  # fmt: skip
        card["real_development_set"] = section
        write_card(folder, card)
        print(f"wrote {folder / CARD_FILE}")


if __name__ == "__main__":
    main()
