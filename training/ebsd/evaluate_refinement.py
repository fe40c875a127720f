"""Accuracy and speed of the served ``refine=true`` path on the held-out EBSD sets, next to what it replaced.

Run (after ``training.ebsd.simulate`` wrote the data; ~6 min on 2 cores)::

    python -m training.ebsd.evaluate_refinement --n 500

On the first ``n`` patterns of each held-out set (the ones ``training.ebsd.baselines`` uses) and on the 9 real Ni
patterns shipped with kikuchipy, with each pattern's true PC (as the baselines' refinement and Hough get it):

* ``cnn``: the network alone (the fast path of the served 1.0.0);
* ``dictionary_top1``: the fast path of the served 2.0.0: its graph (the compressed dictionary, 3 deg grid, 300
  components, nominal PC) and the correction of the best match to the pattern's PC;
* ``refined``: the served 2.0.0 refinement (:func:`matserve.models.ebsd_indexer.refine_orientations`: starts
  from the graph's 4 best matches, Levenberg-Marquardt on the NCC at the pattern's PC);
* ``refined_static_background``: the same after subtracting the set's mean pattern (``static_background=true``;
  the real Ni set uses its shipped static background, as the baselines do);
* ``refined_1_0_0_cnn_and_dictionary_starts``: the served 1.0.0 refinement (starts: the network's orientation and
  the 4 best matches of the same dictionary built at run time);
* ``kikuchipy_refine_from_cnn`` and ``refined_same_subset``: the refinement served before session 13 (kikuchipy's
  ``EBSD.refine_orientation``, Nelder-Mead, +-3 deg trust region, from the network's orientation) and the 2.0.0
  one, on the same first ``--kikuchipy-n`` patterns in the same run: the speed ratio.

Writes ``training/ebsd/refinement.json``. The classical baselines (Hough, DI, DI + refinement) on the same
patterns are in ``training/ebsd/baselines.json`` (another run: compare accuracy, not absolute speed).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import kikuchipy
import numpy as np

from matserve.codecs.ebsd import NOMINAL_PC, normalize_patterns
from matserve.models.ebsd_indexer import (
    REFINE_CANDIDATES,
    REFINE_DICTIONARY_COMPONENTS,
    REFINE_DICTIONARY_RESOLUTION_DEG,
    matcher,
    refine_orientations,
)
from training.ebsd import baselines
from training.ebsd.dictionary import DictionaryIndexer
from training.ebsd.evaluate import TEST_SETS, OnnxIndexer, disorientation_deg, summary

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULT = HERE / "refinement.json"


def rate(function: Any, count: int) -> tuple[Any, float]:
    """``function()`` and ``count`` per second of it."""
    started = time.perf_counter()
    value = function()
    return value, count / (time.perf_counter() - started)


def evaluate_set(name: str, data: dict[str, np.ndarray], network: OnnxIndexer, graph: DictionaryIndexer,
                 kikuchipy_n: int) -> dict[str, Any]:  # fmt: skip
    patterns = data["patterns"].astype(np.float32)
    truth, pc, n = data["quaternions"], data["pc"].astype(np.float64), len(data["patterns"])
    rows: dict[str, Any] = {}
    cnn, speed = rate(lambda: network.index(patterns, pc)["quaternion"], n)
    rows["cnn"] = summary(disorientation_deg(truth, cnn)) | {"patterns_per_s": speed}
    found, speed = rate(lambda: graph.index(patterns, pc), n)
    rows["dictionary_top1"] = summary(disorientation_deg(truth, found["quaternion"])) | {"patterns_per_s": speed}
    starts = found["candidates"]
    (refined, _), speed = rate(lambda: refine_orientations(patterns, pc, found["quaternion"], starts=starts), n)
    rows["refined"] = summary(disorientation_deg(truth, refined)) | {"patterns_per_s": speed}
    background = data["mean_pattern"].astype(np.float32)
    (refined_bg, _), speed = rate(
        lambda: refine_orientations(patterns - background, pc, found["quaternion"], starts=starts), n
    )
    rows["refined_static_background"] = summary(disorientation_deg(truth, refined_bg)) | {"patterns_per_s": speed}
    (refined_cnn, _), speed = rate(lambda: refine_orientations(patterns, pc, cnn), n)
    rows["refined_1_0_0_cnn_and_dictionary_starts"] = summary(disorientation_deg(truth, refined_cnn)) | {
        "patterns_per_s": speed
    }
    k = min(kikuchipy_n, n)
    signal = kikuchipy.signals.EBSD(normalize_patterns(patterns[:k]))
    old, seconds = baselines.refine(signal, cnn[:k], pc[:k])
    rows["kikuchipy_refine_from_cnn"] = summary(disorientation_deg(truth[:k], old)) | {"patterns_per_s": k / seconds}
    (same, _), speed = rate(lambda: refine_orientations(patterns[:k], pc[:k], cnn[:k], starts=starts[:k]), k)
    rows["refined_same_subset"] = summary(disorientation_deg(truth[:k], same)) | {"patterns_per_s": speed}
    rows["speedup_vs_kikuchipy_refine"] = rows["refined_same_subset"]["patterns_per_s"] / (k / seconds)
    print(name, json.dumps({key: _short(value) for key, value in rows.items()}), flush=True)
    return rows


def _short(row: Any) -> Any:
    if not isinstance(row, dict):
        return round(float(row), 2)
    return {key: round(float(row[key]), 3) for key in ("mean_disorientation_deg", "median_disorientation_deg",
                                                      "fraction_above_5_deg", "patterns_per_s")}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE / "runs" / "data_seed0")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "ebsd_indexer" / "1.0.0" / "model.onnx")
    parser.add_argument("--dictionary-model", type=Path, default=REPO / "models" / "ebsd_indexer" / "2.0.0")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--kikuchipy-n", type=int, default=60, help="patterns per set for the old refinement")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    network = OnnxIndexer(args.model)
    card = json.loads((args.dictionary_model / "card.json").read_text())
    graph = DictionaryIndexer(args.dictionary_model / "model.onnx", card["orientation_decoding"]["error_by_similarity"])
    started = time.perf_counter()
    matcher(NOMINAL_PC)
    build_seconds = time.perf_counter() - started
    sets = baselines.load_sets(args.data, args.n, simulate=False, seed=0)
    sets["real_ni_9"] = baselines.real_nickel_set()
    warm = sets[TEST_SETS[0]]
    refine_orientations(warm["patterns"][:4].astype(np.float32), warm["pc"][:4], warm["quaternions"][:4])  # compile
    graph.index(warm["patterns"][:4], warm["pc"][:4])
    baselines.refine(kikuchipy.signals.EBSD(normalize_patterns(warm["patterns"][:4])),
                     warm["quaternions"][:4], warm["pc"][:4])  # fmt: skip
    report = {
        "command": f"python -m training.ebsd.evaluate_refinement --n {args.n} --kikuchipy-n {args.kikuchipy_n}",
        "data": str(args.data.relative_to(REPO)) if args.data.is_relative_to(REPO) else str(args.data),
        "network": str(args.model.relative_to(REPO)) if args.model.is_relative_to(REPO) else str(args.model),
        "dictionary_model": str(args.dictionary_model.relative_to(REPO))
        if args.dictionary_model.is_relative_to(REPO)
        else str(args.dictionary_model),
        "dictionary": {
            "resolution_deg": REFINE_DICTIONARY_RESOLUTION_DEG,
            "components": REFINE_DICTIONARY_COMPONENTS,
            "pc": list(NOMINAL_PC),
            "candidates_refined": REFINE_CANDIDATES,
            "build_seconds": build_seconds,
        },
        "pc": "each pattern's true PC (the real Ni set: the scan's average PC)",
        "speed_note": "patterns/s on a shared 2-core CPU, numba warm; includes background removal and the dictionary "
        "search; kikuchipy's refinement and the new one run on the same patterns in the same run",
        "results": {name: evaluate_set(name, data, network, graph, args.kikuchipy_n) for name, data in sets.items()},
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
