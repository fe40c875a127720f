"""Evaluation helpers of the EBSD indexer: disorientation (orix, m-3m) and indexing through ONNX Runtime.

The ONNX path here is the served one: :func:`matserve.codecs.ebsd.normalize_patterns`, then the graph.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from matserve.codecs.ebsd import normalize_patterns
from matserve.codecs.orientation import orientations_from_axis_map

TEST_SETS = ("test_clean", "test_noisy", "test_pc_shifted", "test_low_dose")


def disorientation_deg(q_true: np.ndarray, q_pred: np.ndarray) -> np.ndarray:
    """m-3m disorientation angles (degrees) between ``(n, 4)`` orix quaternions, computed by orix."""
    from orix.quaternion import Orientation, symmetry

    truth = Orientation(np.asarray(q_true, dtype=np.float64), symmetry=symmetry.Oh)
    prediction = Orientation(np.asarray(q_pred, dtype=np.float64), symmetry=symmetry.Oh)
    return np.asarray(truth.angle_with(prediction, degrees=True), dtype=np.float64)


def summary(angles_deg: np.ndarray, seconds: float | None = None) -> dict:
    """Mean / median / 95th percentile / fraction above 5 deg of disorientation angles."""
    result = {
        "n": len(angles_deg),
        "mean_disorientation_deg": float(np.mean(angles_deg)),
        "median_disorientation_deg": float(np.median(angles_deg)),
        "p95_disorientation_deg": float(np.percentile(angles_deg, 95)),
        "fraction_above_5_deg": float(np.mean(angles_deg > 5.0)),
    }
    if seconds is not None:
        result["patterns_per_s"] = len(angles_deg) / seconds
    return result


class OnnxIndexer:
    """The served path without HTTP: codec normalisation, the ONNX graph (axis maps), then least squares and
    decoding for each pattern's PC (:func:`matserve.codecs.orientation.orientations_from_axis_map`)."""

    def __init__(self, path: Path, error_deg_per_residual: float | None = None) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.error_deg_per_residual = error_deg_per_residual

    def axis_maps(self, patterns: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """``(n, 15, 15)`` maps of ``(n, 60, 60)`` patterns."""
        parts = [
            self.session.run(["axis_map"], {"patterns": normalize_patterns(patterns[start : start + batch_size])})[0]
            for start in range(0, len(patterns), batch_size)
        ]
        return np.concatenate(parts)

    def index(self, patterns: np.ndarray, pc: np.ndarray) -> dict[str, np.ndarray]:
        """Index ``(n, 60, 60)`` patterns with ``(n, 3)`` PCs: ``quaternion``, ``fit_residual`` and, when
        calibrated, ``expected_error_deg``."""
        quaternion, residual = orientations_from_axis_map(self.axis_maps(patterns), pc)
        result = {"quaternion": quaternion, "fit_residual": residual}
        if self.error_deg_per_residual is not None:
            result["expected_error_deg"] = self.error_deg_per_residual * residual
        return result


def evaluate_cnn(indexer: OnnxIndexer, split: dict[str, np.ndarray], pc: np.ndarray | None = None) -> dict:
    """Index a split (with its true PCs unless ``pc`` overrides them) and summarise the disorientations."""
    pcs = split["pc"] if pc is None else np.broadcast_to(np.asarray(pc, dtype=np.float32), split["pc"].shape)
    started = time.perf_counter()
    outputs = indexer.index(split["patterns"], pcs)
    seconds = time.perf_counter() - started
    angles = disorientation_deg(split["quaternions"], outputs["quaternion"])
    result = summary(angles, seconds)
    result["spearman_fit_residual_vs_error"] = _spearman(outputs["fit_residual"], angles)
    return result


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank_a, rank_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


def real_nickel(indexer: OnnxIndexer) -> dict:
    """Index the 9 real Ni patterns shipped with kikuchipy; compare with the orientations shipped with them.

    The reference orientations (the crystal map in ``kikuchipy.data.nickel_ebsd_small``) come from dictionary
    indexing plus refinement by the kikuchipy authors; the PC is the scan's average PC.
    """
    import kikuchipy as kp

    signal = kp.data.nickel_ebsd_small()
    patterns = np.asarray(signal.data).reshape(-1, *signal.data.shape[-2:])
    pc = np.tile(np.asarray(signal.detector.pc_average, dtype=np.float32), (len(patterns), 1))
    outputs = indexer.index(patterns, pc)
    angles = disorientation_deg(signal.xmap.rotations.data, outputs["quaternion"])
    return {**summary(angles), "angles_deg": [round(float(a), 3) for a in angles]}
