"""Formation enthalpy predictor: formulas in, eV/atom (with uncertainty) out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from matserve.codecs.formation_enthalpy import FormulaError, ParsedFormula, encode, parse_formula
from matserve.models.base import ServedModel
from matserve.registry import ModelVersion

INPUT = "element_fractions"
OUTPUT = "formation_enthalpy_ev_per_atom"
UNCERTAINTY = "uncertainty_ev_per_atom"


@dataclass
class PreparedFormulas:
    """Parsed formulas, per-item errors, and the rows that go to the network.

    Attributes
    ----------
    results : list of dict
        One result per input formula, filled in by pre- and postprocessing.
    compound_rows : list of int
        Positions in ``results`` of compounds (single elements are 0 by definition and skip the network).
    features : numpy.ndarray
        float32 (len(compound_rows), 86) element fractions.
    """

    results: list[dict[str, Any]]
    compound_rows: list[int]
    features: np.ndarray


class FormationEnthalpyModel(ServedModel[PreparedFormulas]):
    """ElemNet-family regressor served from ``models/formation_enthalpy/<version>``."""

    name = "formation_enthalpy"

    def preprocess(self, items: list[Any], model: ModelVersion) -> PreparedFormulas:
        results: list[dict[str, Any]] = []
        compounds: list[ParsedFormula] = []
        rows: list[int] = []
        for i, formula in enumerate(items):
            result: dict[str, Any] = {
                "formula": formula,
                "normalized_formula": None,
                OUTPUT: None,
                UNCERTAINTY: None,
                "error": None,
            }
            try:
                parsed = parse_formula(formula)
            except FormulaError as error:
                result["error"] = str(error)
            else:
                result["normalized_formula"] = parsed.normalized_formula
                if parsed.is_element:
                    result[OUTPUT], result[UNCERTAINTY] = 0.0, 0.0  # an element's formation enthalpy is 0 by definition
                else:
                    compounds.append(parsed)
                    rows.append(i)
            results.append(result)
        return PreparedFormulas(results=results, compound_rows=rows, features=encode(compounds))

    def predict(self, prepared: PreparedFormulas, model: ModelVersion) -> dict[str, np.ndarray]:
        if not prepared.compound_rows:
            return {}
        return self.runtime.run(model, {INPUT: prepared.features})

    def postprocess(self, prepared: PreparedFormulas, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        if prepared.compound_rows:
            enthalpy = outputs[OUTPUT].reshape(-1)
            uncertainty = outputs[UNCERTAINTY].reshape(-1) if UNCERTAINTY in outputs else None
            for k, row in enumerate(prepared.compound_rows):
                prepared.results[row][OUTPUT] = float(enthalpy[k])
                if uncertainty is not None:
                    prepared.results[row][UNCERTAINTY] = float(uncertainty[k])
        return prepared.results
