"""Classical EBSD indexers on the CNN's held-out simulated sets (issue 5): DI, DI + refinement, Hough, CNN.

For the first ``--n`` patterns of each test set (``test_clean``, ``test_noisy``, ``test_pc_shifted``,
``test_low_dose``, written by :mod:`training.ebsd.simulate`) and for the 9 real Ni patterns shipped with
kikuchipy, this runs and summarises (mean / median disorientation, m-3m, orix; patterns/s):

* ``di_2deg`` / ``di_1.4deg``: kikuchipy dictionary indexing (``EBSD.dictionary_indexing``, NCC, ``keep_n=1``)
  against dictionaries simulated from the Ni master pattern shipped in the kikuchipy wheel (20 kV) on a
  cubochoric grid of the 432 fundamental zone (``orix.sampling.get_sample_fundamental``; ``Oh`` gives the
  identical grid because orix reduces to the proper subgroup). A dictionary has one PC: the nominal PC.
  Dictionaries are stored as uint8 (kikuchipy rescales each pattern; NCC is invariant to that) and matched
  in float32 chunks, so the ~300k-pattern 1.4 deg dictionary needs ~1.1 GB instead of ~4.4 GB.
* ``di_2deg_refined``: the 2 deg DI result refined with ``EBSD.refine_orientation`` (SciPy Nelder-Mead, NCC,
  each pattern's true PC, trust region +-``REFINE_TRUST_REGION_DEG`` per Euler angle).
* ``hough``: PyEBSDIndex Hough/Radon indexing through ``EBSD.hough_indexing`` with each pattern's true PC
  (kikuchipy passes an ``(n, 3)`` PC array through ``EBSDDetector.get_indexer``), numba on the CPU.
* ``cnn``: the served ONNX graph (:class:`training.ebsd.evaluate.OnnxIndexer`) with the true PCs, when the
  model card has metrics (i.e. is not the untrained placeholder).

Preprocessing for the classical methods (standard kikuchipy practice, identical for every simulated set):
patterns as float32, ``remove_static_background`` with the set's mean pattern (over the whole set), then
``remove_dynamic_background`` (defaults: frequency-domain Gaussian, sigma = width / 8). The real Ni patterns
use their shipped static background instead. The CNN gets the raw uint8 patterns (its own normalisation).

Speeds are indexing time only, on a 2-core machine that may be shared; dictionary simulation and
preprocessing times are reported separately. DI + refinement speed counts both steps.

Run: ``python -m training.ebsd.baselines [--data DIR] [--n 500] [--card models/ebsd_indexer/1.0.0]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from matserve.codecs.ebsd import NOMINAL_PC, PATTERN_SIDE_PX, SAMPLE_TILT_DEG
from training.ebsd.evaluate import TEST_SETS, OnnxIndexer, disorientation_deg, evaluate_cnn, real_nickel, summary
from training.ebsd.simulate import ENERGY_KV, RECIPES, SPLITS, load_split, master_pattern, simulate_split

DEFAULT_DATA = Path("training/ebsd/runs/data_seed0")
DEFAULT_OUT = Path("training/ebsd/baselines.json")
DICTIONARY_RESOLUTIONS_DEG = (2.0, 1.4)
REFINE_TRUST_REGION_DEG = 3.0
DI_PATTERNS_PER_ITERATION = 20_000
HOUGH_REFLECTORS = [[1, 1, 1], [2, 0, 0], [2, 2, 0], [3, 1, 1]]
HOUGH_KWARGS = {"nBands": 10, "tSigma": 2.0, "rSigma": 2.0}
REAL = "real_ni_9"

PC_CAVEATS = {
    "test_clean": "true PC = nominal PC for every pattern: the single-PC dictionary is exact; no degradation "
    "(same simulator as the dictionary and refinement: an 'inverse crime').",
    "test_noisy": "true PCs jittered up to +-0.02 per coordinate: DI uses the nominal PC (mismatch); "
    "refinement, Hough and the CNN get each pattern's true PC (an oracle a real scan lacks).",
    "test_pc_shifted": "true PCs offset 0.02-0.05 per coordinate: DI uses the nominal PC (large mismatch); "
    "refinement, Hough and the CNN get each pattern's true PC (an oracle a real scan lacks).",
    "test_low_dose": "true PC = nominal PC (the dictionary is exact); 1-5 counts per pixel.",
    REAL: "real patterns; PC = the scan's average PC (0.4251, 0.2134, 0.5007), which the nominal-PC "
    "dictionary matches to < 0.0005; reference = the orientations shipped in kikuchipy's xmap (themselves "
    "from DI + refinement by the kikuchipy authors, so DI+refine agreeing is expected).",
}


def log(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:7.1f} s] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet():
    """Silence kikuchipy's info prints and warnings."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def phase_list():
    from orix.crystal_map import PhaseList

    return PhaseList(master_pattern().phase)


def detector(pc: np.ndarray):
    import kikuchipy as kp

    return kp.detectors.EBSDDetector(
        shape=(PATTERN_SIDE_PX, PATTERN_SIDE_PX), pc=np.asarray(pc, dtype=np.float64), sample_tilt=SAMPLE_TILT_DEG
    )


def first_rotations(xmap: Any) -> np.ndarray:
    """``(n, 4)`` best-match quaternions of a crystal map (``keep_n`` columns -> the first)."""
    data = np.asarray(xmap.rotations.data, dtype=np.float64)
    return data.reshape(xmap.size, -1, 4)[:, 0]


# ---------------------------------------------------------------- data


def load_sets(data: Path, n: int, simulate: bool, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """The first ``n`` patterns of every test set, plus ``mean_pattern`` over the whole set.

    ``simulate`` generates ``n`` patterns per set here instead (development without the written datasets).
    """
    sets = {}
    children = np.random.SeedSequence(seed).spawn(len(TEST_SETS))
    for name, child in zip(TEST_SETS, children, strict=True):
        full = (
            simulate_split(n, RECIPES[SPLITS[name]], np.random.default_rng(child))
            if simulate
            else load_split(data, name)
        )
        subset = {key: value[:n] for key, value in full.items()}
        subset["mean_pattern"] = full["patterns"].astype(np.float64).mean(axis=0).astype(np.float32)
        sets[name] = subset
    return sets


def preprocess(patterns: np.ndarray, static_background: np.ndarray):
    """float32 EBSD signal: static background subtracted, then kikuchipy's dynamic background removal."""
    import kikuchipy as kp

    signal = kp.signals.EBSD(np.asarray(patterns, dtype=np.float32))
    with quiet():
        signal.remove_static_background(
            static_bg=np.asarray(static_background, dtype=np.float32), show_progressbar=False
        )
        signal.remove_dynamic_background(show_progressbar=False)
    return signal


def real_nickel_set() -> dict[str, Any]:
    """The 9 real Ni patterns, preprocessed with their shipped static background, and the shipped orientations."""
    import kikuchipy as kp

    with quiet():
        signal = kp.data.nickel_ebsd_small()
    patterns = np.asarray(signal.data).reshape(-1, PATTERN_SIDE_PX, PATTERN_SIDE_PX)
    pc = np.tile(np.asarray(signal.detector.pc_average, dtype=np.float32), (len(patterns), 1))
    return {
        "patterns": patterns,
        "quaternions": np.asarray(signal.xmap.rotations.data, dtype=np.float64).reshape(-1, 4),
        "pc": pc,
        "mean_pattern": np.asarray(signal.static_background, dtype=np.float32),
    }


# ---------------------------------------------------------------- methods


def simulate_dictionary(resolution_deg: float):
    """uint8 dictionary EBSD signal (with its ``xmap``) on the 432 fundamental zone at the nominal PC."""
    from orix.quaternion import symmetry
    from orix.sampling import get_sample_fundamental

    rotations = get_sample_fundamental(resolution=resolution_deg, point_group=symmetry.O)
    with quiet():
        return master_pattern().get_patterns(
            rotations, detector(np.asarray(NOMINAL_PC)), energy=ENERGY_KV, dtype_out=np.uint8, compute=True,
            show_progressbar=False,
        )  # fmt: skip


def dictionary_index(signal: Any, dictionary: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    with quiet():
        xmap = signal.dictionary_indexing(dictionary, metric="ncc", keep_n=1, n_per_iteration=DI_PATTERNS_PER_ITERATION)
    return xmap, time.perf_counter() - started


def refine(signal: Any, start_quaternions: np.ndarray, pc: np.ndarray) -> tuple[np.ndarray, float]:
    """Refine ``(n, 4)`` start orientations (a fresh one-column crystal map: a ``keep_n=1`` DI map has shape
    ``(n, 1)``, which ``refine_orientation`` rejects)."""
    from orix.crystal_map import CrystalMap
    from orix.quaternion import Rotation

    xmap = CrystalMap(rotations=Rotation(np.asarray(start_quaternions, dtype=np.float64)), phase_list=phase_list())
    started = time.perf_counter()
    with quiet():
        refined = signal.refine_orientation(
            xmap=xmap, detector=detector(pc), master_pattern=master_pattern(), energy=ENERGY_KV, method="minimize",
            method_kwargs={"method": "Nelder-Mead"}, trust_region=[REFINE_TRUST_REGION_DEG] * 3,
        )  # fmt: skip
    return first_rotations(refined), time.perf_counter() - started


def hough(signal: Any, pc: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Hough-index with per-pattern PCs; returns quaternions, seconds and the number not indexed."""
    phases = phase_list()
    with quiet():
        indexer = detector(pc).get_indexer(phases, reflectors=HOUGH_REFLECTORS, **HOUGH_KWARGS)
        started = time.perf_counter()
        xmap = signal.hough_indexing(phases, indexer, verbose=0)
        seconds = time.perf_counter() - started
    return first_rotations(xmap), seconds, int(np.sum(np.asarray(xmap.phase_id) < 0))


def result(truth: np.ndarray, predicted: np.ndarray, seconds: float, **extra: Any) -> dict[str, Any]:
    angles = disorientation_deg(truth, predicted)
    out = summary(angles, seconds)
    if len(angles) <= 20:
        out["angles_deg"] = [round(float(a), 3) for a in angles]
    return {**out, **extra}


def warm_up(signal: Any, pc: np.ndarray) -> None:
    """Compile numba (projection, Hough) outside the timed calls."""
    from orix.quaternion import Rotation

    count = 8
    with quiet():
        master_pattern().get_patterns(Rotation.random(count), detector(np.asarray(NOMINAL_PC)), energy=ENERGY_KV,
                                      compute=True, show_progressbar=False)  # fmt: skip
    hough(signal.inav[:count], pc[:count])
    refine(signal.inav[:count], Rotation.identity(count).data, pc[:count])


# ---------------------------------------------------------------- main


def card_is_trained(card_folder: Path | None) -> bool:
    if card_folder is None:
        return False
    card = json.loads((card_folder / "card.json").read_text())
    return bool(card.get("metrics"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    sets = load_sets(args.data, args.n, args.simulate, args.seed)
    sets[REAL] = real_nickel_set()
    counts = ", ".join(f"{name}: {len(data['patterns'])}" for name, data in sets.items())
    log(f"loaded {counts}", started)

    preprocess_seconds, signals = {}, {}
    for name, data in sets.items():
        t = time.perf_counter()
        signals[name] = preprocess(data["patterns"], data["mean_pattern"])
        preprocess_seconds[name] = time.perf_counter() - t
    log("preprocessed (static + dynamic background)", started)

    warm_up(signals[TEST_SETS[0]], sets[TEST_SETS[0]]["pc"])
    log("warmed up numba (projection, Hough, refinement)", started)

    results: dict[str, dict[str, Any]] = {name: {} for name in sets}

    for name, data in sets.items():
        quaternions, seconds, unindexed = hough(signals[name], data["pc"])
        results[name]["hough"] = result(
            data["quaternions"], quaternions, seconds, n_not_indexed=unindexed,
            notes="PyEBSDIndex via EBSD.hough_indexing, per-pattern PCs, reflectors {111,200,220,311}, "
            f"{HOUGH_KWARGS}; numba CPU, warmed up",
        )  # fmt: skip
        log(f"hough {name}: {_short(results[name]['hough'])}", started)

    trained = card_is_trained(args.card)
    cnn_note = None
    if trained:
        indexer = OnnxIndexer(args.card / "model.onnx")
        indexer.index(sets[TEST_SETS[0]]["patterns"][:64], sets[TEST_SETS[0]]["pc"][:64])  # warm-up
        for name in TEST_SETS:
            results[name]["cnn"] = {
                **evaluate_cnn(indexer, sets[name]),
                "notes": "ONNX Runtime CPU, true PCs, raw uint8 in",
            }
            log(f"cnn {name}: {_short(results[name]['cnn'])}", started)
        t = time.perf_counter()
        real = real_nickel(indexer)
        real["patterns_per_s"] = real["n"] / (time.perf_counter() - t)
        results[REAL]["cnn"] = {
            **real,
            "notes": "ONNX Runtime CPU, PC = scan average (speed includes loading the data)",
        }
    else:
        cnn_note = "CNN not run: no --card given or its card has no metrics (untrained placeholder)"
        log(cnn_note, started)

    dictionaries: dict[str, Any] = {}
    for resolution in args.resolutions:
        t = time.perf_counter()
        dictionary = simulate_dictionary(resolution)
        simulate_seconds = time.perf_counter() - t
        key = f"di_{resolution:g}deg"
        dictionaries[key] = {
            "resolution_deg": resolution,
            "n_patterns": int(dictionary.axes_manager.navigation_size),
            "dtype": str(dictionary.data.dtype),
            "bytes": int(dictionary.data.nbytes),
            "simulation_seconds": simulate_seconds,
            "peak_rss_gb_after_simulation": peak_rss_gb(),
        }
        log(f"{key}: simulated {dictionaries[key]['n_patterns']} patterns in {simulate_seconds:.0f} s", started)
        for name, data in sets.items():
            xmap, seconds = dictionary_index(signals[name], dictionary)
            results[name][key] = result(
                data["quaternions"], first_rotations(xmap), seconds,
                notes=f"EBSD.dictionary_indexing ncc keep_n=1, {dictionaries[key]['n_patterns']} uint8 patterns at the "
                "nominal PC (a dictionary has one PC); dictionary simulation time excluded",
            )  # fmt: skip
            log(f"{key} {name}: {_short(results[name][key])}", started)
            if resolution == args.resolutions[0]:
                quaternions, refine_seconds = refine(signals[name], first_rotations(xmap), data["pc"])
                results[name][f"{key}_refined"] = result(
                    data["quaternions"], quaternions, seconds + refine_seconds, refine_only_patterns_per_s=len(quaternions) / refine_seconds,
                    notes=f"DI {resolution:g} deg + EBSD.refine_orientation (SciPy Nelder-Mead, NCC, per-pattern true PC, "
                    f"trust region +-{REFINE_TRUST_REGION_DEG:g} deg per Euler angle); patterns/s counts DI + refinement",
                )  # fmt: skip
                log(f"{key}_refined {name}: {_short(results[name][f'{key}_refined'])}", started)
        dictionaries[key]["peak_rss_gb_after_indexing"] = peak_rss_gb()
        del dictionary

    total = time.perf_counter() - started
    report = {
        "command": "python -m training.ebsd.baselines " + shlex.join(sys.argv[1:] if args.argv is None else args.argv),
        "n": args.n,
        "data": "self-simulated (--simulate)" if args.simulate else str(args.data),
        "preprocessing": "classical methods: float32, remove_static_background(static_bg = the set's mean pattern over "
        "the whole set; the real Ni patterns use their shipped static background), then remove_dynamic_background "
        "(kikuchipy defaults); identical for every simulated set. The CNN gets raw uint8 patterns.",
        "preprocessing_seconds": preprocess_seconds,
        "speed_note": "patterns/s = indexing time only (after numba warm-up) on a shared 2-core CPU machine; dictionary "
        "simulation and preprocessing are excluded and reported separately. The real-Ni speeds (9 patterns) are "
        "dominated by per-call overhead.",
        "dictionaries": dictionaries,
        "pc_caveats": {name: PC_CAVEATS[name] for name in sets},
        "cnn": cnn_note or f"{args.card}",
        "results": results,
        "peak_rss_gb": peak_rss_gb(),
        "total_seconds": total,
        "versions": _versions(),
    }
    return report


def _short(r: dict[str, Any]) -> str:
    return f"{r['mean_disorientation_deg']:.3f} / {r['median_disorientation_deg']:.3f} deg, {r['patterns_per_s']:.1f} patterns/s"


def _versions() -> dict[str, str]:
    import kikuchipy
    import orix
    import pyebsdindex

    return {"kikuchipy": kikuchipy.__version__, "orix": orix.__version__, "pyebsdindex": pyebsdindex.__version__}


def table(report: dict[str, Any]) -> str:
    methods = sorted({m for r in report["results"].values() for m in r})
    lines = ["| set | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for name, per_method in report["results"].items():
        cells = []
        for method in methods:
            r = per_method.get(method)
            cells.append(
                "-"
                if r is None
                else f"{r['mean_disorientation_deg']:.2f} / {r['median_disorientation_deg']:.2f}° @ {r.get('patterns_per_s', float('nan')):.0f}/s"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cnn_only(args: argparse.Namespace) -> dict[str, Any]:
    """The CNN rows alone, on the same first ``--n`` patterns, merged into the classical report in ``--out``
    (the classical methods take ~13 min and do not depend on the model)."""
    if not card_is_trained(args.card):
        raise SystemExit("--cnn-only needs --card with a trained model")
    report = json.loads(args.out.read_text())
    if report["n"] != args.n:
        raise SystemExit(f"{args.out} was computed on n={report['n']}, not {args.n}")
    sets = load_sets(args.data, args.n, args.simulate, args.seed)
    indexer = OnnxIndexer(args.card / "model.onnx")
    indexer.index(sets[TEST_SETS[0]]["patterns"][:64], sets[TEST_SETS[0]]["pc"][:64])  # warm-up
    for name in TEST_SETS:
        report["results"][name]["cnn"] = {
            **evaluate_cnn(indexer, sets[name]),
            "notes": "ONNX Runtime CPU, true PCs, raw uint8 in",
        }
    report["results"][REAL]["cnn"] = {**real_nickel(indexer), "notes": "ONNX Runtime CPU, PC = scan average"}
    report["cnn"] = str(args.card)
    report["cnn_command"] = "python -m training.ebsd.baselines " + shlex.join(
        sys.argv[1:] if args.argv is None else args.argv
    )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--card", type=Path, default=None, help="model version folder; merge results under 'baselines'")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--simulate", action="store_true", help="simulate --n patterns per set instead of loading --data"
    )
    parser.add_argument("--seed", type=int, default=1234, help="seed for --simulate")
    parser.add_argument("--resolutions", type=float, nargs="+", default=list(DICTIONARY_RESOLUTIONS_DEG),
                        help="dictionary grid spacings (deg); the first one is refined")  # fmt: skip
    parser.add_argument("--cnn-only", action="store_true",
                        help="run only the CNN on the same patterns and merge it into the existing --out report")  # fmt: skip
    args = parser.parse_args(argv)
    args.argv = argv
    report = cnn_only(args) if args.cnn_only else run(args)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"total {report['total_seconds']:.0f} s, peak RSS {report['peak_rss_gb']:.1f} GB; wrote {args.out}")
    if args.card is not None:
        from matserve.registry import write_card

        card = json.loads((args.card / "card.json").read_text())
        card["baselines"] = report
        write_card(args.card, card)
        print(f"merged into {args.card / 'card.json'}")


if __name__ == "__main__":
    main()
