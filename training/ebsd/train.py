"""Train, evaluate and export the EBSD indexer (issue 5, seed 004 chapter 6, OMNet family).

Run from the repository root (offline, never by CI)::

    python -m training.ebsd.train --version 1.0.0

1. Simulate the datasets unless ``--data`` already holds them (``training.ebsd.simulate``: the Ni master
   pattern shipped in kikuchipy, random orientations, per-pattern PCs, degradation recipes; uint8 chunks).
2. Normalise every pattern with the serving codec (:func:`matserve.codecs.ebsd.normalize_patterns`).
3. Train ``networks.indexer`` with the hybrid loss (symmetric quaternion MAE + mean disorientation over the 24
   proper rotations of m-3m), Adam with warm-up and cosine decay; the weights of the epoch with the best
   validation disorientation are kept.
4. Export to ONNX (opset 17), check ONNX Runtime against Keras, evaluate the served path (codec + ONNX) on
   the four held-out sets and the 9 real Ni patterns of kikuchipy, write ``models/ebsd_indexer/<version>``.

Baselines (dictionary indexing, refinement, Hough) on the same sets: ``python -m training.ebsd.baselines``,
which adds them to the card.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from matserve.codecs.ebsd import (
    DETECTOR_TILT_DEG,
    NOMINAL_PC,
    PATTERN_SIDE_PX,
    PC_HALF_WIDTH,
    SAMPLE_TILT_DEG,
    normalize_patterns,
)
from matserve.codecs.orientation import AXIS_MAP_SIDE, axis_map, detector_directions, orientations_from_axis_map
from matserve.registry import write_card
from training.ebsd import networks
from training.ebsd.evaluate import TEST_SETS, OnnxIndexer, disorientation_deg, evaluate_cnn, real_nickel
from training.ebsd.simulate import load_split, write_datasets
from training.formation_enthalpy.train import git_commit

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNS = REPO_ROOT / "training" / "ebsd" / "runs"
MODEL_NAME = "ebsd_indexer"
PARITY_TOLERANCE = 1e-4
#: Share of the training budget spent on the curriculum split ``train_easy`` (when the data has it).
CURRICULUM_FRACTION = 0.3
SEED_PAPER = {
    "source": "seed 004 chapter 6 (OMNet): Ni, 374,852 simulated training patterns (cubochoric dictionaries)",
    "mean_disorientation_deg_simulated": 0.132,
    "mean_disorientation_deg_real_1000_patterns": 0.548,
    "dictionary_indexing_real_deg": 0.652,
}


def normalised(split: dict[str, np.ndarray], chunk: int = 20_000) -> np.ndarray:
    """The split's patterns through the serving codec, stored as float16 to halve the memory."""
    patterns = split["patterns"]
    out = np.empty(patterns.shape, dtype=np.float16)
    for start in range(0, len(patterns), chunk):
        out[start : start + chunk] = normalize_patterns(patterns[start : start + chunk])
    return out


def axis_map_targets(split: dict[str, np.ndarray], chunk: int = 20_000) -> np.ndarray:
    """The true cube-axis proximity maps ``(n, 15, 15)`` of a split (its quaternions at its PCs)."""
    out = np.empty((len(split["quaternions"]), AXIS_MAP_SIDE, AXIS_MAP_SIDE), dtype=np.float32)
    for start in range(0, len(out), chunk):
        stop = start + chunk
        directions = detector_directions(split["pc"][start:stop])
        out[start:stop] = axis_map(split["quaternions"][start:stop], directions).reshape(
            -1, AXIS_MAP_SIDE, AXIS_MAP_SIDE
        )
    return out


def dataset(patterns: np.ndarray, split: dict[str, np.ndarray], batch_size: int, shuffle_seed: int | None):
    """A tf.data pipeline of ``({"patterns", "pc"}, {"axis_map", "quaternion"})`` batches.

    Patterns are stored as float16 and cast to float32 per batch; with a ``shuffle_seed`` it repeats forever.
    """
    targets = {"axis_map": axis_map_targets(split), "quaternion": split["quaternions"].astype(np.float32)}
    data = tf.data.Dataset.from_tensor_slices(((patterns, split["pc"].astype(np.float32)), targets))
    if shuffle_seed is not None:
        data = data.shuffle(min(len(patterns), 100_000), seed=shuffle_seed, reshuffle_each_iteration=True).repeat()
    data = data.batch(batch_size)
    data = data.map(lambda x, y: ({"patterns": tf.cast(x[0], tf.float32), "pc": x[1]}, y))
    return data.prefetch(tf.data.AUTOTUNE)


class Schedule(keras.callbacks.Callback):
    """Warm-up then cosine decay of the learning rate, and the ramp of the disorientation weight (0 for the
    first half, then linear to ``networks.DISORIENTATION_WEIGHT``), over a step or a wall-clock budget.

    With ``steps`` the schedule is a function of the step (reproducible); with ``minutes`` of the elapsed
    time, and training stops when the time is up (the card records the steps done, which ``--steps``
    replays exactly).
    """

    def __init__(self, peak: float, steps: int | None, minutes: float | None, warmup_steps: int = 300) -> None:
        super().__init__()
        self.peak, self.steps, self.seconds, self.warmup_steps = peak, steps, (minutes or 0) * 60, warmup_steps
        self.started = time.perf_counter()
        self.step = 0
        self.stop_at = 1.0

    def fraction(self) -> float:
        if self.steps:
            return self.step / self.steps
        return (time.perf_counter() - self.started) / self.seconds

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        fraction = min(self.fraction(), 1.0)
        rate = self.peak * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * fraction)))
        if self.step < self.warmup_steps:
            rate *= (self.step + 1) / self.warmup_steps
        self.model.optimizer.learning_rate.assign(rate)
        self.model.disorientation_weight.assign(networks.DISORIENTATION_WEIGHT * max(0.0, 2 * fraction - 1))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.step += 1
        if self.fraction() >= self.stop_at:
            self.model.stop_training = True


class ValidationDisorientation(keras.callbacks.Callback):
    """After each epoch: index the validation split through the served decoding (least squares + decoder in
    numpy), log the mean disorientation (orix) and keep the weights of the best epoch."""

    def __init__(self, network: keras.Model, val_x: np.ndarray, val: dict[str, np.ndarray], path: Path) -> None:
        super().__init__()
        self.network, self.val_x, self.val, self.path = network, val_x, val, path
        self.best = np.inf
        self.history: list[dict] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        maps = self.network.predict({"patterns": self.val_x.astype(np.float32)}, batch_size=1024, verbose=0)
        quaternions, _ = orientations_from_axis_map(maps["axis_map"], self.val["pc"])
        angles = disorientation_deg(self.val["quaternions"], quaternions)
        row = {"epoch": epoch + 1, "mean_deg": float(angles.mean()), "median_deg": float(np.median(angles)),
               **{k: float(v) for k, v in (logs or {}).items()}}  # fmt: skip
        self.history.append(row)
        print(json.dumps(row), flush=True)
        if row["mean_deg"] < self.best:
            self.best = row["mean_deg"]
            self.network.save_weights(str(self.path))


def export_onnx(network: keras.Model, path: Path) -> None:
    """tf2onnx (opset 17), dynamic batch axis: input ``patterns``, output ``axis_map``."""
    import onnx
    import tf2onnx

    signature = [tf.TensorSpec((None, PATTERN_SIDE_PX, PATTERN_SIDE_PX), tf.float32, name="patterns")]
    function = tf.function(lambda patterns: network({"patterns": patterns}, training=False), input_signature=signature)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=17)
    rename = {proto.graph.output[0].name: "axis_map"}
    for node in proto.graph.node:
        node.output[:] = [rename.get(o, o) for o in node.output]
    proto.graph.output[0].name = "axis_map"
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())


def train(args: argparse.Namespace, data: dict[str, dict[str, np.ndarray]]) -> tuple[keras.Model, dict]:
    """Fit the network; returns it (best validation epoch's weights) and the training history."""
    keras.utils.set_random_seed(args.seed)
    network = networks.indexer()
    if args.resume is not None:  # continue from a checkpoint (e.g. runs/train_<version>/best.weights.h5)
        network.load_weights(str(args.resume))
    model = networks.IndexerTraining(network)
    train_x, val_x = normalised(data["train"]), normalised(data["val"])
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    schedule = Schedule(args.learning_rate, args.steps, None if args.steps else args.minutes)
    validation = ValidationDisorientation(network, val_x, data["val"], args.work / "best.weights.h5")
    started = time.perf_counter()
    if (
        "train_easy" in data and not args.no_curriculum
    ):  # curriculum: the easy recipe for the first CURRICULUM_FRACTION of the budget
        schedule.stop_at = CURRICULUM_FRACTION
        model.fit(
            dataset(normalised(data["train_easy"]), data["train_easy"], args.batch_size, args.seed),
            steps_per_epoch=args.steps_per_epoch, epochs=10_000, callbacks=[schedule, validation], verbose=0,
        )  # fmt: skip
        schedule.stop_at = 1.0
        model.stop_training = False
    model.fit(
        dataset(train_x, data["train"], args.batch_size, args.seed),
        steps_per_epoch=args.steps_per_epoch, epochs=10_000, callbacks=[schedule, validation], verbose=0,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    network.load_weights(str(validation.path))
    return network, {
        "steps": schedule.step,
        "steps_per_epoch": args.steps_per_epoch,
        "best_epoch": int(np.argmin([row["mean_deg"] for row in validation.history])) + 1,
        "validation_per_epoch": validation.history,
        "train_seconds": round(seconds, 1),
        "train_patterns_per_s": round(schedule.step * args.batch_size / seconds, 1),
        "replay": f"--steps {schedule.step}",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True)
    parser.add_argument("--data", type=Path, default=RUNS / "data_seed0")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--runs", type=Path, default=RUNS, help="where checkpoints and histories go")
    parser.add_argument("--n-train", type=int, default=300_000, help="used only when simulating")
    parser.add_argument("--n-eval", type=int, default=2_000, help="used only when simulating")
    parser.add_argument("--n-easy", type=int, default=60_000, help="curriculum split size, only when simulating")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock training budget")
    parser.add_argument("--steps", type=int, default=None, help="step budget (overrides --minutes; reproducible)")
    parser.add_argument("--steps-per-epoch", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export-only", action="store_true", help="skip training: export the saved best weights")
    parser.add_argument("--resume", type=Path, default=None, help="start from these weights (.weights.h5)")
    parser.add_argument("--no-curriculum", action="store_true", help="skip the train_easy stage (e.g. when resuming)")
    args = parser.parse_args(argv)
    args.work = args.runs / f"train_{args.version}"
    args.work.mkdir(parents=True, exist_ok=True)

    if not (args.data / "manifest.json").exists():
        write_datasets(args.data, args.n_train, args.n_eval, args.data_seed, n_easy=args.n_easy)
    manifest = json.loads((args.data / "manifest.json").read_text())
    splits = ("train", "val", *TEST_SETS)
    data = {split: load_split(args.data, split) for split in splits}
    if any(name.startswith("train_easy_") for name in manifest["files"]):
        data["train_easy"] = load_split(args.data, "train_easy")

    if args.export_only:
        network = networks.indexer()
        network.load_weights(str(args.work / "best.weights.h5"))
        history = json.loads((args.work / "history.json").read_text())
    else:
        network, history = train(args, data)
        (args.work / "history.json").write_text(json.dumps(history, indent=2) + "\n")

    folder = args.models / MODEL_NAME / args.version
    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(network, folder / "model.onnx")

    check = data["test_noisy"]["patterns"][:512]
    keras_map = network.predict({"patterns": normalize_patterns(check)}, batch_size=512, verbose=0)["axis_map"]
    parity = float(np.abs(OnnxIndexer(folder / "model.onnx").axis_maps(check) - keras_map).max())
    if parity > PARITY_TOLERANCE:
        raise SystemExit(f"ONNX and Keras axis maps differ by {parity:.2e}")

    # Error estimate: the fit residual times the median ratio of actual error to residual on validation.
    uncalibrated = OnnxIndexer(folder / "model.onnx").index(data["val"]["patterns"], data["val"]["pc"])
    val_angles = disorientation_deg(data["val"]["quaternions"], uncalibrated["quaternion"])
    deg_per_residual = float(np.median(val_angles / np.maximum(uncalibrated["fit_residual"], 1e-9)))
    indexer = OnnxIndexer(folder / "model.onnx", deg_per_residual)

    metrics = {name: evaluate_cnn(indexer, data[name]) for name in TEST_SETS}
    metrics["test_pc_shifted_told_nominal_pc"] = evaluate_cnn(indexer, data["test_pc_shifted"], pc=NOMINAL_PC)
    metrics["real_nickel_ebsd_small"] = real_nickel(indexer)
    for name, result in metrics.items():
        print(f"{name}: {json.dumps(result)}")

    card = {
        "name": MODEL_NAME,
        "version": args.version,
        "task": "orientation_regression",
        "description": "EBSD indexer for nickel (m-3m): an OMNet-style CNN (shared strided conv trunk and dense "
        "layer, orientation and error-estimate branches) on 60x60 patterns with the projection centre as a "
        "second input, trained on kikuchipy dynamical simulations with realistic degradations.",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_commit": git_commit(),
        "seed_paper": SEED_PAPER,
        "data": {
            "source": manifest["master_pattern"],
            "command": manifest["command"],
            "fingerprint_sha256": {name: meta["sha256"] for name, meta in manifest["files"].items()},
            "recipes": manifest["recipes"],
            "splits": manifest["splits"],
        },
        "split": {
            "method": "independent seeded simulations per split (SeedSequence children of the data seed); "
            "random continuous orientations, so no orientation is shared between splits",
            "seed": manifest["arguments"]["seed"],
            "sizes": {s: len(data[s]["patterns"]) for s in data},
        },
        "geometry": {
            "detector_shape": [PATTERN_SIDE_PX, PATTERN_SIDE_PX],
            "nominal_pc": list(NOMINAL_PC),
            "pc_half_width": PC_HALF_WIDTH,
            "pc_convention": "Bruker (PCx, PCy, PCz): fractions of detector width, height, width (kikuchipy)",
            "sample_tilt_deg": SAMPLE_TILT_DEG,
            "detector_tilt_deg": DETECTOR_TILT_DEG,
        },
        "phase": {"name": "ni", "point_group": "m-3m", "space_group": "Fm-3m", "energy_kv": 20},
        "inputs": [
            {
                "name": "patterns",
                "dtype": "float32",
                "shape": [-1, PATTERN_SIDE_PX, PATTERN_SIDE_PX],
                "unit": "normalised by matserve.codecs.ebsd.normalize_patterns",
            },
        ],
        "outputs": [
            {
                "name": "axis_map",
                "dtype": "float32",
                "shape": [-1, AXIS_MAP_SIDE, AXIS_MAP_SIDE],
                "unit": "cube-axis proximity sum_i c_i^4 of each block's ray (1 at <100>, 1/3 at <111>); "
                "matserve.codecs.orientation.orientations_from_axis_map turns it into orientations for a PC",
            },
        ],
        "orientation_decoding": {
            "function": "matserve.codecs.orientation.orientations_from_axis_map",
            "quaternion_convention": "orix (a, b, c, d), sample -> crystal, a >= 0",
            "error_deg_per_fit_residual": deg_per_residual,
            "expected_error_deg": "error_deg_per_fit_residual x RMS residual of the least-squares fit "
            "(median ratio on the validation split)",
        },
        "architecture": {
            "input_pool": networks.INPUT_POOL,
            "encoder_filters": list(networks.ENCODER_FILTERS),
            "global_dense": networks.GLOBAL_DENSE,
            "decoder_filters": list(networks.DECODER_FILTERS),
            "parameters": int(network.count_params()),
            "loss": "mean squared error of the axis map + w x mean disorientation (rad, 24 proper rotations of "
            f"432) of the orientation decoded from it; w ramps 0 -> {networks.DISORIENTATION_WEIGHT} over the "
            "second half of training",
        },
        "training": {
            **history,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "seed": args.seed,
            "curriculum": None if args.no_curriculum else {"split": "train_easy", "fraction": CURRICULUM_FRACTION},
            "resumed_from": None if args.resume is None else str(args.resume),
        },
        "metrics": metrics,
        "onnx": {"opset": 17, "parity_max_abs_axis_map": parity},
    }
    write_card(folder, card)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
