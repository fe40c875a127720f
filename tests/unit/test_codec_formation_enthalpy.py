"""The formula codec shared by training and serving."""

from __future__ import annotations

import numpy as np
import pytest

from matserve.codecs.formation_enthalpy import ELEMENTS, FormulaError, encode, encode_formulas, parse_formula


@pytest.mark.parametrize(
    ("formula", "normalized", "fractions"),
    [
        ("NaCl", "NaCl", {"Na": 0.5, "Cl": 0.5}),
        ("Fe2O3", "Fe2O3", {"Fe": 0.4, "O": 0.6}),
        ("Ca(OH)2", "Ca(HO)2", {"Ca": 0.2, "O": 0.4, "H": 0.4}),
        ("La0.7Sr0.3MnO3", "Sr0.3La0.7Mn1O3", {"La": 0.14, "Sr": 0.06, "Mn": 0.2, "O": 0.6}),
        ("H2O", "H2O", {"H": 2 / 3, "O": 1 / 3}),
        ("Fe4O6", "Fe2O3", {"Fe": 0.4, "O": 0.6}),
        ("  NaCl ", "NaCl", {"Na": 0.5, "Cl": 0.5}),
    ],
)
def test_parses_real_formulas(formula: str, normalized: str, fractions: dict[str, float]) -> None:
    parsed = parse_formula(formula)
    assert parsed.normalized_formula == normalized
    assert parsed.fractions.keys() == fractions.keys()
    for element, fraction in fractions.items():
        assert parsed.fractions[element] == pytest.approx(fraction)
    row = encode([parsed])[0]
    assert row.dtype == np.float32 and row.shape == (86,)
    assert row.sum() == pytest.approx(1.0, abs=1e-6)
    for element, fraction in fractions.items():
        assert row[ELEMENTS.index(element)] == pytest.approx(fraction, abs=1e-6)


@pytest.mark.parametrize(
    ("junk", "reason"),
    [
        ("Xx2", "unknown element symbol 'Xx'"),
        ("NaCl(", "unparseable"),
        ("hello", "unparseable"),
        ("", "empty"),
        ("   ", "empty"),
        ("Na0", "present 0 times"),
        ("Na0Cl", "present 0 times"),  # pymatgen would silently read it as Cl
        ("Na1e-400Cl", "present 0 times"),
        ("Na1e308Cl", "between 1e-06 and 1e.06"),
        ("Na99999999999999999999999999Cl", "between 1e-06 and 1e.06"),
        ("NaCl0.0000001", "between 1e-06 and 1e.06"),
        ("(NaCl)2000000", "between 1e-06 and 1e.06"),
        ("Fe-1O", "unparseable"),
        ("123", "unparseable"),
        ("A" * 1000, "at most 256"),
        ("OgCl", "outside the supported set"),
    ],
)
def test_rejects_junk_with_a_reason(junk: str, reason: str) -> None:
    with pytest.raises(FormulaError, match=reason):
        parse_formula(junk)


def test_unsupported_elements_are_listed_with_the_supported_set() -> None:
    with pytest.raises(FormulaError) as error:
        parse_formula("OgTs2Cl")
    assert "Og, Ts" in str(error.value) and "supported: H, Li" in str(error.value)


def test_single_elements_parse_as_elements_even_outside_the_input_set() -> None:
    assert parse_formula("Fe").is_element
    assert parse_formula("Og2").is_element  # 0 eV/atom by definition, no network needed


def test_non_strings_are_rejected() -> None:
    with pytest.raises(FormulaError, match="must be a string"):
        parse_formula(5)  # type: ignore[arg-type]


def test_encode_formulas_is_row_per_formula() -> None:
    features = encode_formulas(["NaCl", "Fe2O3", "Al2O3"])
    assert features.shape == (3, 86)
    np.testing.assert_allclose(features.sum(axis=1), 1.0, atol=1e-6)
