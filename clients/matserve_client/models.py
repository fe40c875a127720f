"""Typed (pydantic) views of the matserve HTTP API payloads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FormationEnthalpyResult", "ModelInfo", "ModelVersionInfo"]


class FormationEnthalpyResult(BaseModel):
    """Prediction for one formula.

    Attributes
    ----------
    formula : str
        The formula as sent.
    normalized_formula : str or None
        The server's canonical (reduced, element-ordered) form of the formula; ``None`` if it could not be parsed.
    formation_enthalpy_ev_per_atom : float or None
        Predicted formation enthalpy, in eV/atom; ``None`` when :attr:`error` is set.
    uncertainty_ev_per_atom : float or None
        Uncertainty (spread) of the prediction, in eV/atom; ``None`` if the model does not provide one.
    error : str or None
        Why this formula could not be predicted (e.g. unknown element); ``None`` on success. A per-formula error
        does not fail the rest of the batch.
    model : str
        Name of the model that answered (from the response envelope), e.g. ``"formation_enthalpy"``.
    version : str
        Version of the model that answered (from the response envelope), e.g. ``"1.0.0"``.
    """

    model_config = ConfigDict(frozen=True)

    formula: str
    normalized_formula: str | None = None
    formation_enthalpy_ev_per_atom: float | None = None
    uncertainty_ev_per_atom: float | None = None
    error: str | None = None
    model: str
    version: str

    @property
    def ok(self) -> bool:
        """``True`` if the formula was predicted: no :attr:`error` and a formation enthalpy is present."""
        return self.error is None and self.formation_enthalpy_ev_per_atom is not None


class ModelVersionInfo(BaseModel):
    """One registered version of a model, as listed by ``GET /v1/models``.

    Fields not listed below (``description``, ``inputs``, ``outputs``, ``code_commit``, ``baselines``, ...) are
    kept as extra attributes; see ``model_extra``.

    Attributes
    ----------
    name : str
        Model name.
    version : str
        Version string, e.g. ``"1.0.0"``.
    task : str or None
        What the model predicts.
    created : str or None
        Creation time as an ISO 8601 string, as recorded in the model card.
    metrics : dict
        Evaluation metrics from the model card (free-form; error metrics are in eV/atom for formation enthalpy).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    version: str
    task: str | None = None
    created: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class ModelInfo(BaseModel):
    """A servable model, as listed by ``GET /v1/models``.

    Attributes
    ----------
    name : str
        Model name, e.g. ``"formation_enthalpy"``.
    active_version : str or None
        Version served when a request does not pin one.
    max_batch_size : int
        Most formulas accepted in one request; larger requests get HTTP 413.
    versions : list of ModelVersionInfo
        Every servable version of this model.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    active_version: str | None = None
    max_batch_size: int = Field(gt=0)
    versions: list[ModelVersionInfo] = Field(default_factory=list)


class _FormationEnthalpyItem(BaseModel):
    """One entry of ``results`` in a ``POST /v1/formation-enthalpy`` response (no envelope fields)."""

    formula: str
    normalized_formula: str | None = None
    formation_enthalpy_ev_per_atom: float | None = None
    uncertainty_ev_per_atom: float | None = None
    error: str | None = None


class _FormationEnthalpyResponse(BaseModel):
    """Body of a 200 response to ``POST /v1/formation-enthalpy``."""

    model: str
    version: str
    results: list[_FormationEnthalpyItem]

    def flatten(self) -> list[FormationEnthalpyResult]:
        """Per-formula results with ``model`` and ``version`` copied from the envelope."""
        return [
            FormationEnthalpyResult(**item.model_dump(), model=self.model, version=self.version)
            for item in self.results
        ]


class _ModelsResponse(BaseModel):
    """Body of a 200 response to ``GET /v1/models``."""

    models: list[ModelInfo]
    refused: dict[str, Any] = Field(default_factory=dict)
