"""XRD phase classifier: 1D powder patterns in, the known structure type(s), or "unknown", out.

Patterns on any 2θ grid and wavelength are put on the model grid by :mod:`matserve.codecs.xrd` (Cu Kα,
2θ 20-90°, 2048 points, [0, 1]); refused patterns get a per-item ``error``. Not cached: patterns rarely
repeat byte for byte, and hashing 2 × 2048 numbers costs about what the model does.

Versions with a ``physics`` card section (1.1.0 on, issue 21) also fit every pattern to the known families
(:mod:`matserve.models.xrd_fit`) and:

* **abstain** when the calibrated ``probability_unknown`` (:mod:`matserve.models.xrd_trust`) is above the card's
  threshold: ``phase``, ``space_group`` and ``probability`` are null, ``abstained`` is true and ``reason`` says why
  (unexplained peaks, or intensities that fit no family), with ``best_fit_phase`` and ``best_fit_residual``;
* scale the classifier's ``probabilities`` by ``1 - probability_unknown`` (so they no longer read 0.99 outside the
  known families);
* name up to 3 phases (``phases``: family, signal fraction, confidence, fitted lattice; components under
  :data:`MIN_CONFIDENCE` are left out) and the ``unexplained_fraction`` of the peak signal. ``phase`` is the
  classifier's answer (99.7-100 % on known test patterns, better than the fit alone), except for a mixture of
  confident components that does not contain it (:data:`MIXTURE_CONFIDENCE`): then the major component, with its
  confidence (times ``1 - probability_unknown``) as ``probability``. When the
  decomposition does not contain the answer otherwise, ``phases`` is that family's own fit, alone, with
  confidence ``1 - probability_unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from matserve.codecs.xrd import EncodedBatch, PatternInput, encode_batch
from matserve.models import xrd_fit, xrd_trust
from matserve.models.base import ServedModel
from matserve.models.xrd_trust import Trust
from matserve.registry import ModelVersion

INPUT = "pattern"
OUTPUT = "phase_probabilities"
MIN_CONFIDENCE = 0.05
"""Mixture components below this confidence are not listed."""
MIXTURE_CONFIDENCE = 0.5
"""With two components at least this confident that do not include the classifier's answer (the classifier was
trained on single phases only), ``phase`` is the major component of the mixture."""


@dataclass
class PreparedPhase:
    """Encoded patterns plus the class labels and space groups of the version that runs them."""

    batch: EncodedBatch
    labels: list[str]
    space_groups: list[str]
    trust: Trust | None


def _finite(value: float) -> float | None:
    """A lattice parameter rounded to 1e-4 Å, or None where the fit found none."""
    return round(value, 4) if np.isfinite(value) else None


class XrdPhaseModel(ServedModel[PreparedPhase, None]):
    """Structure-type classifier served from ``models/xrd_phase/<version>`` (labels and space groups in the card)."""

    name = "xrd_phase"
    item_type = PatternInput

    def preprocess(self, items: list[Any], model: ModelVersion, options: None = None) -> PreparedPhase:
        batch = encode_batch(items)
        for result in batch.results:
            result.update({"phase": None, "space_group": None, "probability": None, "probabilities": None})
        space_groups = {p["label"]: p["space_group"] for p in model.card.get("phases", [])}
        labels = list(model.card["labels"])
        return PreparedPhase(batch, labels, [space_groups.get(label, "") for label in labels], xrd_trust.trust(model))

    def predict(self, prepared: PreparedPhase, model: ModelVersion) -> dict[str, np.ndarray]:
        if not prepared.batch.rows:
            return {}
        return self.runtime.run(model, {INPUT: prepared.batch.patterns})

    def postprocess(
        self, prepared: PreparedPhase, outputs: dict[str, np.ndarray], options: None = None
    ) -> list[dict[str, Any]]:
        results = prepared.batch.results
        if not prepared.batch.rows:
            return results
        probabilities = outputs[OUTPUT]
        if prepared.trust is not None:
            return self._with_physics(prepared, probabilities)
        best = probabilities.argmax(axis=1)
        for k, row in enumerate(prepared.batch.rows):
            j = int(best[k])
            results[row].update({
                "phase": prepared.labels[j],
                "space_group": prepared.space_groups[j],
                "probability": round(float(probabilities[k, j]), 6),
                "probabilities": {label: round(float(p), 6) for label, p in zip(prepared.labels, probabilities[k], strict=True)},
            })  # fmt: skip
        return results

    @staticmethod
    def _with_physics(prepared: PreparedPhase, probabilities: np.ndarray) -> list[dict[str, Any]]:
        """Results of a version with the physics fit: abstain, mixtures, calibrated probabilities."""
        trust = prepared.trust
        assert trust is not None
        batch = prepared.batch
        report, named = xrd_trust.phase_evidence(
            trust.families, batch.patterns, batch.measured_range_deg, probabilities
        )
        unknown = trust.score.probability(named)
        threshold = trust.score.threshold
        confidences = trust.component_confidences(report)
        labels, groups = prepared.labels, prepared.space_groups
        for k, row in enumerate(batch.rows):
            known = 1.0 - float(unknown[k])
            abstain = bool(unknown[k] > threshold)
            j = int(probabilities[k].argmax())  # the classifier's answer: the phase, unless the answer abstains
            probability = float(probabilities[k, j]) * known
            kept = [(p, c) for p, c in zip(report.components[k], confidences[k], strict=True) if c >= MIN_CONFIDENCE]
            if j not in {p.family for p, _ in kept}:
                if sum(c >= MIXTURE_CONFIDENCE for _, c in kept) >= 2:  # a mixture, which the classifier never saw
                    j, probability = kept[0][0].family, float(kept[0][1]) * known  # its major phase and confidence
                else:  # the fit disagrees with the classifier on one phase: the classifier's family, as fitted
                    kept = [(xrd_fit.single_component(report, trust.families, j, k), known)]
            best_family = int(report.best_family[k])
            phases = [{
                "phase": labels[p.family], "space_group": groups[p.family], "weight_fraction": round(p.fraction, 4),
                "confidence": round(float(c), 4), "lattice_a_angstrom": _finite(p.a_angstrom),
                "lattice_c_angstrom": None if p.c_angstrom is None else _finite(p.c_angstrom),
            } for p, c in kept]  # fmt: skip
            results = batch.results[row]
            results.update({
                "phase": None if abstain else labels[j],
                "space_group": None if abstain else groups[j],
                "probability": None if abstain else round(probability, 6),
                "probabilities": {label: round(float(p) * known, 6) for label, p in zip(labels, probabilities[k], strict=True)},
                "abstained": abstain,
                "reason": xrd_trust.reason(report, trust.families, k) if abstain else None,
                "probability_unknown": round(float(unknown[k]), 6),
                "best_fit_phase": labels[best_family] if report.n_peaks[k] else None,
                "best_fit_residual": round(float(min(report.best_residual[k], 1.0)), 4),
                "phases": [] if abstain else phases,
                "unexplained_fraction": round(float(report.unexplained_fraction[k]), 4),
            })  # fmt: skip
        return batch.results
