"""Train, evaluate and export the formation enthalpy predictor; write a registry version.

One command (see README)::

    python -m training.formation_enthalpy.baselines          # RF-Comp / RF-Phys, cached features
    python -m training.formation_enthalpy.train --version 1.0.0

Stages
------
1. Load and clean the OQMD data; seeded 80/10/10 split over unique compositions.
2. The seed's ElemNet (Table 3.1) as the reference, evaluated on the test split.
3. The served model: an ensemble of IRNet-style residual networks (different seeds);
   its mean is the prediction and the members' standard deviation the uncertainty.
4. The seed's chemical-system hold-outs (Ti-O, Na-Fe-Mn-O) for the served architecture.
5. Export the ensemble with tf2onnx, check ONNX Runtime against Keras on the test split
   (max abs diff <= 1e-4), and write ``models/formation_enthalpy/<version>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from matserve.codecs.formation_enthalpy import ELEMENTS
from matserve.registry import write_card
from training.formation_enthalpy import networks
from training.formation_enthalpy.data import (
    DEFAULT_DATA,
    HOLDOUT_SYSTEMS,
    REPO_ROOT,
    holdout_mask,
    load_clean,
    split_indices,
)
from training.formation_enthalpy.evaluation import regression_metrics

RUNS = Path(__file__).resolve().parent / "runs"
MODEL_NAME = "formation_enthalpy"
PARITY_TOLERANCE = 1e-4
SEED_PAPER_NUMBERS = {
    "source": "seed 004 (Jha, dissertation), chapter 3: 10-fold CV on 256,622 OQMD compositions (230,960 train)",
    "elemnet_mae_ev_per_atom": 0.050,
    "rf_phys_mae_ev_per_atom": 0.071,
    "rf_comp_mae_ev_per_atom": 0.157,
    "elemnet_holdout_Ti-O_mae_ev_per_atom": 0.138,
    "elemnet_holdout_Na-Fe-Mn-O_mae_ev_per_atom": 0.122,
    "n_train": 230960,
}


def fit(
    model: keras.Model,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    epochs: int,
    learning_rate: float,
    batch_size: int,
    jit_compile: bool,
    cosine: bool,
) -> dict:
    """Train with MAE loss and Adam, keeping the weights of the best validation epoch."""
    x_train, y_train, x_val, y_val = data
    steps = max(1, int(np.ceil(len(x_train) / batch_size))) * epochs
    rate = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.01) if cosine else learning_rate
    model.compile(optimizer=keras.optimizers.Adam(rate), loss="mae", jit_compile=jit_compile)
    started = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=2,
        callbacks=[keras.callbacks.EarlyStopping("val_loss", patience=max(3, epochs // 4), restore_best_weights=True)],
    )
    return {
        "epochs_run": len(history.history["loss"]),
        "best_val_mae_ev_per_atom": float(min(history.history["val_loss"])),
        "seconds": time.perf_counter() - started,
    }


def train_ensemble(
    x,
    y,
    train,
    val,
    members: int,
    epochs: int,
    seed: int,
    tag: str,
    runs_dir: Path = RUNS,
    jit: bool = True,
    physics: bool = True,
) -> tuple[list, list[dict]]:
    """Train ``members`` IRNet networks with different seeds (cached in runs/ by tag)."""
    models, logs = [], []
    for k in range(members):
        path = runs_dir / f"{tag}_irnet_{k}.keras"
        if path.exists():
            models.append(keras.models.load_model(path))
            logs.append(json.loads(path.with_suffix(".json").read_text()))
            continue
        keras.utils.set_random_seed(seed + k)
        model = networks.irnet(seed=seed + k, name=f"irnet_member{k}", physics=physics)
        log = fit(model, (x[train], y[train], x[val], y[val]), epochs, 1e-3, 256, jit_compile=jit, cosine=True)
        print(f"[{tag}] irnet member {k}: {log}", flush=True)
        model.save(path)
        path.with_suffix(".json").write_text(json.dumps(log))
        models.append(model)
        logs.append(log)
    return models, logs


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Batch prediction; for the ensemble graph returns (mean, std)."""
    return model.predict(x, batch_size=4096, verbose=0)


def export_onnx(model: keras.Model, path: Path) -> None:
    """Convert with tf2onnx (opset 17), a dynamic batch axis, input name ``element_fractions``."""
    import tf2onnx

    signature = [tf.TensorSpec((None, networks.N_INPUTS), tf.float32, name="element_fractions")]
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=17, output_path=str(path))


def onnx_parity(path: Path, x: np.ndarray, expected: list[np.ndarray]) -> float:
    """Max abs difference between ONNX Runtime and Keras outputs on ``x``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["formation_enthalpy_ev_per_atom", "uncertainty_ev_per_atom"], {"element_fractions": x})
    return float(max(np.max(np.abs(g - e)) for g, e in zip(got, expected, strict=True)))


def git_commit() -> str:
    """The code commit the model was trained from (with ``-dirty`` if the tree has changes)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "training", "serving"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout  # fmt: skip
        return (commit.strip() or "unknown") + ("-dirty" if dirty.strip() else "")
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", required=True, help="registry version to write, e.g. 1.0.0")
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=42, help="split seed (member k uses seed + k)")
    parser.add_argument("--members", type=int, default=4, help="IRNet ensemble members")
    parser.add_argument("--epochs", type=int, default=25, help="epochs per IRNet member")
    parser.add_argument("--reference-epochs", type=int, default=20, help="ElemNet reference epochs (0 = skip)")
    parser.add_argument("--holdout-members", type=int, default=2, help="members for hold-out tests (0 = skip)")
    parser.add_argument("--holdout-epochs", type=int, default=20)
    parser.add_argument("--baselines", type=Path, default=RUNS / "baselines.json")
    parser.add_argument("--max-rows", type=int, default=None, help="use only the first rows (pipeline tests)")
    parser.add_argument("--tag", default="main", help="prefix of cached runs/ files")
    parser.add_argument(
        "--no-physics",
        dest="physics",
        action="store_false",
        help="plain IRNet on fractions only (no in-graph element-property statistics)",
    )
    parser.add_argument(
        "--parity-tolerance",
        type=float,
        default=PARITY_TOLERANCE,
        help="max abs ONNX-vs-Keras difference in eV/atom on the test split",
    )
    parser.add_argument("--no-jit", dest="jit", action="store_false", help="skip XLA (faster for tiny runs)")
    parser.add_argument("--runs-dir", type=Path, default=RUNS, help="where trained networks are cached")
    args = parser.parse_args()
    args.runs_dir.mkdir(parents=True, exist_ok=True)

    data = load_clean(args.data, max_rows=args.max_rows)
    split = split_indices(len(data.targets), args.seed)
    x, y = data.features, data.targets.reshape(-1, 1)
    train, val, test = split["train"], split["validation"], split["test"]
    results: dict = {}

    members, logs = train_ensemble(
        x, y, train, val, args.members, args.epochs, args.seed, args.tag, args.runs_dir, args.jit, args.physics
    )
    served = networks.ensemble(members)
    mean_test, std_test = predict(served, x[test])
    member_metrics = [regression_metrics(y[test], predict(m, x[test]), len(train)) for m in members]
    abs_error = np.abs(mean_test - y[test]).ravel()
    results["served"] = {
        "test": regression_metrics(y[test], mean_test, len(train)),
        "members_test_mae_ev_per_atom": [m["mae_ev_per_atom"] for m in member_metrics],
        "uncertainty": {
            "mean_uncertainty_ev_per_atom": float(std_test.mean()),
            "spearman_uncertainty_vs_abs_error": float(
                np.corrcoef(np.argsort(np.argsort(std_test.ravel())), np.argsort(np.argsort(abs_error)))[0, 1]
            ),
        },
        "training": logs,
    }
    print("served ensemble:", results["served"]["test"], flush=True)

    if args.holdout_members:
        for system in HOLDOUT_SYSTEMS:
            held = holdout_mask(data.formulas, system)
            if not held.any():
                continue
            keep_train = np.setdiff1d(train, np.flatnonzero(held))
            keep_val = np.setdiff1d(val, np.flatnonzero(held))
            tag = f"{args.tag}_holdout_{system}"
            models, _ = train_ensemble(
                x, y, keep_train, keep_val, args.holdout_members, args.holdout_epochs, args.seed, tag, args.runs_dir, args.jit, args.physics
            )  # fmt: skip
            mean_held, _ = predict(networks.ensemble(models), x[held])
            results["served"][f"holdout_{system}"] = {
                **regression_metrics(y[held], mean_held, len(keep_train)),
                "ensemble_members": args.holdout_members,
            }
            print(f"holdout {system}:", results["served"][f"holdout_{system}"], flush=True)

    if args.reference_epochs:
        path = args.runs_dir / f"{args.tag}_elemnet.json"
        if path.exists():
            results["elemnet_reference"] = json.loads(path.read_text())
        else:
            keras.utils.set_random_seed(args.seed)
            reference = networks.elemnet(seed=args.seed)
            # The seed used Adam 1e-4 at batch 32-64; at batch 256 (4x fewer steps, CPU budget) lr scales to 4e-4,
            # with the same cosine decay as the served model (a constant 4e-4 oscillated and early-stopped at epoch 5).
            log = fit(reference, (x[train], y[train], x[val], y[val]), args.reference_epochs, 4e-4, 256, False, True)
            results["elemnet_reference"] = {
                "architecture": "ElemNet, seed Table 3.1 (17 layers, 4.63 M parameters)",
                "training": {
                    **log,
                    "batch_size": 256,
                    "learning_rate": "4e-4 cosine decay",
                    "max_epochs": args.reference_epochs,
                },
                "test": regression_metrics(y[test], predict(reference, x[test]), len(train)),
            }
            path.write_text(json.dumps(results["elemnet_reference"]))
        print("elemnet reference:", results["elemnet_reference"]["test"], flush=True)

    folder = args.models_dir / MODEL_NAME / args.version
    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(served, folder / "model.onnx")
    max_diff = onnx_parity(folder / "model.onnx", x[test], [mean_test, std_test])
    print(f"ONNX parity on {len(test)} test compositions: max abs diff {max_diff:.2e}", flush=True)
    if max_diff > args.parity_tolerance:
        raise SystemExit(f"ONNX parity failed: {max_diff} > {args.parity_tolerance}")

    baselines = {}
    if args.baselines.exists():
        loaded = json.loads(args.baselines.read_text())
        if loaded.get("data_fingerprint") == data.fingerprint and loaded.get("seed") == args.seed:
            baselines = {k: v for k, v in loaded.items() if k.startswith("rf_")}
        else:
            print(f"warning: {args.baselines} is for other data or seed; card gets no baselines", flush=True)
    if "elemnet_reference" in results:
        baselines["elemnet_reference"] = results["elemnet_reference"]

    card = {
        "name": MODEL_NAME,
        "version": args.version,
        "task": "regression",
        "description": "Formation enthalpy from composition: ensemble of IRNet-style residual networks "
        "(ElemNet family, seed 004 chapters 3-4); mean = prediction, member std = uncertainty.",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_commit": git_commit(),
        "inputs": [
            {
                "name": "element_fractions",
                "dtype": "float32",
                "shape": [-1, len(ELEMENTS)],
                "unit": "atomic fraction (rows sum to 1)",
                "labels": list(ELEMENTS),
            }
        ],
        "outputs": [
            {"name": "formation_enthalpy_ev_per_atom", "dtype": "float32", "shape": [-1, 1], "unit": "eV/atom"},
            {
                "name": "uncertainty_ev_per_atom",
                "dtype": "float32",
                "shape": [-1, 1],
                "unit": "eV/atom",
                "meaning": "standard deviation of the ensemble members' predictions",
            },
        ],
        "elements": list(ELEMENTS),
        "architecture": {
            "family": "IRNet-style residual MLP ensemble"
            + (" on fractions + in-graph Magpie element-property statistics" if args.physics else ""),
            "element_properties": list(networks.MAGPIE_PROPERTIES) if args.physics else [],
            "members": len(members),
            "widths": list(networks.IRNET_WIDTHS),
            "parameters_per_member": int(members[0].count_params()),
            "training": "Adam 1e-3 cosine decay, batch 256, MAE loss, best validation epoch kept",
        },
        "data": {
            "source": "OQMD formation enthalpies (CC-BY 4.0) via the CrabNet benchmark collection",
            "file": str(args.data.relative_to(REPO_ROOT)) if args.data.is_relative_to(REPO_ROOT) else str(args.data),
            "fingerprint_sha256": data.fingerprint,
            "fingerprint_of": "cleaned table (reduced formula, eV/atom) as CSV",
            "cleaning": data.report,
        },
        "split": {
            "method": "seeded random split over unique reduced compositions (80/10/10)",
            "seed": args.seed,
            "sizes": {k: len(v) for k, v in split.items()},
        },
        "metrics": results["served"],
        "baselines": baselines,
        "seed_paper": SEED_PAPER_NUMBERS,
        "onnx": {"opset": 17, "parity_max_abs_diff_vs_keras": max_diff, "parity_set": "test split"},
        "serving": {"max_batch_size": 4096},
    }
    write_card(folder, card)
    print(f"wrote {folder}", flush=True)


if __name__ == "__main__":
    main()
