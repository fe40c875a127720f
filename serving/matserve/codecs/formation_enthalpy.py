"""Formula codec for the formation enthalpy predictor (ElemNet family).

One place turns chemical formulas into the model input and model outputs into
results. Training (``training/formation_enthalpy``), the BentoML service and
the Triton python-backend model all import this module, so the features a
model was trained on are, by construction, the features it is served with.

Conventions
-----------
* Input vector: the atomic fractions of the 86 elements of the seed (ElemNet,
  dissertation chapter 3), in the order of :data:`ELEMENTS`; float32, each row
  sums to 1.
* Output: formation enthalpy in eV/atom.
* Parsing uses :class:`pymatgen.core.Composition` (strict mode), which handles
  brackets, hydrates-free nested groups and fractional amounts.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pymatgen.core import Composition

#: The 86 elements of the seed's input vector, in the seed's order.
ELEMENTS: tuple[str, ...] = (
    "H", "Li", "Be", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K", "Ca", "Sc",
    "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb",
    "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",
    "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm",
    "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Ac", "Th",
    "Pa", "U", "Np", "Pu",
)  # fmt: skip
ELEMENT_INDEX: dict[str, int] = {symbol: i for i, symbol in enumerate(ELEMENTS)}
N_ELEMENTS = len(ELEMENTS)

#: Longest formula string accepted, in characters.
MAX_FORMULA_LENGTH = 256
#: Range of each element's amount in a formula (after brackets are multiplied out), and of every number written
#: in it: ``Na1e308Cl`` or ``NaCl0.0000000001`` are typing errors, not compounds, and get a per-item error.
AMOUNT_RANGE = (1e-6, 1e6)

_AMOUNT = re.compile(r"(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)")

_INVALID_ELEMENT = re.compile(r"contains: ([A-Za-z]+)")


class FormulaError(ValueError):
    """A formula that cannot be turned into a model input; the message says why."""


@dataclass(frozen=True)
class ParsedFormula:
    """A formula that parsed.

    Attributes
    ----------
    formula : str
        The string as the user sent it.
    normalized_formula : str
        pymatgen's reduced formula, e.g. ``"Fe2O3"`` for ``"Fe4O6"``.
    fractions : dict[str, float]
        Atomic fraction of each element; sums to 1.
    """

    formula: str
    normalized_formula: str
    fractions: dict[str, float]

    @property
    def is_element(self) -> bool:
        """True for a single element, whose formation enthalpy is 0 by definition."""
        return len(self.fractions) == 1


@lru_cache(maxsize=65536)
def parse_formula(formula: str) -> ParsedFormula:
    """Parse one chemical formula.

    Parameters
    ----------
    formula : str
        A formula such as ``"Fe2O3"``, ``"Ca(OH)2"`` or ``"La0.7Sr0.3MnO3"``.

    Returns
    -------
    ParsedFormula

    Raises
    ------
    FormulaError
        If the string is not a formula, names an unknown element, has no atoms,
        or names an element outside :data:`ELEMENTS` (single elements excepted:
        their formation enthalpy is 0 by definition).
    """
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string, got {type(formula).__name__}")
    text = formula.strip()
    if not text:
        raise FormulaError("formula is empty")
    if len(text) > MAX_FORMULA_LENGTH:
        raise FormulaError(f"formula is {len(text)} characters long; at most {MAX_FORMULA_LENGTH} are accepted")
    try:
        composition = Composition(text, strict=True)
    except (ValueError, KeyError, TypeError, IndexError) as error:
        unknown = _INVALID_ELEMENT.search(str(error))
        if unknown:
            raise FormulaError(
                f"unparseable formula {formula!r}: unknown element symbol {unknown.group(1)!r}"
            ) from None
        raise FormulaError(
            f"unparseable formula {formula!r}: expected element symbols with optional amounts and brackets, "
            "e.g. 'Fe2O3', 'Ca(OH)2', 'La0.7Sr0.3MnO3'"
        ) from None
    _check_amounts(formula, text, composition)
    fractions = {str(el): float(amount) for el, amount in composition.fractional_composition.get_el_amt_dict().items()}
    with warnings.catch_warnings():  # pymatgen warns about missing electronegativities of superheavy elements
        warnings.simplefilter("ignore", UserWarning)
        normalized = composition.reduced_formula
    parsed = ParsedFormula(formula=formula, normalized_formula=normalized, fractions=fractions)
    if not parsed.is_element:
        unsupported = sorted(el for el in fractions if el not in ELEMENT_INDEX)
        if unsupported:
            raise FormulaError(
                f"element(s) {', '.join(unsupported)} in {formula!r} are outside the supported set; "
                f"supported: {', '.join(ELEMENTS)}"
            )
    return parsed


def _check_amounts(formula: str, text: str, composition: Composition) -> None:
    """Every written number and every element's amount within :data:`AMOUNT_RANGE`, else :class:`FormulaError`.

    pymatgen silently drops an element written with amount 0 (``Na0Cl`` is read as ``Cl``) and accepts any float
    (``Na1e308Cl``); neither is a composition a user meant.
    """
    low, high = AMOUNT_RANGE
    accepted = f"amounts must be between {low:g} and {high:g} per element, e.g. 'Fe2O3', 'La0.7Sr0.3MnO3'"
    for token in _AMOUNT.findall(text):
        value = float(token)
        if not math.isfinite(value) or value <= 0:
            raise FormulaError(f"formula {formula!r} has the amount {token!r}; an element cannot be present 0 times "
                               f"(leave it out instead): {accepted}")  # fmt: skip
    amounts = composition.get_el_amt_dict()
    if not amounts or composition.num_atoms <= 0:
        raise FormulaError(f"formula {formula!r} contains no atoms")
    for element, amount in amounts.items():
        if not (math.isfinite(amount) and low <= amount <= high):
            raise FormulaError(f"formula {formula!r} has {amount:g} {element} atoms; {accepted}")
    if not math.isfinite(composition.num_atoms):
        raise FormulaError(f"formula {formula!r} has an infinite number of atoms; {accepted}")


def encode(parsed: list[ParsedFormula]) -> np.ndarray:
    """Turn parsed formulas into the model input.

    Parameters
    ----------
    parsed : list of ParsedFormula
        Compounds (not single elements) whose elements are all in :data:`ELEMENTS`.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(len(parsed), 86)``: atomic fractions, rows sum to 1.
    """
    features = np.zeros((len(parsed), N_ELEMENTS), dtype=np.float32)
    for row, item in enumerate(parsed):
        for symbol, fraction in item.fractions.items():
            features[row, ELEMENT_INDEX[symbol]] = fraction
    return features


def encode_formulas(formulas: list[str]) -> np.ndarray:
    """Parse and encode formulas in one step (training convenience; raises on the first bad one)."""
    return encode([parse_formula(formula) for formula in formulas])
