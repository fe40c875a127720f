"""The scattering sorter's out-of-distribution signal: the in-graph ``feature_distance`` equals its numpy
definition, and the served rule (never confident when out of distribution) follows the card."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from matserve.models.scattering_sorter import Labels
from training.scattering.feature_density import (
    OUTPUT,
    add_feature_distance,
    feature_distance,
    fit_class_gaussians,
    pooled_features,
    pooled_features_tensor,
)

N_FEATURES = 6


def _pooling_graph() -> onnx.ModelProto:
    """images (N, C, 4, 4) -> GlobalAveragePool -> Squeeze -> a linear head, like the served CNN's end."""
    weights = helper.make_tensor("w", onnx.TensorProto.FLOAT, [N_FEATURES, 2], np.ones(2 * N_FEATURES).tolist())
    axes = helper.make_tensor("axes", onnx.TensorProto.INT64, [2], [2, 3])
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Squeeze", ["pooled", "axes"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", N_FEATURES, 4, 4])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 2])],
        [weights, axes],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_in_graph_distance_matches_numpy_and_grows_away_from_the_training_cloud() -> None:
    rng = np.random.default_rng(0)
    model = _pooling_graph()
    assert pooled_features_tensor(model) == "flat"
    images = rng.normal(1.0, 0.3, (300, N_FEATURES, 4, 4)).astype(np.float32)
    classes = rng.integers(0, 3, 300)
    images[:, 0] += classes[:, None, None]  # the classes differ in feature 0
    features = pooled_features(model, {"images": images})
    assert features.shape == (300, N_FEATURES)
    means, precision = fit_class_gaussians(features, classes)
    augmented = add_feature_distance(model, means, precision)
    session = ort.InferenceSession(augmented.SerializeToString(), providers=["CPUExecutionProvider"])
    far = images[:20] + 3.0  # shifted far from every class mean
    probe = np.concatenate([images[:20], far])
    logits, distance = session.run(["logits", OUTPUT], {"images": probe})
    assert logits.shape == (40, 2) and distance.shape == (40,)
    expected = feature_distance(pooled_features(model, {"images": probe}), means, precision)
    np.testing.assert_allclose(distance, expected, rtol=1e-4)
    assert np.median(distance[:20]) < 2.0 < distance[20:].min()


def test_pooled_tensor_must_be_unique() -> None:
    model = _pooling_graph()
    model.graph.node.append(helper.make_node("GlobalAveragePool", ["images"], ["pooled2"]))
    with pytest.raises(ValueError, match="one GlobalAveragePool"):
        pooled_features_tensor(model)


def _labels(card_extra: dict) -> Labels:
    card = {
        "labels": {"technique": ["saxs", "waxs"], "geometry": ["transmission", "grazing"], "features": ["rings"]},
        "technique_confidence_thresholds": {"setup_known": 0.6, "setup_unknown": 0.9},
        **card_extra,
    }
    return Labels.from_card(card)


def test_out_of_distribution_is_never_confident() -> None:
    labels = _labels({"feature_distance": {"threshold": 2.0}})
    sure = np.array([0.95, 0.05])
    assert labels.out_of_distribution(1.5) is False and labels.out_of_distribution(2.5) is True
    assert labels.technique_confident(sure, False, labels.out_of_distribution(1.5)) is True
    assert labels.technique_confident(sure, False, labels.out_of_distribution(2.5)) is False
    assert labels.technique_confident(np.array([0.85, 0.15]), False, False) is False
    assert labels.technique_confident(np.array([0.85, 0.15]), True, False) is True


def test_versions_without_the_distance_keep_their_rule() -> None:
    labels = _labels({})
    assert labels.distance_threshold is None and labels.out_of_distribution(5.0) is None
    assert labels.technique_confident(np.array([0.95, 0.05]), False, None) is True
