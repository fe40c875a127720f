"""Train, evaluate and export the XRD phase classifier and novelty scorer (issue 4, seed 002).

Run from the repository root (offline, never by CI)::

    python -m training.xrd.train --version 1.0.0

1. Simulate the datasets unless ``--data`` already holds them (``training.xrd.simulate``: train/val drawn
   from the wide ranges; test/novel/mixtures from the standard ranges; ``*_wide`` robustness sets).
2. Phase classifier: a strided 1D CNN (``networks.phase_classifier``), Adam, early stopping on validation
   loss. Baseline on the same test splits: k-nearest neighbours on the raw patterns (k chosen on val).
3. Novelty scorer: the seed's VAE (2048-256-128-2, BCE × 2048 + KL). Served score: the reconstruction
   MSE of the deterministic path (z = latent mean), calibrated as a percentile of the validation
   (known-phase) errors; ``is_novel`` above the ``--novelty-percentile`` (default 99th) percentile.
   Evidence as in the seed: mean error of known vs mixtures vs unknown, AUROC, error vs mixing fraction.
4. Export both to ONNX (opset 17), check ONNX Runtime against Keras on the test split, write
   ``models/xrd_phase/<version>`` and ``models/xrd_novelty/<version>`` with their cards.
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
from sklearn.metrics import confusion_matrix, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from matserve.codecs.xrd import CU_KA_ANGSTROM, MODEL_GRID_DEG, N_POINTS
from matserve.models.xrd_novelty import novelty_score
from matserve.registry import write_card
from training.formation_enthalpy.train import git_commit
from training.xrd import networks
from training.xrd.simulate import WIDE, simulate_mixtures, simulate_random_peaks, write_datasets
from training.xrd.structures import KNOWN_PHASES, NOVEL_PHASES

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNS = REPO_ROOT / "training" / "xrd" / "runs"
PHASE_MODEL = "xrd_phase"
NOVELTY_MODEL = "xrd_novelty"
PARITY_TOLERANCE = 1e-4
SEED_PAPER = {
    "source": "seed 002 (VAE for XRD), synthetic Fm-3m/Im-3m/P6_3/mmc, Cu Kα, 2θ 20-90°, 2048 points",
    "latent_knn_classification_accuracy": 0.9916,
    "mean_reconstruction_error_known": 0.017,
    "mean_reconstruction_error_unknown_rutile": 0.09,
    "error_vs_mixing_fraction": "maximum near 50 %",
}
SPLITS = ("train", "val", "test", "novel", "mixtures", "test_wide", "novel_wide", "mixtures_wide")


def load_split(data: Path, split: str) -> dict[str, np.ndarray]:
    """One ``.npz`` split with ``x`` as float32 in [0, 1]."""
    with np.load(data / f"{split}.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    x = arrays["x"]
    arrays["x"] = (x.astype(np.float32) / 255.0) if x.dtype == np.uint8 else x.astype(np.float32)
    return arrays


def ensure_data(args: argparse.Namespace) -> dict:
    """The manifest of ``args.data``, simulating the datasets first when they are not there."""
    manifest_path = args.data / "manifest.json"
    if not manifest_path.exists():
        write_datasets(args.data, args.per_class, args.eval_per_class, args.data_seed)
    manifest = json.loads(manifest_path.read_text())
    missing = [s for s in SPLITS if f"{s}.npz" not in manifest["files"]]
    if missing:
        raise SystemExit(f"{args.data} lacks {missing}: re-simulate with python -m training.xrd.simulate")
    return manifest


def data_card(manifest: dict, data: Path) -> dict:
    """What the card records about the training data (fingerprints of every split)."""
    return {
        "source": "simulated with training.xrd.simulate (pymatgen structure factors, no downloaded data)",
        "command": manifest["command"],
        "directory": str(data.relative_to(REPO_ROOT)) if data.is_relative_to(REPO_ROOT) else str(data),
        "fingerprint_sha256": {name: meta["sha256"] for name, meta in manifest["files"].items()},
        "reference_peaks_sha256": manifest["reference_peaks_sha256"],
        "known_classes": manifest["known_classes"],
        "novel_classes": manifest["novel_classes"],
        "lattice_ranges_angstrom": manifest["lattice_ranges_angstrom"],
        "standard_ranges": {"phase": manifest["phase_ranges"], "measurement": manifest["measurement_ranges"]},
        "wide_ranges": {
            "phase": manifest["wide_phase_ranges"],
            "measurement": manifest["wide_measurement_ranges"],
            "lattice_margin": manifest["wide_lattice_margin"],
        },
    }


def split_card(manifest: dict) -> dict:
    return {
        "method": "independent seeded simulations per split (SeedSequence children); continuous parameters, "
        "so no pattern is shared between splits",
        "seed": manifest["arguments"]["seed"],
        "train_profile": manifest["arguments"]["train_profile"],
        "sizes": {name: meta["n_patterns"] for name, meta in manifest["files"].items()},
    }


def export_onnx(model: keras.Model, path: Path, output_names: list[str]) -> None:
    """tf2onnx (opset 17), dynamic batch axis, input ``pattern``; outputs renamed to ``output_names``."""
    import onnx
    import tf2onnx

    signature = [tf.TensorSpec((None, N_POINTS), tf.float32, name="pattern")]
    function = tf.function(lambda pattern: model(pattern, training=False), input_signature=signature)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=17)
    graph_outputs = [o.name for o in proto.graph.output]
    if isinstance(model.output, dict):  # tf2onnx sorts dict outputs by key; map by the key order it used
        keys = sorted(model.output)
        rename = {graph_outputs[keys.index(k)]: k for k in output_names}
    else:
        rename = {graph_outputs[0]: output_names[0]}
    for node in proto.graph.node:
        node.output[:] = [rename.get(o, o) for o in node.output]
    for output in proto.graph.output:
        output.name = rename.get(output.name, output.name)
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())


def onnx_run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"pattern": x}), strict=True))


# --------------------------------------------------------------------------- phase classifier


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict:
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    recall = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "n": len(y_true),
        "confusion_matrix": matrix.tolist(),
        "recall_per_class": [float(r) for r in recall],
    }


def train_phase(args: argparse.Namespace, sets: dict, class_names: list[str]) -> tuple[keras.Model, dict]:
    keras.utils.set_random_seed(args.seed)
    model = networks.phase_classifier(len(class_names))
    steps = args.phase_epochs * int(np.ceil(len(sets["train"]["x"]) / args.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, max(steps, 1))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=6, restore_best_weights=True)
    started = time.perf_counter()
    history = model.fit(
        sets["train"]["x"], sets["train"]["y"], validation_data=(sets["val"]["x"], sets["val"]["y"]),
        epochs=args.phase_epochs, batch_size=args.batch_size, callbacks=[stop], verbose=2, shuffle=True,
    )  # fmt: skip
    log = {
        "epochs_run": len(history.history["loss"]),
        "best_epoch": int(np.argmin(history.history["val_loss"])) + 1,
        "best_val_loss": float(np.min(history.history["val_loss"])),
        "seconds": round(time.perf_counter() - started, 1),
        "optimizer": f"Adam 1e-3 cosine decay over {args.phase_epochs} epochs, batch {args.batch_size}",
    }
    metrics = {"training": log}
    n = len(class_names)
    for split in ("test", "test_wide"):
        pred = model.predict(sets[split]["x"], batch_size=1024, verbose=0).argmax(axis=1)
        metrics[split] = confusion(sets[split]["y"], pred, n)
        print(f"phase CNN {split}: accuracy {metrics[split]['accuracy']:.4f}", flush=True)
    return model, metrics


def knn_baseline(sets: dict, n_classes: int) -> dict:
    """k-NN on the raw patterns (Euclidean), k chosen on the validation split."""
    best_k, best = 1, -1.0
    for k in (1, 5, 15):
        knn = KNeighborsClassifier(n_neighbors=k, n_jobs=2).fit(sets["train"]["x"], sets["train"]["y"])
        accuracy = float((knn.predict(sets["val"]["x"]) == sets["val"]["y"]).mean())
        if accuracy > best:
            best_k, best = k, accuracy
    knn = KNeighborsClassifier(n_neighbors=best_k, n_jobs=2).fit(sets["train"]["x"], sets["train"]["y"])
    result: dict = {"method": "k-nearest neighbours on raw patterns (Euclidean)", "k": best_k, "val_accuracy": best}
    for split in ("test", "test_wide"):
        result[split] = confusion(sets[split]["y"], knn.predict(sets[split]["x"]), n_classes)
        print(f"kNN (k={best_k}) {split}: accuracy {result[split]['accuracy']:.4f}", flush=True)
    return result


# --------------------------------------------------------------------------- novelty scorer


def train_vae(
    args: argparse.Namespace, sets: dict, widths: tuple[int, ...], latent: int, epochs: int
) -> tuple[keras.Model, keras.Model, dict]:
    keras.utils.set_random_seed(args.seed)
    encoder, decoder = networks.vae_encoder(widths, latent), networks.vae_decoder(widths, latent)
    vae = networks.VAE(encoder, decoder, seed=args.seed)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=8, restore_best_weights=True)
    started = time.perf_counter()
    history = vae.fit(
        sets["train"]["x"], validation_data=(sets["val"]["x"],), epochs=epochs,
        batch_size=args.batch_size, callbacks=[stop], verbose=2, shuffle=True,
    )  # fmt: skip
    log = {
        "widths": list(widths),
        "latent_dimensions": latent,
        "parameters": int(encoder.count_params() + decoder.count_params()),
        "epochs_run": len(history.history["loss"]),
        "best_epoch": int(np.argmin(history.history["val_loss"])) + 1,
        "best_val_loss": float(np.min(history.history["val_loss"])),
        "seconds": round(time.perf_counter() - started, 1),
        "optimizer": f"Adam 1e-3, batch {args.batch_size}, at most {epochs} epochs, early stopping on validation loss",
        "loss": "2048 × mean binary cross-entropy + KL divergence to N(0, I) (seed 002)",
    }
    return encoder, decoder, log


def auroc(known: np.ndarray, other: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(known)), np.ones(len(other))]
    return float(roc_auc_score(labels, np.r_[known, other]))


def score_metrics(known: np.ndarray, novel: np.ndarray, novel_y: np.ndarray, mixtures: np.ndarray,
                  minority: np.ndarray, threshold: float, novel_names: list[str]) -> dict:  # fmt: skip
    """AUROC and flagged fractions of one score (higher = more novel)."""
    return {
        "auroc_unknown_vs_known": auroc(known, novel),
        "auroc_mixtures_vs_known": auroc(known, mixtures),
        "auroc_mixtures_minority_at_least_10pct_vs_known": auroc(known, mixtures[minority >= 0.1]),
        "flagged_fraction_at_threshold": {
            "known": float((known > threshold).mean()),
            "mixtures": float((mixtures > threshold).mean()),
            "unknown": float((novel > threshold).mean()),
        },
        "unknown_by_type": {
            name: {
                "auroc_vs_known": auroc(known, novel[novel_y == j]),
                "flagged_fraction": float((novel[novel_y == j] > threshold).mean()),
            }
            for j, name in enumerate(novel_names)
        },
    }


def novelty_metrics(
    graph: keras.Model, sets: dict, class_names: list[str], novel_names: list[str], threshold_percentile: float
) -> tuple[dict, dict, dict]:
    """Evidence of the seed (errors, AUROC, error vs fraction), the served score, calibration, latent reference."""

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        out = graph.predict(x, batch_size=1024, verbose=0)
        return {k: np.asarray(v).reshape(len(x), -1) if k != "reconstruction_error" and k != "outlier_probability"
                else np.asarray(v).reshape(-1) for k, v in out.items()}  # fmt: skip

    grid = np.linspace(0.0, 1.0, 1001)
    val = run(sets["val"]["x"])
    error_quantiles = np.quantile(val["reconstruction_error"], grid)
    has_detector = "outlier_probability" in val
    outlier_quantiles = np.quantile(val["outlier_probability"], grid) if has_detector else None

    def scores(out: dict[str, np.ndarray]) -> np.ndarray:
        return novelty_score(out["reconstruction_error"], out.get("outlier_probability"), error_quantiles,
                             outlier_quantiles)  # fmt: skip

    val_score = scores(val)
    score_quantiles = np.quantile(val_score, grid)
    score_threshold = float(np.quantile(val_score, threshold_percentile / 100.0))
    error_threshold = float(np.quantile(val["reconstruction_error"], threshold_percentile / 100.0))
    latent_mean = val["latent_mean"].mean(axis=0)
    _, _, vt = np.linalg.svd(val["latent_mean"] - latent_mean, full_matrices=False)
    map_components = vt[:2] if vt.shape[0] >= 2 else np.eye(2, val["latent_mean"].shape[1])
    knn = KNeighborsClassifier(n_neighbors=15).fit(val["latent_mean"], sets["val"]["y"])
    metrics: dict = {}
    for suffix in ("", "_wide"):
        known, novel, mixtures = (run(sets[f"{s}{suffix}"]["x"]) for s in ("test", "novel", "mixtures"))
        e_known, e_novel, e_mix = (r["reconstruction_error"] for r in (known, novel, mixtures))
        profile = "wide" if suffix else "standard"
        novel_y = sets[f"novel{suffix}"]["y"]
        fraction = sets[f"mixtures{suffix}"]["fraction_a"]
        fractions = np.unique(fraction)
        by_fraction = [float(e_mix[fraction == f].mean()) for f in fractions]
        # Minority fraction: mixtures with less than 10 % of one phase are nearly pure patterns.
        minority = np.minimum(fraction, 1.0 - fraction)
        metrics[profile] = {
            "mean_reconstruction_error": {
                "known": float(e_known.mean()),
                "mixtures": float(e_mix.mean()),
                "unknown": float(e_novel.mean()),
                "unknown_by_type": {n: float(e_novel[novel_y == j].mean()) for j, n in enumerate(novel_names)},
            },
            "median_reconstruction_error": {
                "known": float(np.median(e_known)),
                "mixtures": float(np.median(e_mix)),
                "unknown": float(np.median(e_novel)),
            },
            "reconstruction_error_score": score_metrics(
                e_known, e_novel, novel_y, e_mix, minority, error_threshold, novel_names
            ),
            "error_vs_fraction_a": {"fraction_a": fractions.round(4).tolist(), "mean_error": by_fraction},
            "fraction_a_of_max_error": float(fractions[int(np.argmax(by_fraction))]),
            "latent_knn_accuracy": float((knn.predict(known["latent_mean"]) == sets[f"test{suffix}"]["y"]).mean()),
            "n": {"known": len(e_known), "unknown": len(e_novel), "mixtures": len(e_mix)},
        }
        if has_detector:
            s_known, s_novel, s_mix = (scores(r) for r in (known, novel, mixtures))
            metrics[profile]["novelty_score"] = score_metrics(
                s_known, s_novel, novel_y, s_mix, minority, score_threshold, novel_names
            )
            p_known, p_novel, p_mix = (r["outlier_probability"] for r in (known, novel, mixtures))
            metrics[profile]["outlier_probability_score"] = score_metrics(
                p_known, p_novel, novel_y, p_mix, minority, 0.5, novel_names
            )
        summary = {k: {m: round(v, 4) for m, v in b.items() if m.startswith("auroc")}
                   for k, b in metrics[profile].items() if k.endswith("score")}  # fmt: skip
        print(f"novelty {profile}: {json.dumps(summary)}", flush=True)
    calibration = {
        "reconstruction_error": "mean squared error between the pattern and its reconstruction from the latent "
        "mean, on the model grid ([0, 1] intensities)",
        "validation_split": "val (known phases, never trained on)",
        "validation_quantiles": [float(q) for q in error_quantiles],
        "outlier_probability_quantiles": None if outlier_quantiles is None else [float(q) for q in outlier_quantiles],
        "novelty_score": "max(percentile of reconstruction_error, percentile of outlier_probability), each among "
        "the validation patterns"
        if has_detector
        else "percentile of reconstruction_error",
        "score_quantiles": [float(q) for q in score_quantiles],
        "novelty_percentile": "percentile of the novelty score among the validation patterns' scores (0-100)",
        "threshold_percentile": threshold_percentile,
        "threshold_score": score_threshold,
        "threshold_reconstruction_error": error_threshold,
        "nearest_known_phase": "15-nearest neighbours in latent space among the latent_reference.npz points",
        "latent_map": "2-d PCA projection of the latent means of the validation patterns (latent_reference.npz)",
    }
    reference = {
        "latent_mean": val["latent_mean"].astype(np.float32),
        "label": sets["val"]["y"].astype(np.int8),
        "class_names": np.array(class_names),
        "map_center": latent_mean.astype(np.float32),
        "map_components": map_components.astype(np.float32),
    }
    return metrics, calibration, reference


def outlier_exposure_set(n: int, seed: int) -> np.ndarray:
    """Half binary mixtures of known phases (fraction of A uniform in 0.05-0.95), half random-peak patterns."""
    rng = np.random.default_rng(seed)
    known = [p.name for p in KNOWN_PHASES]
    pairs = [(a, b) for i, a in enumerate(known) for b in known[i + 1 :]]
    parts = []
    for k, (a, b) in enumerate(pairs):
        count = n // 2 // len(pairs) + (k < (n // 2) % len(pairs))
        parts.append(simulate_mixtures(a, b, rng.uniform(0.05, 0.95, count), rng, WIDE)[0])
    parts.append(simulate_random_peaks(n - sum(len(p) for p in parts), rng, WIDE)[0])
    return np.concatenate(parts).astype(np.float16).astype(np.float32)


def train_outlier_detector(args: argparse.Namespace, sets: dict) -> tuple[keras.Model, dict]:
    """Outlier exposure: known (train split) vs mixtures + random peaks (wide ranges), seeded from ``--seed``."""
    outliers = outlier_exposure_set(len(sets["train"]["x"]), args.seed)
    outliers_val = outlier_exposure_set(len(sets["val"]["x"]), args.seed + 1)
    x = np.concatenate([sets["train"]["x"], outliers])
    y = np.r_[np.zeros(len(sets["train"]["x"])), np.ones(len(outliers))].astype(np.float32)
    x_val = np.concatenate([sets["val"]["x"], outliers_val])
    y_val = np.r_[np.zeros(len(sets["val"]["x"])), np.ones(len(outliers_val))].astype(np.float32)
    keras.utils.set_random_seed(args.seed)
    model = networks.outlier_detector()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True)
    started = time.perf_counter()
    history = model.fit(x, y, validation_data=(x_val, y_val), epochs=args.outlier_epochs,
                        batch_size=args.batch_size, callbacks=[stop], verbose=2, shuffle=True)  # fmt: skip
    return model, {
        "method": "outlier exposure: the classifier's CNN with a sigmoid output, known phases (train split) against "
        "binary mixtures of known phases (fraction 0.05-0.95) and random-peak patterns (3-25 peaks), wide ranges",
        "outliers": {"train": len(outliers), "val": len(outliers_val), "seeds": [args.seed, args.seed + 1]},
        "never_shown": "the novel structure types (rutile, perovskite, wurtzite, fluorite) of the evaluation",
        "epochs_run": len(history.history["loss"]),
        "best_val_loss": float(np.min(history.history["val_loss"])),
        "seconds": round(time.perf_counter() - started, 1),
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True, help="registry version to write, e.g. 1.0.0")
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--data", type=Path, default=RUNS / "data_seed0", help="dataset folder (simulated if absent)")
    parser.add_argument("--per-class", type=int, default=5000, help="training patterns per class, if simulating")
    parser.add_argument("--eval-per-class", type=int, default=1000, help="val/test/novel/mixture sizes, if simulating")
    parser.add_argument("--data-seed", type=int, default=0, help="simulation seed, if simulating")
    parser.add_argument("--seed", type=int, default=42, help="weight initialisation and shuffling seed")
    parser.add_argument("--phase-epochs", type=int, default=40)
    parser.add_argument("--vae-epochs", type=int, default=40, help="served VAE (16-d latent)")
    parser.add_argument("--reference-vae-epochs", type=int, default=40, help="seed VAE (2-d latent); 0 = skip")
    parser.add_argument("--outlier-epochs", type=int, default=20, help="outlier-exposure detector; 0 = none")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--novelty-percentile", type=float, default=99.0, help="is_novel threshold percentile")
    parser.add_argument("--models", nargs="+", choices=["phase", "novelty"], default=["phase", "novelty"])
    args = parser.parse_args(argv)

    manifest = ensure_data(args)
    sets = {split: load_split(args.data, split) for split in SPLITS}
    class_names = [str(c) for c in sets["train"]["class_names"]]
    novel_names = [str(c) for c in sets["novel"]["class_names"]]
    assert class_names == [p.name for p in KNOWN_PHASES] and novel_names == [p.name for p in NOVEL_PHASES]
    common = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_commit": git_commit(),
        "data": data_card(manifest, args.data),
        "split": split_card(manifest),
        "seed_paper": SEED_PAPER,
        "input_convention": {
            "wavelength_angstrom": CU_KA_ANGSTROM,
            "two_theta_deg": {"min": float(MODEL_GRID_DEG[0]), "max": float(MODEL_GRID_DEG[-1]), "n_points": N_POINTS},
            "intensity": "min-max normalised to [0, 1] on the model grid (matserve.codecs.xrd.encode_pattern)",
        },
        "labels": class_names,
        "phases": [
            {"label": p.name, "space_group": p.space_group, "prototypes": [q.name for q in p.prototypes]}
            for p in KNOWN_PHASES
        ],
    }
    pattern_input = [{"name": "pattern", "dtype": "float32", "shape": [-1, N_POINTS],
                      "unit": "intensity min-max normalised to [0, 1] on the model grid"}]  # fmt: skip

    if "phase" in args.models:
        model, metrics = train_phase(args, sets, class_names)
        baseline = knn_baseline(sets, len(class_names))
        folder = args.models_dir / PHASE_MODEL / args.version
        folder.mkdir(parents=True, exist_ok=True)
        export_onnx(model, folder / "model.onnx", ["phase_probabilities"])
        expected = model.predict(sets["test"]["x"], batch_size=1024, verbose=0)
        parity = float(
            np.abs(onnx_run(folder / "model.onnx", sets["test"]["x"])["phase_probabilities"] - expected).max()
        )
        print(f"phase ONNX parity: {parity:.2e}", flush=True)
        if parity > PARITY_TOLERANCE:
            raise SystemExit(f"ONNX parity failed: {parity}")
        card = {
            "name": PHASE_MODEL,
            "version": args.version,
            "task": "classification",
            "description": "XRD phase (structure type) classifier: a strided 1D CNN on the 2048-point Cu Kα pattern "
            "(seed 002 setup), trained on simulated fcc/bcc/hcp patterns drawn from the wide ranges.",
            **common,
            "inputs": pattern_input,
            "outputs": [
                {
                    "name": "phase_probabilities",
                    "dtype": "float32",
                    "shape": [-1, len(class_names)],
                    "labels": class_names,
                }
            ],
            "architecture": {
                "conv1d_layers_filters_kernel_stride": [list(layer) for layer in networks.CNN_LAYERS],
                "dense": networks.CNN_DENSE,
                "parameters": int(model.count_params()),
            },
            "metrics": metrics,
            "baselines": {"knn_raw_patterns": baseline},
            "onnx": {"opset": 17, "parity_max_abs_diff_vs_keras": parity, "parity_set": "test split"},
            "serving": {"max_batch_size": 1024},
        }
        write_card(folder, card)
        print(f"wrote {folder}", flush=True)

    if "novelty" in args.models:
        baselines = {}
        if args.reference_vae_epochs:
            seed_encoder, seed_decoder, seed_log = train_vae(
                args, sets, networks.SEED_VAE_WIDTHS, networks.SEED_VAE_LATENT, args.reference_vae_epochs
            )
            seed_metrics, _, _ = novelty_metrics(
                networks.novelty_graph(seed_encoder, seed_decoder), sets, class_names, novel_names,
                args.novelty_percentile,
            )  # fmt: skip
            baselines["seed_vae_2d_latent"] = {"architecture": seed_log, "metrics": seed_metrics}
        encoder, decoder, log = train_vae(args, sets, networks.VAE_WIDTHS, networks.VAE_LATENT, args.vae_epochs)
        detector, detector_log = train_outlier_detector(args, sets) if args.outlier_epochs else (None, None)
        graph = networks.novelty_graph(encoder, decoder, detector)
        metrics, calibration, reference = novelty_metrics(
            graph, sets, class_names, novel_names, args.novelty_percentile
        )
        folder = args.models_dir / NOVELTY_MODEL / args.version
        folder.mkdir(parents=True, exist_ok=True)
        outputs = ["latent_mean", "reconstruction", "reconstruction_error"]
        if detector is not None:
            outputs.append("outlier_probability")
        export_onnx(graph, folder / "model.onnx", outputs)
        expected = graph.predict(sets["test"]["x"], batch_size=1024, verbose=0)
        got = onnx_run(folder / "model.onnx", sets["test"]["x"])
        parity = max(float(np.abs(got[k] - np.asarray(expected[k])).max()) for k in outputs)
        print(f"novelty ONNX parity: {parity:.2e}", flush=True)
        if parity > PARITY_TOLERANCE:
            raise SystemExit(f"ONNX parity failed: {parity}")
        np.savez(folder / "latent_reference.npz", **reference)
        card = {
            "name": NOVELTY_MODEL,
            "version": args.version,
            "task": "novelty_detection",
            "description": "XRD novelty scorer: a VAE of the seed 002 family (dense encoder, mirrored decoder, "
            "BCE x 2048 + KL) with 512-256 layers and a 16-d latent, trained on simulated known phases; "
            "reconstruction error calibrated against validation patterns.",
            **common,
            "inputs": pattern_input,
            "outputs": [
                {"name": "latent_mean", "dtype": "float32", "shape": [-1, networks.VAE_LATENT]},
                {"name": "reconstruction", "dtype": "float32", "shape": [-1, N_POINTS]},
                {"name": "reconstruction_error", "dtype": "float32", "shape": [-1], "unit": "mean squared error"},
            ]
            + ([{"name": "outlier_probability", "dtype": "float32", "shape": [-1]}] if detector is not None else []),
            "architecture": {"vae": log, "outlier_detector": detector_log},
            "calibration": calibration,
            "metrics": metrics,
            "baselines": baselines,
            "onnx": {"opset": 17, "parity_max_abs_diff_vs_keras": parity, "parity_set": "test split"},
            "serving": {"max_batch_size": 1024},
        }
        write_card(folder, card)
        print(f"wrote {folder}", flush=True)


if __name__ == "__main__":
    main()
