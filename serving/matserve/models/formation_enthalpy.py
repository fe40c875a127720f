"""Formation enthalpy predictor: formulas in, eV/atom (with uncertainty) out.

Cached per reduced formula (the codec's ``normalized_formula``), so ``"Fe2O3"``, ``"O3Fe2"`` and ``"Fe4O6"``
share one cache entry; unparseable formulas are not cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import StringConstraints

from matserve.codecs.formation_enthalpy import (
    MAX_FORMULA_LENGTH,
    FormulaError,
    ParsedFormula,
    encode,
    parse_formula,
)
from matserve.models.base import ServedModel
from matserve.registry import ModelVersion

INPUT = "element_fractions"
OUTPUT = "formation_enthalpy_ev_per_atom"
UNCERTAINTY = "uncertainty_ev_per_atom"

Formula = Annotated[str, StringConstraints(strict=True, max_length=MAX_FORMULA_LENGTH)]
"""One input item on the wire: a string of at most 256 characters (parsing errors are per-item results)."""


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


class FormationEnthalpyModel(ServedModel[PreparedFormulas, None]):
    """ElemNet-family regressor served from ``models/formation_enthalpy/<version>``."""

    name = "formation_enthalpy"
    item_type = Formula

    def cache_key(self, item: Any) -> str | None:
        """The reduced formula (``parse_formula`` is memoised, so preprocessing a miss does not parse twice)."""
        if not isinstance(item, str):
            return None
        try:
            return parse_formula(item).normalized_formula
        except FormulaError:
            return None

    def cache_value(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """Everything but the formula as sent; nothing for per-item errors."""
        if result["error"] is not None or result[OUTPUT] is None:
            return None
        return {"normalized_formula": result["normalized_formula"], OUTPUT: result[OUTPUT],
                UNCERTAINTY: result[UNCERTAINTY]}  # fmt: skip

    def from_cache(self, item: Any, value: dict[str, Any]) -> dict[str, Any]:
        """The result as :meth:`postprocess` builds it, with this item's formula."""
        return {"formula": item, "normalized_formula": value["normalized_formula"], OUTPUT: value[OUTPUT],
                UNCERTAINTY: value[UNCERTAINTY], "error": None}  # fmt: skip

    def preprocess(self, items: list[Any], model: ModelVersion, options: None = None) -> PreparedFormulas:
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

    def postprocess(
        self, prepared: PreparedFormulas, outputs: dict[str, np.ndarray], options: None = None
    ) -> list[dict[str, Any]]:
        if prepared.compound_rows:
            enthalpy = outputs[OUTPUT].reshape(-1)
            uncertainty = outputs[UNCERTAINTY].reshape(-1) if UNCERTAINTY in outputs else None
            for k, row in enumerate(prepared.compound_rows):
                prepared.results[row][OUTPUT] = float(enthalpy[k])
                if uncertainty is not None:
                    prepared.results[row][UNCERTAINTY] = float(uncertainty[k])
        return prepared.results
