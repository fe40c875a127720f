"""XRD novelty scorer: "is this pattern something the models have never seen?" (seed 002's VAE).

Per pattern: the VAE reconstruction error (MSE on the model grid, from the latent mean) and, when the
version has one, the outlier probability of its outlier-exposure detector. The novelty score is the larger
of their percentiles among validation patterns of the known phases; ``novelty_percentile`` is that score's
own percentile among the validation scores, and ``is_novel`` is true above the card's threshold percentile
(quantile tables in the card's ``calibration``). Also: the latent coordinates and their 2-d map projection (PCA of the
validation latents), and the nearest known phase in latent space (majority of the 15 nearest validation
patterns in ``latent_reference.npz``).

Versions with a ``physics`` card section (1.1.0 on, issue 21) score differently: the reconstruction error is taken
over the measured 2θ range only (partial lab scans), the pattern is fitted to the known families
(:mod:`matserve.models.xrd_fit`, the latent-space nearest phase first), and ``novelty_score`` is a logistic
regression on the fit's residuals and the two learned percentiles, calibrated on validation
(:mod:`matserve.models.xrd_trust`); ``is_novel`` is ``novelty_score`` above the card's threshold (its false-alarm
rate on known validation patterns is in the card), and ``physics_residual`` / ``best_fit_phase`` say how well the
best single family explains the pattern. A mixture of known phases counts as novel here (not one known phase);
``/v1/xrd/phase`` names its phases.

With :class:`NoveltyOptions` ``reconstructions=True`` (:meth:`XrdNoveltyModel.with_reconstructions`), a call also
answers each scored pattern's encoded curve and its reconstruction (``Prediction.extras["curves"]``), for the
pictures of :func:`matserve.plots.add_xrd_novelty_plots`. Not cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from matserve.codecs.xrd import EncodedBatch, PatternInput, encode_batch
from matserve.models import xrd_trust
from matserve.models.base import Prediction, ServedModel
from matserve.models.xrd_trust import Trust
from matserve.registry import ModelVersion

INPUT = "pattern"
LATENT = "latent_mean"
RECONSTRUCTION = "reconstruction"
ERROR = "reconstruction_error"
OUTLIER = "outlier_probability"
NEIGHBOURS = 15
REFERENCE_FILE = "latent_reference.npz"


def percentile_among(values: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Percentile (0-100) of each value among a reference set given by its quantiles at 0, 0.1, ..., 100 %."""
    return np.interp(values, quantiles, np.linspace(0.0, 100.0, len(quantiles)))


def masked_reconstruction_error(
    patterns: np.ndarray, reconstruction: np.ndarray, measured_range_deg: np.ndarray
) -> np.ndarray:
    """Mean squared reconstruction error over each pattern's measured 2θ range (all of it: the graph's own error)."""
    from matserve.codecs.xrd import MODEL_GRID_DEG

    grid = MODEL_GRID_DEG[None, :]
    inside = (grid >= measured_range_deg[:, :1] - 1e-6) & (grid <= measured_range_deg[:, 1:] + 1e-6)
    squared = (reconstruction.astype(np.float64) - patterns) ** 2
    return (squared * inside).sum(axis=1) / np.maximum(inside.sum(axis=1), 1)


def novelty_score(
    errors: np.ndarray,
    outlier_probability: np.ndarray | None,
    error_quantiles: np.ndarray,
    outlier_quantiles: np.ndarray | None,
) -> np.ndarray:
    """Novelty score: the larger of the validation percentiles of the reconstruction error and of the outlier
    probability (the error's alone without a detector). Training calibrates with this same function."""
    score = percentile_among(errors, error_quantiles)
    if outlier_quantiles is not None and outlier_probability is not None:
        score = np.maximum(score, percentile_among(outlier_probability, outlier_quantiles))
    return score


@dataclass(frozen=True)
class Calibration:
    """What a version needs to turn errors into scores and latent points into a nearest known phase.

    Attributes
    ----------
    error_quantiles : numpy.ndarray
        Reconstruction errors of the validation patterns at 0, 0.1, ..., 100 %.
    outlier_quantiles : numpy.ndarray or None
        Their outlier probabilities at the same quantiles (``None``: the version has no detector).
    score_quantiles : numpy.ndarray
        Their novelty scores at the same quantiles.
    threshold_percentile : float
        ``is_novel`` is true above this percentile of the validation scores.
    threshold_score : float
        The novelty score at that percentile.
    reference_latent : numpy.ndarray
        float32 (M, d) latent means of validation patterns of the known phases.
    reference_label : numpy.ndarray
        int (M,) their class index into ``class_names``.
    class_names : list of str
        Known phases.
    map_center : numpy.ndarray
        (d,) mean of the reference latents.
    map_components : numpy.ndarray
        (2, d) their two principal axes: the latent map is ``(latent - map_center) @ map_components.T``.
    """

    error_quantiles: np.ndarray
    outlier_quantiles: np.ndarray | None
    score_quantiles: np.ndarray
    threshold_percentile: float
    threshold_score: float
    reference_latent: np.ndarray
    reference_label: np.ndarray
    class_names: list[str]
    map_center: np.ndarray
    map_components: np.ndarray

    def to_map(self, latent: np.ndarray) -> np.ndarray:
        """2-d map coordinates of latent points (N, d) -> (N, 2)."""
        return (np.atleast_2d(latent) - self.map_center) @ self.map_components.T

    def score(self, errors: np.ndarray, outlier_probability: np.ndarray | None) -> np.ndarray:
        """Novelty score of each pattern (see :func:`novelty_score`)."""
        return novelty_score(errors, outlier_probability, self.error_quantiles, self.outlier_quantiles)

    def percentile(self, score: np.ndarray) -> np.ndarray:
        """Percentile (0-100) of each novelty score among the validation patterns' scores."""
        return percentile_among(score, self.score_quantiles)

    def nearest_phase(self, latent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Majority class among the ``NEIGHBOURS`` nearest reference points, and its share of them."""
        # |q - r|² up to the per-query constant |q|², as one matrix product.
        distances = (self.reference_latent**2).sum(axis=1)[None, :] - 2.0 * (latent @ self.reference_latent.T)
        nearest = np.argpartition(distances, NEIGHBOURS - 1, axis=1)[:, :NEIGHBOURS]
        votes = np.zeros((len(latent), len(self.class_names)), dtype=np.int64)
        np.add.at(votes, (np.repeat(np.arange(len(latent)), NEIGHBOURS), self.reference_label[nearest].ravel()), 1)
        return votes.argmax(axis=1), votes.max(axis=1) / NEIGHBOURS


_CALIBRATIONS: dict[tuple[str, str], Calibration] = {}


def calibration(model: ModelVersion) -> Calibration:
    """The calibration of a verified version (read once per file content; the registry checked its hash)."""
    key = (str(model.path), model.card["files"][REFERENCE_FILE]["sha256"])
    if key not in _CALIBRATIONS:
        _CALIBRATIONS[key] = _read_calibration(model)
    return _CALIBRATIONS[key]


def _read_calibration(model: ModelVersion) -> Calibration:
    card = model.card["calibration"]
    with np.load(model.file(REFERENCE_FILE)) as reference:
        latent, label, names = reference["latent_mean"], reference["label"], reference["class_names"]
        center, components = reference["map_center"], reference["map_components"]
    outlier = card.get("outlier_probability_quantiles")
    return Calibration(
        error_quantiles=np.asarray(card["validation_quantiles"], dtype=np.float64),
        outlier_quantiles=None if outlier is None else np.asarray(outlier, dtype=np.float64),
        score_quantiles=np.asarray(card["score_quantiles"], dtype=np.float64),
        threshold_percentile=float(card["threshold_percentile"]),
        threshold_score=float(card["threshold_score"]),
        reference_latent=latent.astype(np.float32),
        reference_label=label.astype(np.int64),
        class_names=[str(n) for n in names],
        map_center=center.astype(np.float32),
        map_components=components.astype(np.float32),
    )


@dataclass(frozen=True)
class NoveltyOptions:
    """Per-call options of :class:`XrdNoveltyModel`.

    Attributes
    ----------
    reconstructions : bool
        Also answer, per scored item, its encoded pattern and its VAE reconstruction (``extras["curves"]``).
    """

    reconstructions: bool = False


CURVES = "curves"
"""Key of :attr:`~matserve.models.base.Prediction.extras`: item position -> (pattern, reconstruction)."""


@dataclass
class PreparedNovelty:
    """Encoded patterns and the calibration of the version that scores them."""

    batch: EncodedBatch
    calibration: Calibration
    trust: Trust | None = None


class XrdNoveltyModel(ServedModel[PreparedNovelty, NoveltyOptions]):
    """VAE novelty scorer served from ``models/xrd_novelty/<version>``."""

    name = "xrd_novelty"
    item_type = PatternInput

    def preprocess(
        self, items: list[Any], model: ModelVersion, options: NoveltyOptions | None = None
    ) -> PreparedNovelty:
        batch = encode_batch(items)
        empty = {"reconstruction_error": None, "outlier_probability": None, "novelty_percentile": None, "is_novel": None,
                 "threshold_percentile": None, "latent": None, "latent_map": None, "nearest_known_phase": None,
                 "nearest_known_phase_share": None, "novelty_score": None, "physics_residual": None,
                 "best_fit_phase": None}  # fmt: skip
        for result in batch.results:
            result.update(empty)
        return PreparedNovelty(batch, calibration(model), xrd_trust.trust(model))

    def predict(self, prepared: PreparedNovelty, model: ModelVersion) -> dict[str, np.ndarray]:
        if not prepared.batch.rows:
            return {}
        return self.runtime.run(model, {INPUT: prepared.batch.patterns})

    def postprocess(
        self, prepared: PreparedNovelty, outputs: dict[str, np.ndarray], options: NoveltyOptions | None = None
    ) -> list[dict[str, Any]]:
        results = prepared.batch.results
        if not prepared.batch.rows:
            return results
        cal = prepared.calibration
        errors = outputs[ERROR].reshape(-1).astype(np.float64)
        outlier = outputs[OUTLIER].reshape(-1).astype(np.float64) if OUTLIER in outputs else None
        latent = outputs[LATENT]
        phase, share = cal.nearest_phase(latent)
        physics: dict[str, np.ndarray] = {}
        if prepared.trust is None:
            score = cal.score(errors, outlier)
            novel = score > cal.threshold_score
        else:
            batch = prepared.batch
            partial = (batch.measured_range_deg[:, 1] - batch.measured_range_deg[:, 0]) < 69.99
            if partial.any():
                masked = masked_reconstruction_error(batch.patterns, outputs[RECONSTRUCTION], batch.measured_range_deg)
                errors = np.where(partial, masked, errors)
            score = cal.score(errors, outlier)
            outlier_pct = None if outlier is None else percentile_among(outlier, cal.outlier_quantiles)
            report, named = xrd_trust.novelty_evidence(
                prepared.trust.families, batch.patterns, batch.measured_range_deg, phase,
                percentile_among(errors, cal.error_quantiles), outlier_pct,
            )  # fmt: skip
            probability = prepared.trust.score.probability(named)
            threshold = prepared.trust.score.threshold
            novel = probability > threshold
            labels = [f.label for f in prepared.trust.families]
            physics = {"novelty_score": probability, "physics_residual": np.minimum(report.best_residual, 1.0),
                       "best_fit_phase": np.array([labels[int(f)] if n else None
                                                   for f, n in zip(report.best_family, report.n_peaks, strict=True)])}  # fmt: skip
        percentiles = cal.percentile(score)
        latent_map = cal.to_map(latent)
        for k, row in enumerate(prepared.batch.rows):
            results[row].update({
                "reconstruction_error": float(errors[k]),
                "outlier_probability": None if outlier is None else round(float(outlier[k]), 6),
                "novelty_percentile": round(float(percentiles[k]), 3),
                "is_novel": bool(novel[k]),
                "threshold_percentile": cal.threshold_percentile,
                "latent": [round(float(v), 6) for v in latent[k]],
                "latent_map": [round(float(v), 6) for v in latent_map[k]],
                "nearest_known_phase": cal.class_names[int(phase[k])],
                "nearest_known_phase_share": round(float(share[k]), 4),
            })  # fmt: skip
            if physics:
                results[row].update({
                    "novelty_score": round(float(physics["novelty_score"][k]), 6),
                    "physics_residual": round(float(physics["physics_residual"][k]), 4),
                    "best_fit_phase": physics["best_fit_phase"][k],
                })  # fmt: skip
        return results

    def extras(
        self, prepared: PreparedNovelty, outputs: dict[str, np.ndarray], options: NoveltyOptions
    ) -> dict[str, Any]:
        """``{"curves": {item position: (pattern, reconstruction)}}`` with ``reconstructions``, else nothing."""
        if not options.reconstructions:
            return {}
        return {
            CURVES: {row: (prepared.batch.patterns[k], outputs[RECONSTRUCTION][k])
                     for k, row in enumerate(prepared.batch.rows)}
        }  # fmt: skip

    def with_reconstructions(
        self, items: list[Any], *, version: str | None = None
    ) -> tuple[ModelVersion, list[dict[str, Any]], dict[int, tuple[np.ndarray, np.ndarray]]]:
        """Results plus, per scored item, its encoded pattern and reconstruction (for the pictures).

        A thin wrapper of :meth:`__call__` with ``NoveltyOptions(reconstructions=True)`` (timed and counted as
        every call).

        Parameters
        ----------
        items : list
            :class:`~matserve.codecs.xrd.PatternInput` items.
        version : str, optional
            Registry version (default the active one).

        Returns
        -------
        model : ModelVersion
            The version that answered.
        results : list of dict
            As from :meth:`__call__` (not cached).
        curves : dict
            Item position -> (pattern, reconstruction), float32 (2048,) each on the model grid.
        """
        model = self.version(version)
        prediction: Prediction = self(items, model.version, options=NoveltyOptions(reconstructions=True))
        return model, prediction.results, prediction.extras.get(CURVES, {})
