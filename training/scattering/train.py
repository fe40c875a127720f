"""Train, evaluate and export the scattering sorter (issue 6, seeds 003 and 000).

Run from the repository root (offline, never by CI)::

    python -m training.scattering.simulate          # ~20 min on 2 cores: runs/data_seed0
    python -m training.scattering.train --version 1.1.0
    # 1.2.0: the same network with the setup input, started from 1.1.0's weights (~30 min)
    python -m training.scattering.train --version 1.2.0 --with-setup \
        --init-from training/scattering/runs/train_1.1.0/sorter.weights.h5 --epochs 5 --learning-rate 5e-4 \
        --lenet-epochs 0 --baselines-from models/scattering_sorter/1.1.0/card.json
    # 1.3.0 goes on from 1.2.0's ONNX graph (--init-from-onnx); all stages' commands: training/scattering/README.md

1. Load the simulated splits (``training.scattering.simulate``): ``train`` and ``val`` simulated on binned
   detectors; ``test`` (same scene distribution), ``test_unseen_detectors`` (detectors never used in training:
   Pilatus 200k/300kw/6M, Eiger2 1M/4M) and ``test_harsh`` (5-20x fewer counts, more hot pixels and dark
   current) simulated at the detectors' full resolution, as real files come.
2. Train the served CNN (``networks.sorter_cnn``) and the seed's LeNet (``networks.lenet``) with the same data,
   loss and budget: cross-entropy on technique and geometry, binary cross-entropy on the features; Adam;
   the best validation epoch is kept. Baseline on the same splits: the seed's histogram features (HF) with a
   random forest (seed 003 table III: 97.5 % on real data).
3. Report per split: technique accuracy, Cohen's kappa, MCC, per-class recall and precision, confusion matrix;
   geometry accuracy; per-feature precision, recall, F1 and AUROC. With ``--with-setup`` every split is
   scored twice: with the scene's setup (``metrics``) and with it withheld (``metrics_without_setup``, as for
   a file without distance, wavelength or pixel size).
4. Export both networks to ONNX (opset 17), check ONNX Runtime against Keras, write
   ``models/scattering_sorter/<version>`` (the served CNN) with its card; the LeNet's ONNX and metrics stay in
   ``runs/`` and in the card's ``baselines``.
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
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import (
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

from matserve.codecs.scattering import INPUT_SIDE_PX, N_CHANNELS, SETUP_FEATURES
from matserve.registry import write_card
from training.formation_enthalpy.train import git_commit
from training.scattering import networks
from training.scattering.labels import FEATURES, GEOMETRIES, TECHNIQUES
from training.scattering.simulate import (
    RUNS,
    SIMULATOR_VERSION,
    SPLIT_IDS,
    TRAIN_DETECTORS,
    UNSEEN_DETECTORS,
    as_codec_images,
    load_split,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "scattering_sorter"
EVAL_SPLITS = ("test", "test_unseen_detectors", "test_harsh")
PARITY_TOLERANCE = 1e-4
SEED_PAPER = {
    "source": "seed 003 (camSortXS), real ALS images 256 x 256, 4 techniques",
    "lenet_rf_accuracy": 0.9910,
    "lenet_rf_kappa": 0.9840,
    "lenet_rf_mcc": 0.9841,
    "histogram_features_rf_accuracy": 0.9751,
}


def targets(split: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        networks.OUTPUTS[0]: split["technique"].astype(np.int32),
        networks.OUTPUTS[1]: split["geometry"].astype(np.int32),
        networks.OUTPUTS[2]: split["features"].astype(np.float32),
    }


def training_model(network: keras.Model) -> keras.Model:
    """The network without the CAM output (not trained), compiled with the three losses."""
    heads = keras.Model(network.input, [network.get_layer(name).output for name in networks.OUTPUTS])
    heads.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={
            networks.OUTPUTS[0]: "sparse_categorical_crossentropy",
            networks.OUTPUTS[1]: "sparse_categorical_crossentropy",
            networks.OUTPUTS[2]: "binary_crossentropy",
        },
        loss_weights={networks.OUTPUTS[0]: 1.0, networks.OUTPUTS[1]: 0.5, networks.OUTPUTS[2]: 1.0},
    )
    return heads


def augment(images: tf.Tensor) -> tf.Tensor:
    """Random 90-degree rotations and flips (detectors are mounted and files written in all 8 ways) of a batch
    of stored uint8 images (``load_split(..., keep_uint8=True)``), as the codec's float32."""
    images = tf.cast(images, tf.float32) / 255.0
    k = tf.random.uniform((), 0, 4, dtype=tf.int32)
    images = tf.image.rot90(images, k)
    return tf.cond(tf.random.uniform(()) < 0.5, lambda: tf.image.flip_left_right(images), lambda: images)


def uses_setup(network: keras.Model) -> bool:
    """Whether the network takes the ``setup`` input (``networks.sorter_cnn(with_setup=True)``)."""
    return len(network.inputs) > 1


def network_inputs(network: keras.Model, split: dict, with_setup: bool = True) -> np.ndarray | dict:
    """The network's input for a split: the images, and the setup (zeros when ``with_setup`` is False)."""
    if not uses_setup(network):
        return split["images"]
    setup = split["setup"] if with_setup else np.zeros_like(split["setup"])
    return {"images": split["images"], "setup": setup}


def augment_and_withhold_setup(inputs: dict, rate: float) -> dict:
    """:func:`augment` the images; zero each image's setup with probability ``rate`` (as for files without it)."""
    keep = tf.cast(tf.random.uniform((tf.shape(inputs["setup"])[0], 1)) >= rate, tf.float32)
    return {"images": augment(inputs["images"]), "setup": inputs["setup"] * keep}


def fit(
    network: keras.Model,
    sets: dict,
    epochs: int,
    batch_size: int,
    seed: int,
    minutes: float,
    learning_rate: float = 1e-3,
    setup_dropout: float = 0.0,
) -> dict:
    """Train; keep the best validation-loss epoch; returns the history.

    The validation loss of a network with the setup input is taken with every image's setup known.
    """
    keras.utils.set_random_seed(seed)
    model = training_model(network)
    train = sets["train"]
    inputs = network_inputs(network, train)
    dataset = (
        tf.data.Dataset.from_tensor_slices((inputs, targets(train)))
        .shuffle(len(train["images"]), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
    )
    if uses_setup(network):
        dataset = dataset.map(lambda x, y: (augment_and_withhold_setup(x, setup_dropout), y), num_parallel_calls=2)
    else:
        dataset = dataset.map(lambda x, y: (augment(x), y), num_parallel_calls=2)
    dataset = dataset.prefetch(2)
    val = (network_inputs(network, sets["val"]), targets(sets["val"]))
    best = {"loss": np.inf, "epoch": -1, "weights": None}
    history = []
    started = time.perf_counter()
    steps = epochs * int(np.ceil(len(train["images"]) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    model.optimizer.learning_rate = schedule
    for epoch in range(epochs):
        log = model.fit(dataset, epochs=1, verbose=0).history
        val_loss = model.evaluate(*val, batch_size=256, verbose=0, return_dict=True)["loss"]
        accuracy = float(
            (model.predict(val[0], batch_size=256, verbose=0)[0].argmax(1) == val[1][networks.OUTPUTS[0]]).mean()
        )
        entry = {
            "epoch": epoch + 1,
            "loss": float(log["loss"][-1]),
            "val_loss": float(val_loss),
            "val_technique_accuracy": accuracy,
            "minutes": round((time.perf_counter() - started) / 60, 2),
        }
        history.append(entry)
        print(json.dumps({"network": network.name, **entry}), flush=True)
        if val_loss < best["loss"]:
            best = {"loss": val_loss, "epoch": epoch + 1, "weights": network.get_weights()}
        if (time.perf_counter() - started) / 60 > minutes:
            break
    network.set_weights(best["weights"])
    return {
        "epochs": history,
        "best_epoch": best["epoch"],
        "batch_size": batch_size,
        "seed": seed,
        "optimizer": f"Adam, cosine decay from {learning_rate:g}",
        "augmentation": "random 90-degree rotations and flips"
        + (f"; setup withheld (zeros) for {setup_dropout:.0%} of the images" if uses_setup(network) else ""),
    }


def calibrate_feature_thresholds(scores: np.ndarray, truth: np.ndarray) -> list[float]:
    """Per feature, the probability threshold (0.05-0.95 in steps of 0.05) with the best F1 on these images.

    Run on the validation split; the test splits then measure the calibrated thresholds out of sample.
    """
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    thresholds = []
    for j in range(truth.shape[1]):
        f1 = [f1_score(truth[:, j].astype(bool), scores[:, j] >= t, zero_division=0.0) for t in grid]
        thresholds.append(float(grid[int(np.argmax(f1))]))
    return thresholds


#: Accuracy the ``technique_confident`` flag aims at on validation (see :func:`calibrate_confidence_threshold`).
CONFIDENT_TARGET_ACCURACY = 0.995


def calibrate_confidence_threshold(
    technique: np.ndarray, truth: np.ndarray, target: float = CONFIDENT_TARGET_ACCURACY
) -> float:
    """The smallest top technique probability (0.50-0.99 in steps of 0.01) at or above which the technique is
    right at least ``target`` of the time on these images (0.99 if none reaches it).

    Run on the validation split; the test splits then measure the flag's coverage and accuracy out of sample.
    """
    confidence, right = technique.max(1), technique.argmax(1) == truth
    for threshold in np.round(np.arange(0.50, 0.991, 0.01), 2):
        kept = confidence >= threshold
        if kept.any() and right[kept].mean() >= target:
            return float(threshold)
    return 0.99


def classification_metrics(
    technique: np.ndarray,
    probabilities: dict[str, np.ndarray],
    split: dict,
    thresholds: list[float] | None = None,
    confidence_threshold: float | None = None,
) -> dict:
    """Technique accuracy, kappa, MCC, recall/precision per class, confusion; geometry; features (a feature is
    called present at or above its threshold, 0.5 unless ``thresholds`` gives one per feature). With
    ``confidence_threshold``: ``technique.confident``, the share of images whose top technique probability is
    at least it (``coverage``) and the accuracy on those."""
    thresholds = thresholds or [0.5] * len(FEATURES)
    y_true, y_pred = split["technique"].astype(int), technique.argmax(1)
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(TECHNIQUES))))
    recall = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    precision = matrix.diagonal() / np.maximum(matrix.sum(axis=0), 1)
    out = {
        "n": len(y_true),
        "technique": {
            "accuracy": float((y_true == y_pred).mean()),
            "cohen_kappa": float(cohen_kappa_score(y_true, y_pred)),
            "mcc": float(matthews_corrcoef(y_true, y_pred)),
            "recall": dict(zip(TECHNIQUES, np.round(recall, 4).tolist(), strict=True)),
            "precision": dict(zip(TECHNIQUES, np.round(precision, 4).tolist(), strict=True)),
            "confusion_matrix": {"rows_true_cols_predicted": list(TECHNIQUES), "counts": matrix.tolist()},
        },
    }
    if confidence_threshold is not None:
        kept = technique.max(1) >= confidence_threshold
        out["technique"]["confident"] = {
            "threshold": confidence_threshold,
            "coverage": round(float(kept.mean()), 4),
            "accuracy": round(float((y_true == y_pred)[kept].mean()), 4) if kept.any() else None,
        }
    if "geometry" in probabilities:
        g_pred = probabilities["geometry"].argmax(1)
        out["geometry"] = {"accuracy": float((g_pred == split["geometry"]).mean())}
    if "features" in probabilities:
        features = {}
        for j, name in enumerate(FEATURES):
            truth = split["features"][:, j].astype(bool)
            score = probabilities["features"][:, j]
            p, r, f1, _ = precision_recall_fscore_support(
                truth, score >= thresholds[j], average="binary", zero_division=0.0
            )
            features[name] = {
                "prevalence": float(truth.mean()),
                "threshold": thresholds[j],
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "f1": round(float(f1), 4),
                "auroc": round(float(roc_auc_score(truth, score)), 4) if 0 < truth.sum() < len(truth) else None,
            }
        out["features"] = features
        out["features_exact_match"] = float(
            ((probabilities["features"] >= np.array(thresholds)) == split["features"].astype(bool)).all(1).mean()
        )
    return out


def predict_splits(network: keras.Model, sets: dict, with_setup: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """The three heads' probabilities on the validation and held-out splits (one pass each)."""
    predictions = {}
    for name in ("val", *EVAL_SPLITS):
        inputs = network_inputs(network, sets[name], with_setup)
        technique, geometry, features = network.predict(inputs, batch_size=256, verbose=0)[:3]
        predictions[name] = {"technique": technique, "geometry": geometry, "features": features}
    return predictions


def network_metrics(
    predictions: dict, sets: dict, thresholds: list[float] | None = None, confidence_threshold: float | None = None
) -> dict:
    """:func:`classification_metrics` of every split's predictions."""
    return {
        name: classification_metrics(heads["technique"], heads, sets[name], thresholds, confidence_threshold)
        for name, heads in predictions.items()
    }


def histogram_features(images: np.ndarray) -> np.ndarray:
    """The seed's histogram features of the codec image (mean, entropy, energy, variance, skewness, kurtosis,
    roughness) plus a 32-bin histogram of the valid pixels' normalised log intensity."""
    rows = []
    for image in images:
        image = as_codec_images(image)
        values = image[..., 0][image[..., 1] >= 0.5]
        hist = np.histogram(values, bins=32, range=(0, 1))[0].astype(np.float64)
        p = hist / max(hist.sum(), 1)
        mean, var = values.mean(), values.var()
        std = np.sqrt(var) + 1e-9
        skew = ((values - mean) ** 3).mean() / std**3
        kurt = ((values - mean) ** 4).mean() / std**4
        entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
        rows.append([mean, entropy, (p**2).sum(), var, skew, kurt, 1 - 1 / (1 + var), *p])
    return np.asarray(rows, dtype=np.float32)


def histogram_baseline(sets: dict, seed: int) -> dict:
    forest = RandomForestClassifier(n_estimators=300, n_jobs=2, random_state=seed)
    forest.fit(histogram_features(sets["train"]["images"]), sets["train"]["technique"])
    out = {"method": "seed 003 histogram features + random forest (300 trees)"}
    for name in ("val", *EVAL_SPLITS):
        probabilities = forest.predict_proba(histogram_features(sets[name]["images"]))
        out[name] = classification_metrics(probabilities, {}, sets[name])
    return out


def export_onnx(network: keras.Model, path: Path) -> list[str]:
    """tf2onnx (opset 17), dynamic batch, inputs ``images`` (and ``setup``); outputs named as the network's."""
    import onnx
    import tf2onnx

    names = [*networks.OUTPUTS, networks.CAM_OUTPUT][: len(network.outputs)]
    signature = [tf.TensorSpec((None, INPUT_SIDE_PX, INPUT_SIDE_PX, N_CHANNELS), tf.float32, name="images")]
    if uses_setup(network):
        signature.append(tf.TensorSpec((None, SETUP_FEATURES), tf.float32, name="setup"))
        function = tf.function(lambda images, setup: network([images, setup], training=False),
                               input_signature=signature)  # fmt: skip
    else:
        function = tf.function(lambda images: network(images, training=False), input_signature=signature)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=17)
    rename = {output.name: name for output, name in zip(proto.graph.output, names, strict=True)}
    for node in proto.graph.node:
        node.output[:] = [rename.get(o, o) for o in node.output]
    for output in proto.graph.output:
        output.name = rename[output.name]
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())
    return names


def onnx_parity(network: keras.Model, path: Path, split: dict) -> float:
    """Largest difference of any output, ONNX Runtime vs Keras, on the first 256 images of ``split``, in units of
    the output's scale (its largest magnitude, at least 1): absolute for the probabilities, relative for the
    Grad-CAM maps, whose values reach tens, where float32 rounding alone is ~1e-5."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = network_inputs(network, {k: v[:256] for k, v in split.items()})
    got = session.run(None, inputs if isinstance(inputs, dict) else {"images": inputs})
    expected = network.predict(inputs, batch_size=256, verbose=0)
    return max(
        float(np.abs(g - e).max()) / max(1.0, float(np.abs(e).max())) for g, e in zip(got, expected, strict=True)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--data", type=Path, default=RUNS / "data_seed0")
    parser.add_argument("--seed", type=int, default=42)
    # Defaults: the 1.1.0 run (10 epochs of the served CNN, ~50 min; 1 LeNet epoch, ~20 min, on 2 CPU cores).
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the served network (cosine schedule)")
    parser.add_argument("--minutes", type=float, default=55.0, help="wall-clock budget of the served network")
    parser.add_argument("--lenet-minutes", type=float, default=10.0, help="wall-clock budget of the LeNet")
    parser.add_argument("--lenet-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-limit", type=int, default=0, help="use only the first N training images (tests)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="start of the cosine schedule")
    parser.add_argument("--with-setup", action="store_true", help="the served network also takes the setup input")
    parser.add_argument("--setup-dropout", type=float, default=0.3, help="share of training images without setup")
    parser.add_argument("--init-from", type=Path, help="start from a setup-less sorter's weights (.weights.h5)")
    parser.add_argument(
        "--init-from-onnx",
        type=Path,
        help="go on training from a served version's model.onnx (networks.load_from_onnx: the folded batch "
        "normalisations are undone exactly); that version's card history goes into the card as the previous stage",
    )
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="do not train: evaluate, export and write the card of the run already in runs/train_<version> (its "
        "sorter.weights.h5 and served_metrics.json history), with the same other options as that run",
    )
    parser.add_argument(
        "--resume-from",
        type=Path,
        help="go on training a network of the same kind from its weights (a run folder's sorter.weights.h5; that "
        "folder's served_metrics.json history goes into the card as the previous stage)",
    )
    parser.add_argument(
        "--baselines-from", type=Path, help="with --lenet-epochs 0: copy the LeNet baseline from this card"
    )
    args = parser.parse_args(argv)

    manifest = json.loads((args.data / "manifest.json").read_text())
    sets = {name: load_split(args.data, name) for name in ("val", *EVAL_SPLITS)}
    sets["train"] = load_split(args.data, "train", keep_uint8=True)  # cast batch by batch in fit
    if args.train_limit:
        sets["train"] = {k: v[: args.train_limit] for k, v in sets["train"].items()}
    work = RUNS / f"train_{args.version}"
    work.mkdir(parents=True, exist_ok=True)

    baseline = histogram_baseline(sets, args.seed)
    print(json.dumps({"histogram_rf_test_accuracy": baseline["test"]["technique"]["accuracy"]}), flush=True)

    network = networks.sorter_cnn(with_setup=args.with_setup)
    if args.init_from:
        networks.load_trunk(network, str(args.init_from))
    previous_stage = None
    if args.init_from_onnx:
        sample = {k: v[:1024] for k, v in sets["train"].items()}
        images = as_codec_images(sample["images"])
        networks.load_from_onnx(network, str(args.init_from_onnx), images, sample.get("setup"))
        card_path = args.init_from_onnx.parent / "card.json"
        previous_stage = json.loads(card_path.read_text())["training"] if card_path.exists() else None
    if args.resume_from:
        network.load_weights(str(args.resume_from))
        previous = args.resume_from.parent / "served_metrics.json"
        previous_stage = json.loads(previous.read_text())["training"] if previous.exists() else None
    if args.export_only:
        network.load_weights(str(work / "sorter.weights.h5"))
        history = json.loads((work / "served_metrics.json").read_text())["training"]
    else:
        history = fit(network, sets, args.epochs, args.batch_size, args.seed, args.minutes, args.learning_rate,
                      args.setup_dropout)  # fmt: skip
        network.save_weights(str(work / "sorter.weights.h5"))
    predictions = predict_splits(network, sets)
    feature_thresholds = calibrate_feature_thresholds(predictions["val"]["features"], sets["val"]["features"])
    confidence_thresholds = {
        "setup_known": calibrate_confidence_threshold(predictions["val"]["technique"], sets["val"]["technique"])
    }
    metrics = network_metrics(predictions, sets, feature_thresholds, confidence_thresholds["setup_known"])
    metrics_without_setup = None
    if args.with_setup:
        without = predict_splits(network, sets, with_setup=False)
        confidence_thresholds["setup_unknown"] = calibrate_confidence_threshold(
            without["val"]["technique"], sets["val"]["technique"]
        )
        metrics_without_setup = network_metrics(
            without, sets, feature_thresholds, confidence_thresholds["setup_unknown"]
        )
    (work / "served_metrics.json").write_text(
        json.dumps({"training": history, "metrics": metrics, "metrics_without_setup": metrics_without_setup}, indent=1)
    )

    if args.lenet_epochs:
        lenet = networks.lenet()
        lenet_history = fit(lenet, sets, args.lenet_epochs, args.batch_size, args.seed, args.lenet_minutes)
        lenet_metrics = network_metrics(predict_splits(lenet, sets), sets)
        export_onnx(lenet, work / "lenet.onnx")
        lenet_parity = onnx_parity(lenet, work / "lenet.onnx", sets["test"])
        seed_lenet = {
            "architecture": {
                "filters": list(networks.LENET_FILTERS),
                "dense": list(networks.LENET_DENSE),
                "parameters": int(lenet.count_params()),
            },
            "training": lenet_history,
            "metrics": lenet_metrics,
            "onnx_parity": lenet_parity,
        }
    elif args.baselines_from:
        seed_lenet = {
            **json.loads(args.baselines_from.read_text())["baselines"]["seed_lenet"],
            "source": f"{args.baselines_from}: copied, not re-run; trained and scored on the splits of the version "
            "it comes from (identical images up to simulator 1.3; from 1.4 on the splits differ, so it is a reference, "
            "not a comparison on the same images)",
        }
        lenet_metrics, lenet_parity = seed_lenet["metrics"], 0.0
    else:
        raise SystemExit("--lenet-epochs 0 needs --baselines-from (a card whose LeNet baseline to report)")

    folder = args.models_dir / MODEL / args.version
    folder.mkdir(parents=True, exist_ok=True)
    names = export_onnx(network, folder / "model.onnx")
    parity = onnx_parity(network, folder / "model.onnx", sets["test"])
    print(f"ONNX parity: served {parity:.2e}, LeNet {lenet_parity:.2e}", flush=True)
    if max(parity, lenet_parity) > PARITY_TOLERANCE:
        raise SystemExit(f"ONNX parity failed: {parity}, {lenet_parity}")
    card = {
        "name": MODEL,
        "version": args.version,
        "task": "classification (technique, geometry) + multi-label features",
        "description": "Scattering sorter: a strided CNN with global average pooling and linear heads (technique, "
        "geometry, features) on the codec's 128 x 128 masked log image, with in-graph Grad-CAM; trained on "
        "simulated detector images (training.scattering.simulate). The seed's LeNet was trained on the same "
        "data and is reported under baselines.",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_commit": git_commit(),
        "data": {
            "source": "simulated with training.scattering.simulate (pyFAI detector masks, pymatgen reflections via "
            "the XRD cache, analytic SAXS/GISAXS models); no downloaded data",
            "command": "python -m training.scattering.simulate",
            "simulator_version": SIMULATOR_VERSION,
            "folder": args.data.name,
            "fingerprint_sha256": {name: meta["sha256"] for name, meta in manifest.items()},
            "train_detectors": TRAIN_DETECTORS,
            "unseen_detectors": UNSEEN_DETECTORS,
        },
        "split": {
            "method": "independent seeded simulations per split (SeedSequence([seed, split id, index])); "
            "continuous scene parameters, so no image is shared between splits",
            "split_ids": SPLIT_IDS,
            "sizes": {name: meta["n"] for name, meta in manifest.items()},
            "train_limit": args.train_limit or None,
            "resolution": "train/val simulated on binned detectors (long side <= 400 px); test splits at full "
            "detector resolution",
        },
        "inputs": [
            {
                "name": "images",
                "dtype": "float32",
                "shape": [-1, INPUT_SIDE_PX, INPUT_SIDE_PX, N_CHANNELS],
                "unit": "matserve.codecs.scattering.encode_image: normalised log intensity, valid fraction",
            },
            *(
                [
                    {
                        "name": "setup",
                        "dtype": "float32",
                        "shape": [-1, SETUP_FEATURES],
                        "unit": "matserve.codecs.scattering.setup_features: log10 q span (1/Angstrom), known flag; "
                        "zeros when unknown",
                    }
                ]
                if args.with_setup
                else []
            ),
        ],
        "outputs": [
            {"name": names[0], "dtype": "float32", "shape": [-1, len(TECHNIQUES)], "labels": list(TECHNIQUES)},
            {"name": names[1], "dtype": "float32", "shape": [-1, len(GEOMETRIES)], "labels": list(GEOMETRIES)},
            {"name": names[2], "dtype": "float32", "shape": [-1, len(FEATURES)], "labels": list(FEATURES)},
            {
                "name": names[3],
                "dtype": "float32",
                "shape": [-1, 16, 16, len(TECHNIQUES) + len(GEOMETRIES) + len(FEATURES)],
                "unit": "Grad-CAM before ReLU, label order technique + geometry + features",
            },
        ],
        "labels": {"technique": list(TECHNIQUES), "geometry": list(GEOMETRIES), "features": list(FEATURES)},
        "feature_threshold": 0.5,
        "feature_thresholds": dict(zip(FEATURES, feature_thresholds, strict=True)),
        "feature_thresholds_method": "per feature, the threshold of best F1 on the validation split (grid 0.05-0.95); "
        "the test metrics use them out of sample; the LeNet baseline is scored at 0.5",
        "technique_confidence_thresholds": confidence_thresholds,
        "technique_confidence_method": "technique_confident is true when the top technique probability is at least "
        f"the threshold: the smallest (grid 0.50-0.99) whose images were right >= {CONFIDENT_TARGET_ACCURACY:.1%} "
        "of the time on the validation split, with the setup given (setup_known) and withheld (setup_unknown); "
        "each split's technique.confident gives its coverage and accuracy out of sample",
        "architecture": {
            "stem": networks.SORTER_STEM,
            "conv3x3_filters_stride_dilation": [list(x) for x in networks.SORTER_LAYERS],
            "parameters": int(network.count_params()),
            "setup_units": networks.SETUP_UNITS if args.with_setup else None,
        },
        "training": {
            **history,
            "init_from": str(args.init_from) if args.init_from else None,
            "init_from_onnx": str(args.init_from_onnx) if args.init_from_onnx else None,
            "resumed_from": str(args.resume_from) if args.resume_from else None,
            "previous_stage": previous_stage,
        },
        "metrics": metrics,
        **({"metrics_without_setup": metrics_without_setup} if args.with_setup else {}),
        "baselines": {"seed_lenet": seed_lenet, "histogram_features_random_forest": baseline},
        "seed_paper": SEED_PAPER,
        "onnx": {
            "opset": 17,
            "parity_max_diff_vs_keras": parity,
            "parity_measure": "largest |ONNX Runtime - Keras| of any output over its largest magnitude (at least 1): "
            "absolute for the probabilities, relative for the Grad-CAM maps",
            "parity_set": "first 256 test images",
        },
        "serving": {"max_batch_size": 256},
    }
    write_card(folder, card)
    (work / "metrics.json").write_text(
        json.dumps({"served": metrics, "lenet": lenet_metrics, "histogram_rf": baseline}, indent=1)
    )
    print(f"wrote {folder}", flush=True)


if __name__ == "__main__":
    main()
