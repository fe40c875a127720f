"""Out-of-distribution signal for the scattering sorter: a feature-space distance computed inside the ONNX graph.

The served CNN averages its last feature maps over the frame (``GlobalAveragePool``, 96 values per image). An image
unlike anything the network learnt from lands far from every class's cloud of training images in that space.
Following Lee et al. (NeurIPS 2018, "A simple unified framework for detecting out-of-distribution samples"), the
clouds are Gaussians with one mean per technique and one shared covariance (Ledoit-Wolf shrinkage), fitted on
simulated *training* images; the distance of an image is

    feature_distance = sqrt(min_k (f - mu_k)^T P (f - mu_k) / C)

with ``P`` the precision matrix and ``C`` the number of features: the root-mean-square number of standard
deviations from the nearest technique's mean (about 1 for typical training images, whatever ``C`` is).

:func:`add_feature_distance` appends these nodes to the exported graph as a new output ``feature_distance``
``(N,)`` float32, so every path that runs the graph (ONNX Runtime in-process, Triton's tensor model) returns it
with the probabilities and nothing else has to ship. The card records the fit (data, sizes) and the distance's
percentiles on the simulated validation split (``feature_distance``); thresholds are set from those and from real
images by :mod:`training.scattering.calibrate_real`.

Run after training (offline, from the repository root)::

    python -m training.scattering.feature_density --version 1.4.0 --data training/scattering/runs/data_seed0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from matserve.registry import CARD_FILE, write_card

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUT = "feature_distance"
POOL_OP = "GlobalAveragePool"
FLATTENING_OPS = ("Squeeze", "Flatten", "Reshape")
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.5, 99.9)


def pooled_features_tensor(model: onnx.ModelProto) -> str:
    """Name of the ``(N, C)`` tensor of globally pooled features (the flattened ``GlobalAveragePool`` output).

    Raises
    ------
    ValueError
        The graph has no single ``GlobalAveragePool`` followed by a flattening node.
    """
    pools = [node for node in model.graph.node if node.op_type == POOL_OP]
    if len(pools) != 1:
        raise ValueError(f"expected one {POOL_OP} node, found {len(pools)}")
    pooled = pools[0].output[0]
    flat = [node for node in model.graph.node if pooled in node.input and node.op_type in FLATTENING_OPS]
    if len(flat) != 1:
        raise ValueError(f"expected one node flattening {pooled}, found {len(flat)}")
    return flat[0].output[0]


def with_pooled_output(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """A copy of ``model`` that also outputs the pooled features (for fitting), and that output's name."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    name = pooled_features_tensor(copy)
    copy.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy, name


def pooled_features(model: onnx.ModelProto, inputs: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    """The pooled features ``(N, C)`` of ``inputs`` (the graph's inputs by name), with ONNX Runtime on CPU."""
    import onnxruntime as ort

    exposed, name = with_pooled_output(model)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    graph_inputs = [i.name for i in session.get_inputs()]
    n = len(next(iter(inputs.values())))
    parts = []
    for start in range(0, n, batch):
        feed = {key: inputs[key][start : start + batch] for key in graph_inputs}
        parts.append(session.run([name], feed)[0])
    return np.concatenate(parts).astype(np.float64)


def fit_class_gaussians(features: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means ``(K, C)`` and the shared precision matrix ``(C, C)`` (Ledoit-Wolf shrunk covariance of
    the class-centred features)."""
    from sklearn.covariance import LedoitWolf

    labels = np.unique(classes)
    means = np.stack([features[classes == k].mean(axis=0) for k in labels])
    centred = features - means[np.searchsorted(labels, classes)]
    precision = LedoitWolf().fit(centred).precision_
    return means, precision


def feature_distance(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """:data:`OUTPUT` in numpy (the graph's nodes compute the same): RMS standard deviations to the nearest mean."""
    deltas = features[:, None, :] - means[None, :, :]
    squared = np.einsum("nkc,cd,nkd->nk", deltas, precision, deltas)
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0) / features.shape[1])


def add_feature_distance(model: onnx.ModelProto, means: np.ndarray, precision: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` with the :data:`OUTPUT` ``(N,)`` float32 output appended (see the module docstring)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    pooled = pooled_features_tensor(copy)
    prefix = "feature_density/"
    n_features = means.shape[1]
    graph.initializer.extend([
        numpy_helper.from_array(means.astype(np.float32)[None], prefix + "means"),  # (1, K, C)
        numpy_helper.from_array(precision.astype(np.float32), prefix + "precision"),  # (C, C)
        numpy_helper.from_array(np.array([1], dtype=np.int64), prefix + "axis1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), prefix + "axis2"),
        numpy_helper.from_array(np.array(1.0 / n_features, dtype=np.float32), prefix + "per_feature"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), prefix + "zero"),
    ])  # fmt: skip
    p = prefix
    graph.node.extend([
        helper.make_node("Unsqueeze", [pooled, p + "axis1"], [p + "f"]),  # (N, 1, C)
        helper.make_node("Sub", [p + "f", p + "means"], [p + "delta"]),  # (N, K, C)
        helper.make_node("MatMul", [p + "delta", p + "precision"], [p + "projected"]),  # (N, K, C)
        helper.make_node("Mul", [p + "projected", p + "delta"], [p + "terms"]),
        helper.make_node("ReduceSum", [p + "terms", p + "axis2"], [p + "squared"], keepdims=0),  # (N, K)
        helper.make_node("ReduceMin", [p + "squared"], [p + "nearest"], axes=[1], keepdims=0),  # (N,)
        helper.make_node("Mul", [p + "nearest", p + "per_feature"], [p + "scaled"]),
        helper.make_node("Max", [p + "scaled", p + "zero"], [p + "clamped"]),
        helper.make_node("Sqrt", [p + "clamped"], [OUTPUT]),
    ])  # fmt: skip
    graph.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["N"]))
    onnx.checker.check_model(copy)
    return copy


def _inputs(model: onnx.ModelProto, split: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [i.name for i in model.graph.input]
    inputs = {"images": split["images"]}
    if "setup" in names:
        inputs["setup"] = split["setup"].astype(np.float32)
    return inputs


def _shown(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def main(argv: list[str] | None = None) -> None:
    from training.scattering.simulate import load_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", required=True)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--data", type=Path, required=True, help="simulated splits (train.npz, val.npz)")
    parser.add_argument("--fit-images", type=int, default=12_000, help="first N training images fitted")
    args = parser.parse_args(argv)

    folder = args.models_dir / "scattering_sorter" / args.version
    card = json.loads((folder / CARD_FILE).read_text())
    model = onnx.load(folder / "model.onnx")
    if any(o.name == OUTPUT for o in model.graph.output):
        raise SystemExit(f"{folder}/model.onnx already has {OUTPUT}")
    train = load_split(args.data, "train")
    keep = slice(0, min(args.fit_images, len(train["technique"])))
    train = {key: value[keep] for key, value in train.items()}
    features = pooled_features(model, _inputs(model, train))
    means, precision = fit_class_gaussians(features, train["technique"])
    augmented = add_feature_distance(model, means, precision)

    val = load_split(args.data, "val")
    val_distance = feature_distance(pooled_features(model, _inputs(model, val)), means, precision)
    import onnxruntime as ort

    session = ort.InferenceSession(augmented.SerializeToString(), providers=["CPUExecutionProvider"])
    graph_distance = session.run([OUTPUT], {k: v[:64] for k, v in _inputs(model, val).items()})[0]
    parity = float(np.max(np.abs(graph_distance - val_distance[:64]) / np.maximum(val_distance[:64], 1e-6)))
    if parity > 1e-3:
        raise SystemExit(f"in-graph feature_distance differs from numpy by {parity:.2e} (relative)")

    outputs: Any = card["outputs"]
    spec = {"name": OUTPUT, "dtype": "float32", "shape": [-1],
            "unit": "RMS standard deviations from the nearest technique's mean in pooled-feature space"}  # fmt: skip
    card["outputs"] = [*outputs, spec] if isinstance(outputs, list) else {**outputs, OUTPUT: spec}
    card["feature_distance"] = {
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "fitted_on": {
            "data": _shown(args.data),
            "split": "train",
            "images": int(features.shape[0]),
            "features": int(features.shape[1]),
            "classes": card["labels"]["technique"],
        },
        "simulated_val_percentiles": {f"p{q:g}": round(float(np.percentile(val_distance, q)), 4) for q in PERCENTILES},
        "graph_parity_relative": parity,
        "command": "python -m training.scattering.feature_density --version "
        + args.version
        + f" --data {_shown(args.data)}",
    }
    onnx.save(augmented, folder / "model.onnx")
    write_card(folder, card)
    print(json.dumps(card["feature_distance"], indent=1))


if __name__ == "__main__":
    main()
