"""XRD phase classifier: 1D powder patterns in, probabilities of the known structure types out.

Patterns on any 2θ grid and wavelength are put on the model grid by :mod:`matserve.codecs.xrd` (Cu Kα,
2θ 20-90°, 2048 points, [0, 1]); refused patterns get a per-item ``error``. Not cached: patterns rarely
repeat byte for byte, and hashing 2 × 2048 numbers costs about what the model does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from matserve.codecs.xrd import EncodedBatch, PatternInput, encode_batch
from matserve.models.base import ServedModel
from matserve.registry import ModelVersion

INPUT = "pattern"
OUTPUT = "phase_probabilities"


@dataclass
class PreparedPhase:
    """Encoded patterns plus the class labels and space groups of the version that runs them."""

    batch: EncodedBatch
    labels: list[str]
    space_groups: list[str]


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
        return PreparedPhase(batch, labels, [space_groups.get(label, "") for label in labels])

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
