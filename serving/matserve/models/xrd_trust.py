"""Calibrated trust of the XRD answers (issue 21): the physics fit's evidence turned into probabilities and words.

A version that has it lists in its card a ``physics`` section (written by ``training/xrd/calibrate.py``)::

    "physics": {
      "reference_file": "physics_reference.json",
      "score": {"features": [...], "known_quantiles": [[...], ...], "tail_floor": f, "slope": a, "intercept": b,
                "threshold": t, "false_alarm_rate": 0.01, "positive": "..."},
      "component_confidence": {"features": [...], "mean": ..., "scale": ..., "weights": ..., "bias": ...}
    }

``score`` is a :class:`OneClassScore` of some of the :func:`features`: how far in the tails of the *known*
patterns' distribution each one lies, combined by Fisher's method, then mapped to a probability by a one-feature
logistic regression on calibration patterns (the calibration impostor types only; held-out types are never seen),
with the threshold at the stated false-alarm rate on the known calibration patterns. For ``xrd_phase`` it is
``probability_unknown`` (positive: not a known phase nor a mixture of them) and the answer abstains above the
threshold; for ``xrd_novelty`` it is ``novelty_score`` (positive: not one known phase) and ``is_novel`` is true above
it. ``component_confidence`` is a logistic regression on one mixture component's share, misfit and matched
reflections, fitted on validation mixtures (is the component one of the true phases?).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from matserve.models import xrd_families, xrd_fit
from matserve.models.xrd_families import Family
from matserve.models.xrd_fit import PhysicsReport
from matserve.registry import ModelVersion

EPSILON = 0.01


def features(report: PhysicsReport, learned: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Named per-pattern features of a physics report (plus learned scores, e.g. VAE percentiles, if given).

    Returns
    -------
    dict
        Name -> (B,) float64: ``log_unexplained_single`` and ``log_misfit_single`` (the best family alone),
        ``log_unexplained_left`` (after the decomposition), ``log_component_misfit`` (the worst misfit of a
        component explaining at least 10 % of the peak height), and every ``learned`` entry.
    """
    worst = np.array([max([p.misfit for p in parts if p.share >= 0.1] or [1.0]) for parts in report.components])
    out = {
        "log_unexplained_single": np.log(EPSILON + report.best_unexplained),
        "log_misfit_single": np.log(EPSILON + report.best_misfit),
        "log_unexplained_left": np.log(EPSILON + report.unexplained_fraction),
        "log_component_misfit": np.log(EPSILON + worst),
    }
    for name, values in (learned or {}).items():
        out[name] = np.asarray(values, dtype=np.float64)
    return out


def phase_evidence(
    families: tuple[Family, ...], patterns: np.ndarray, measured_range_deg: np.ndarray, probabilities: np.ndarray
) -> tuple[PhysicsReport, dict[str, np.ndarray]]:
    """The physics report and features the phase answer is scored on (serving and calibration call this).

    The classifier's answer (``probabilities`` argmax; labels in the families' order) is the family fitted first.
    """
    report = xrd_fit.analyse(families, patterns, measured_range_deg, first_guess=probabilities.argmax(axis=1))
    return report, features(report)


def novelty_evidence(
    families: tuple[Family, ...],
    patterns: np.ndarray,
    measured_range_deg: np.ndarray,
    nearest_phase: np.ndarray,
    reconstruction_percentile: np.ndarray,
    outlier_percentile: np.ndarray | None,
) -> tuple[PhysicsReport, dict[str, np.ndarray]]:
    """The physics report and features the novelty score is computed from (serving and calibration call this).

    The nearest known phase in the VAE's latent space is the family fitted first; the learned scores enter as
    their validation percentiles / 100.
    """
    report = xrd_fit.analyse(families, patterns, measured_range_deg, first_guess=nearest_phase)
    learned = {"reconstruction_percentile": reconstruction_percentile / 100.0}
    if outlier_percentile is not None:
        learned["outlier_percentile"] = outlier_percentile / 100.0
    return report, features(report, learned)


def component_features(component: xrd_fit.Component) -> dict[str, float]:
    """Features of one mixture component for its confidence."""
    return {
        "share": component.share,
        "log_misfit": float(np.log(EPSILON + component.misfit)),
        "matched": float(component.matched),
        "fraction": component.fraction,
    }


@dataclass(frozen=True)
class Logistic:
    """A logistic regression on standardised named features (fitted in training; numbers in the card)."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    @classmethod
    def from_card(cls, entry: dict[str, Any]) -> Logistic:
        return cls(
            features=tuple(entry["features"]),
            mean=np.asarray(entry["mean"], dtype=np.float64),
            scale=np.asarray(entry["scale"], dtype=np.float64),
            weights=np.asarray(entry["weights"], dtype=np.float64),
            bias=float(entry["bias"]),
        )

    def probability(self, named: dict[str, np.ndarray]) -> np.ndarray:
        """P(positive) per row of the named features."""
        x = np.stack([np.asarray(named[name], dtype=np.float64) for name in self.features], axis=-1)
        return _sigmoid(((x - self.mean) / self.scale) @ self.weights + self.bias)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def tail_probability(values: np.ndarray, quantiles: np.ndarray, floor: float) -> np.ndarray:
    """Share of known patterns at or above each value, from their quantiles (ties count half), at least ``floor``."""
    left = np.searchsorted(quantiles, values, side="left")
    right = np.searchsorted(quantiles, values, side="right")
    return np.maximum(1.0 - (left + right) / (2.0 * len(quantiles)), floor)


@dataclass(frozen=True)
class OneClassScore:
    """How unlike the known patterns a pattern is, as a calibrated probability (numbers in the card).

    Each feature's tail probability among known validation patterns (:func:`tail_probability`) is combined by
    Fisher's method, ``statistic = Σ -ln(tail)``: no impostor type is needed to decide what is unusual, so types
    never seen score as well as those used for calibration. A one-feature logistic regression maps the statistic to
    a probability (fitted on calibration patterns, positives of the calibration impostor types only), and
    ``threshold`` is that probability's quantile at ``1 - false_alarm_rate`` on the known calibration patterns.
    """

    features: tuple[str, ...]
    known_quantiles: np.ndarray
    tail_floor: float
    slope: float
    intercept: float
    threshold: float

    @classmethod
    def from_card(cls, entry: dict[str, Any]) -> OneClassScore:
        return cls(
            features=tuple(entry["features"]),
            known_quantiles=np.asarray(entry["known_quantiles"], dtype=np.float64),
            tail_floor=float(entry["tail_floor"]),
            slope=float(entry["slope"]),
            intercept=float(entry["intercept"]),
            threshold=float(entry["threshold"]),
        )

    def statistic(self, named: dict[str, np.ndarray]) -> np.ndarray:
        """Fisher's combination of the features' tail probabilities among known patterns."""
        total = np.zeros(len(np.asarray(named[self.features[0]])))
        for name, quantiles in zip(self.features, self.known_quantiles, strict=True):
            total -= np.log(tail_probability(np.asarray(named[name], dtype=np.float64), quantiles, self.tail_floor))
        return total

    def probability(self, named: dict[str, np.ndarray]) -> np.ndarray:
        """P(positive) per pattern."""
        return _sigmoid(self.slope * self.statistic(named) + self.intercept)


@dataclass(frozen=True)
class Trust:
    """What a version needs to fit, score and explain patterns."""

    families: tuple[Family, ...]
    score: OneClassScore
    component_confidence: Logistic | None

    def component_confidences(self, report: PhysicsReport) -> list[list[float]]:
        """Confidence (0-1) of every component of every pattern."""
        if self.component_confidence is None:
            return [[1.0 - p.misfit for p in parts] for parts in report.components]
        rows = [component_features(p) for parts in report.components for p in parts]
        if not rows:
            return [[] for _ in report.components]
        named = {name: np.array([r[name] for r in rows]) for name in rows[0]}
        flat = iter(self.component_confidence.probability(named).tolist())
        return [[next(flat) for _ in parts] for parts in report.components]


_TRUST: dict[tuple[str, str], Trust] = {}


def trust(model: ModelVersion) -> Trust | None:
    """The physics fit and calibration of a version (``None`` for versions without them, e.g. 1.0.0)."""
    physics = model.card.get("physics")
    if not physics:
        return None
    reference = physics["reference_file"]
    key = (str(model.path), model.card["files"][reference]["sha256"])
    if key not in _TRUST:
        families = xrd_families.load_families(model.file(reference), key[1])
        confidence = physics.get("component_confidence")
        _TRUST[key] = Trust(
            families=families,
            score=OneClassScore.from_card(physics["score"]),
            component_confidence=None if confidence is None else Logistic.from_card(confidence),
        )
    return _TRUST[key]


def reason(report: PhysicsReport, families: tuple[Family, ...], i: int) -> str:
    """Why pattern ``i`` is not taken as a known phase (or a mixture of them), in words."""
    best = families[int(report.best_family[i])].label
    lost = report.unexplained_peaks_deg(i)
    if report.n_peaks[i] == 0:
        return "no diffraction peak stands out of the noise"
    if report.unexplained_fraction[i] >= 0.05 and lost:
        at = ", ".join(f"{x:g}°" for x in lost)
        return (f"peaks at {at} 2θ (Cu Kα) fit no known phase; {report.unexplained_fraction[i]:.0%} of the peak signal "
                f"is unexplained by any mix of known phases (closest alone: {best})")  # fmt: skip
    parts = report.components[i]
    worst = max(parts, key=lambda p: p.misfit) if parts else None
    label = families[worst.family].label if worst else best
    misfit = worst.misfit if worst else float(report.best_misfit[i])
    return (f"the peak positions fit {label}, but not its intensities (misfit {misfit:.2f}, "
            f"{report.unexplained_fraction[i]:.0%} of the peak signal unexplained): a different structure on a "
            "similar lattice, or a pattern unlike the known ones")  # fmt: skip
