"""Export the compressed-dictionary EBSD indexer (``ebsd_indexer`` 2.0.0) as one ONNX graph, calibrate and evaluate it.

Run (after ``training.ebsd.simulate`` wrote the data; ~3 min on 2 cores)::

    python -m training.ebsd.dictionary --out models/ebsd_indexer/2.0.0

Nothing is trained. The dictionary is simulated from the Ni master pattern shipped in the kikuchipy wheel:

1. the m-3m fundamental zone on orix's cubochoric grid at 3 deg (30,443 orientations), projected on a 60x60
   detector at the nominal PC (:class:`matserve.matching.CompressedDictionary`, deterministic);
2. every pattern prepared as measured ones are (the pattern minus its 3 px Gaussian blur, standardised, clipped,
   unit norm) and reduced to its 300 leading principal components.

The graph (:func:`dictionary_graph`) does the whole match for a batch of resampled 60x60 patterns: the same
preparation, the projection on the principal axes, cosine similarity with every dictionary entry, and the
:data:`REFINE_CANDIDATES` best entries (orientations and similarities). The server first warps each pattern from its own
PC onto the detector as seen from the nominal PC (:func:`matserve.matching.warp_to_pc`). The
coefficients are stored as float16 (half the file; ONNX Runtime casts them to float32 once, at load).

Calibration on the validation split: ``expected_error_deg`` as a function of the best similarity (the mean
disorientation of validation patterns in the same similarity decile). Evaluation on the four held-out test sets
(2,000 patterns each, true PCs) and the 9 real Ni patterns, next to ``ebsd_indexer`` 1.0.0 (the CNN) on the same
patterns in the same run. The held-out patterns never touch the dictionary: it is simulated from a fixed grid,
clean, at one PC.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from matserve.codecs.ebsd import CLIP_SIGMA, NOMINAL_PC, PATTERN_SIDE_PX, _gaussian_matrix
from matserve.matching import (
    MATCHING_BACKGROUND_SIGMA_PX,
    CompressedDictionary,
    MasterPattern,
    warp_to_pc,
)
from matserve.models.ebsd_indexer import (
    OUTPUT_CANDIDATE_QUATERNIONS,
    OUTPUT_CANDIDATE_SIMILARITY,
    expected_error_from_similarity,
)
from matserve.models.ebsd_refinement import (
    REFINE_CANDIDATES,
    REFINE_DICTIONARY_COMPONENTS,
    REFINE_DICTIONARY_RESOLUTION_DEG,
    master_pattern,
)
from matserve.registry import write_card
from training.ebsd import baselines
from training.ebsd.evaluate import TEST_SETS, OnnxIndexer, disorientation_deg, summary

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VERSION = "2.0.0"
OPSET = 13
CALIBRATION_BINS = 10


def dictionary_graph(
    dictionary: CompressedDictionary, candidates: int = REFINE_CANDIDATES, side: int = PATTERN_SIDE_PX
):
    """The ONNX model: resampled patterns ``(n, side, side)`` float32 in; the ``candidates`` best dictionary
    orientations ``(n, candidates, 4)`` (at the dictionary's PC) and their cosine similarities ``(n, candidates)``
    out, best first.

    The preparation in the graph is :func:`matserve.matching.prepare_for_matching`'s, step for step:
    background = ``B @ x @ B.T`` (``B`` the codec's reflecting Gaussian matrix, 3 px), standardise, clip to
    +-``CLIP_SIGMA``, centre, unit norm; then ``(x - mean) @ basis``, unit norm, ``@ coefficients.T``, TopK.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    blur = _gaussian_matrix(side, MATCHING_BACKGROUND_SIGMA_PX).astype(np.float32)
    initializers = [
        numpy_helper.from_array(blur, "blur"),
        numpy_helper.from_array(np.ascontiguousarray(blur.T), "blur_t"),
        numpy_helper.from_array(np.array([-1, side * side], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array(-CLIP_SIGMA, np.float32), "clip_low"),
        numpy_helper.from_array(np.array(CLIP_SIGMA, np.float32), "clip_high"),
        numpy_helper.from_array(np.array(1e-12, np.float32), "tiny"),
        numpy_helper.from_array(dictionary.mean.astype(np.float32), "dictionary_mean"),
        numpy_helper.from_array(dictionary.basis.astype(np.float16), "basis_f16"),
        numpy_helper.from_array(
            np.ascontiguousarray(dictionary.coefficients.T).astype(np.float16), "coefficients_t_f16"
        ),
        numpy_helper.from_array(dictionary.quaternions.astype(np.float32), "dictionary_quaternions"),
        numpy_helper.from_array(np.array([candidates], np.int64), "k"),
    ]
    nodes = []

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def centred(x: str, name: str) -> str:
        return node("Sub", [x, node("ReduceMean", [x], f"{name}_mean", axes=[1], keepdims=1)], name)

    def unit(x: str, name: str) -> str:
        norm = node("ReduceL2", [x], f"{name}_norm", axes=[1], keepdims=1)
        return node("Div", [x, node("Max", [norm, "tiny"], f"{name}_norm_safe")], name)

    background = node("MatMul", [node("MatMul", ["blur", "patterns"], "blurred_rows"), "blur_t"], "background")
    flat = node("Reshape", [node("Sub", ["patterns", background], "high_pass"), "flat_shape"], "flat")
    centre = centred(flat, "centred")
    std = node(
        "Sqrt",
        [node("ReduceMean", [node("Mul", [centre, centre], "squares")], "variance", axes=[1], keepdims=1)],
        "std",
    )
    standard = node("Div", [centre, node("Max", [std, "tiny"], "std_safe")], "standardised")
    clipped = node("Clip", [standard, "clip_low", "clip_high"], "clipped")
    prepared = unit(centred(clipped, "recentred"), "prepared")
    basis = node("Cast", ["basis_f16"], "basis", to=TensorProto.FLOAT)
    coefficients = node("Cast", ["coefficients_t_f16"], "coefficients_t", to=TensorProto.FLOAT)
    projected = unit(
        node("MatMul", [node("Sub", [prepared, "dictionary_mean"], "deviation"), basis], "projected"), "direction"
    )
    similarity = node("MatMul", [projected, coefficients], "similarity")
    nodes.append(
        helper.make_node("TopK", [similarity, "k"], [OUTPUT_CANDIDATE_SIMILARITY, "best"], axis=1, largest=1, sorted=1)
    )
    node("Gather", ["dictionary_quaternions", "best"], OUTPUT_CANDIDATE_QUATERNIONS, axis=0)
    graph = helper.make_graph(
        nodes,
        "ebsd_compressed_dictionary",
        [helper.make_tensor_value_info("patterns", TensorProto.FLOAT, ["batch", side, side])],
        [
            helper.make_tensor_value_info(OUTPUT_CANDIDATE_QUATERNIONS, TensorProto.FLOAT, ["batch", candidates, 4]),
            helper.make_tensor_value_info(OUTPUT_CANDIDATE_SIMILARITY, TensorProto.FLOAT, ["batch", candidates]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="matserve")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class DictionaryIndexer:
    """The served fast path without HTTP: the warp to the nominal PC, the graph (and the calibration, when given)."""

    def __init__(self, path: Path, calibration: dict[str, list[float]] | None = None) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.calibration = calibration

    def index(self, patterns: np.ndarray, pc: np.ndarray, batch_size: int = 1024) -> dict[str, np.ndarray]:
        """``quaternion`` ``(n, 4)`` (best match), ``candidates`` ``(n, k, 4)`` (all matches, the refinement's
        starts), ``similarity`` ``(n,)`` and, when calibrated, ``expected_error_deg``."""
        pc = np.broadcast_to(np.asarray(pc, dtype=np.float64).reshape(-1, 3), (len(patterns), 3))
        warped = warp_to_pc(patterns, pc, np.asarray(NOMINAL_PC))
        parts = [self.session.run(None, {"patterns": warped[s : s + batch_size]})
                 for s in range(0, len(patterns), batch_size)]  # fmt: skip
        found = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        candidates = found[0].astype(np.float64)
        result = {
            "quaternion": candidates[:, 0],
            "candidates": candidates,
            "similarity": found[1][:, 0].astype(np.float64),
        }
        if self.calibration is not None:
            result["expected_error_deg"] = expected_error_from_similarity(result["similarity"], self.calibration)
        return result


def calibrate(similarity: np.ndarray, angles_deg: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, list[float]]:
    """Mean disorientation per similarity decile: ``{"similarity": bin medians, "mean_error_deg": ...}``."""
    order = np.argsort(similarity)
    groups = np.array_split(order, bins)
    return {
        "similarity": [float(np.median(similarity[g])) for g in groups],
        "mean_error_deg": [float(np.mean(angles_deg[g])) for g in groups],
    }


def fingerprint(paths: list[Path]) -> dict[str, str]:
    """sha256 of each file."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def master_pattern_file() -> Path:
    """The master-pattern file inside the kikuchipy wheel."""
    import kikuchipy

    return Path(kikuchipy.__file__).parent / "data" / "emsoft_ebsd_master_pattern" / "ni_mc_mp_20kv_uint8_gzip_opts9.h5"


def code_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def evaluate(indexer: DictionaryIndexer, cnn: OnnxIndexer, split: dict[str, np.ndarray]) -> dict[str, Any]:
    """Both indexers on the same patterns with their true PCs: disorientation summaries and patterns/s."""
    indexer.index(split["patterns"][:64], split["pc"][:64])  # warm
    started = time.perf_counter()
    ours = indexer.index(split["patterns"], split["pc"])
    seconds = time.perf_counter() - started
    angles = disorientation_deg(split["quaternions"], ours["quaternion"])
    started = time.perf_counter()
    theirs = cnn.index(split["patterns"], split["pc"])
    cnn_seconds = time.perf_counter() - started
    cnn_angles = disorientation_deg(split["quaternions"], theirs["quaternion"])
    result = summary(angles, seconds)
    if "expected_error_deg" in ours:
        result["mean_expected_error_deg"] = float(np.mean(ours["expected_error_deg"]))
    result["cnn_1_0_0_same_run"] = summary(cnn_angles, cnn_seconds)
    result["speed_vs_cnn_1_0_0"] = result["patterns_per_s"] / result["cnn_1_0_0_same_run"]["patterns_per_s"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE / "runs" / "data_seed0")
    parser.add_argument("--out", type=Path, default=REPO / "models" / "ebsd_indexer" / VERSION)
    parser.add_argument("--cnn", type=Path, default=REPO / "models" / "ebsd_indexer" / "1.0.0", help="baseline version")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import onnx

    started = time.perf_counter()
    dictionary = CompressedDictionary.build(MasterPattern.from_kikuchipy(master_pattern()), np.asarray(NOMINAL_PC),
                                            REFINE_DICTIONARY_RESOLUTION_DEG, REFINE_DICTIONARY_COMPONENTS)  # fmt: skip
    build_seconds = time.perf_counter() - started
    print(f"dictionary: {len(dictionary.quaternions)} orientations in {build_seconds:.0f} s")
    staging = args.out.with_name(args.out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    onnx.save(dictionary_graph(dictionary), staging / "model.onnx")

    val = dict(np.load(args.data / "val_000.npz"))
    indexer = DictionaryIndexer(staging / "model.onnx")
    found = indexer.index(val["patterns"], val["pc"])
    calibration = calibrate(found["similarity"], disorientation_deg(val["quaternions"], found["quaternion"]))
    indexer.calibration = calibration

    # parity: the graph against the numpy search of the same dictionary (best candidate, 500 validation patterns)
    from matserve.matching import prepare_for_matching

    numpy_best, _ = dictionary.candidates(prepare_for_matching(val["patterns"][:500].astype(np.float32)), 1)
    graph_best = indexer.session.run(None, {"patterns": val["patterns"][:500].astype(np.float32)})[0][:, 0]
    parity = float(np.mean(np.abs(np.abs(np.sum(numpy_best[:, 0] * graph_best, axis=1)) - 1.0) < 1e-5))

    cnn_card = json.loads((args.cnn / "card.json").read_text())
    cnn = OnnxIndexer(args.cnn / "model.onnx", cnn_card["orientation_decoding"]["error_deg_per_fit_residual"])
    sets = {name: dict(np.load(args.data / f"{name}_000.npz")) for name in TEST_SETS}
    real = baselines.real_nickel_set()
    sets["real_ni_9"] = {key: real[key] for key in ("patterns", "quaternions", "pc")}
    metrics = {}
    for name, split in sets.items():
        metrics[name] = evaluate(indexer, cnn, split)
        m = metrics[name]
        print(f"{name}: {m['mean_disorientation_deg']:.2f} / {m['median_disorientation_deg']:.2f} deg, "
              f"{m['fraction_above_5_deg']:.1%} above 5 deg, {m['patterns_per_s']:.0f} patterns/s "
              f"(CNN {m['cnn_1_0_0_same_run']['mean_disorientation_deg']:.2f} deg, {m['speed_vs_cnn_1_0_0']:.1f}x speed)")  # fmt: skip

    data_files = [args.data / "val_000.npz", *(args.data / f"{name}_000.npz" for name in TEST_SETS)]
    card = {
        "name": "ebsd_indexer",
        "version": VERSION,
        "task": "orientation_dictionary_matching",
        "description": "EBSD indexer for nickel (m-3m): a compressed dictionary of 30,443 dynamical simulations "
        "(3 deg cubochoric grid of the fundamental zone, Ni master pattern from the kikuchipy wheel, nominal PC) "
        "matched on 300 principal components, as one ONNX graph; patterns are warped from their PC to the nominal "
        "one before it. "
        "Replaces the 1.0.0 CNN as the fast path (more accurate on every held-out set).",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_commit": code_commit(),
        "command": "python -m training.ebsd.dictionary --out models/ebsd_indexer/2.0.0",
        "data": {
            "dictionary": "simulated, not trained: kikuchipy.data.nickel_ebsd_master_pattern_small (Ni, 20 kV, Lambert, "
            "both hemispheres) projected by matserve.models.ebsd_matching on orix's cubochoric m-3m grid",
            "master_pattern_sha256": hashlib.sha256(master_pattern_file().read_bytes()).hexdigest(),
            "grid_resolution_deg": REFINE_DICTIONARY_RESOLUTION_DEG,
            "orientations": len(dictionary.quaternions),
            "components": REFINE_DICTIONARY_COMPONENTS,
            "background_sigma_px": MATCHING_BACKGROUND_SIGMA_PX,
            "build_seconds": build_seconds,
            "evaluation_data_command": "python -m training.ebsd.simulate --out training/ebsd/runs/data_seed0 "
            "--n-train 300000 --n-eval 2000 --seed 0 --n-easy 60000",
            "fingerprint_sha256": fingerprint(data_files),
        },
        "split": {
            "method": "nothing is fitted to simulated patterns except the error calibration (val split); the test "
            "sets are independent seeded simulations (seed 0) with random continuous orientations",
            "calibration": "val (2,000 patterns)",
            "test": list(sets),
        },
        "geometry": cnn_card["geometry"],
        "phase": cnn_card["phase"],
        "inputs": [
            {
                "name": "patterns",
                "dtype": "float32",
                "shape": [-1, PATTERN_SIDE_PX, PATTERN_SIDE_PX],
                "unit": "detector intensities resampled to 60x60 (matserve.codecs.ebsd.encode_patterns' "
                "'resampled') and warped to the nominal PC (matserve.models.ebsd_matching.warp_to_pc); background "
                "removal and normalisation happen in the graph",
            }
        ],
        "outputs": [
            {
                "name": OUTPUT_CANDIDATE_QUATERNIONS,
                "dtype": "float32",
                "shape": [-1, REFINE_CANDIDATES, 4],
                "unit": "the best dictionary orientations, orix quaternions (sample -> crystal)",
            },
            {
                "name": OUTPUT_CANDIDATE_SIMILARITY,
                "dtype": "float32",
                "shape": [-1, REFINE_CANDIDATES],
                "unit": "cosine similarity in the 300-component space (-1 to 1), best first",
            },
        ],
        "orientation_decoding": {
            "method": "dictionary",
            "pc_handling": "each pattern is warped from its PC to the nominal one before the graph "
            "(matserve.models.ebsd_matching.warp_to_pc): the graph's orientations are the pattern's",
            "quaternion_convention": "orix (a, b, c, d), sample -> crystal, a >= 0",
            "expected_error_deg": "mean disorientation of the validation patterns in the best similarity's decile "
            "(linear interpolation between decile medians)",
            "error_by_similarity": calibration,
        },
        "onnx": {"opset": OPSET, "parity_best_candidate_vs_numpy_search": parity},
        "metrics": metrics,
        "serving": {"max_batch_size": 1024},
    }
    write_card(staging, card)
    size_mb = (staging / "model.onnx").stat().st_size / 1e6
    shutil.rmtree(args.out, ignore_errors=True)
    staging.rename(args.out)
    print(f"wrote {args.out} (model.onnx {size_mb:.1f} MB; parity {parity:.3f})")


if __name__ == "__main__":
    main()
