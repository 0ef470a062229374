"""Chemical formulas parsed once: every feature of a formula reads the same parsed facts.

pymatgen parses; what the features need of its answer is kept in a small frozen record,
because a pymatgen ``Composition`` memoizes its derived compositions (about 1.5 kB a formula):
cached by the ten thousand, those would make a featurization's memory grow with its dataset.
The record holds pymatgen's own numbers, so features are the same to the last bit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

from pymatgen.core import Composition, Element


@dataclass(frozen=True, slots=True)
class ParsedFormula:
    """A formula's elements and amounts, as written and reduced (in pymatgen's order)."""

    amounts: tuple[tuple[int, float], ...]  # (atomic number, amount) as written
    fractions: tuple[tuple[int, float], ...]  # (atomic number, atomic fraction)
    reduced: tuple[tuple[int, float], ...]  # (atomic number, amount) of the reduced formula
    num_atoms: float
    reduced_num_atoms: float
    reduced_formula: str  # alphabetical: equal for Bi2Se3 and Bi4Se6
    not_elements: tuple[str, ...]  # species pymatgen read that are no element (a dummy "X")


@lru_cache(maxsize=1 << 14)
def parse_formula(formula: str) -> ParsedFormula:
    """The parsed facts of ``formula`` (cached, about 0.3 kB each; raises as pymatgen does)."""
    with warnings.catch_warnings():
        # pymatgen sorts by electronegativity, which noble gases lack; no order here depends on it.
        warnings.filterwarnings("ignore", message="No Pauling electronegativity")
        parsed = Composition(formula)
        not_elements = tuple(str(s) for s in parsed.elements if not isinstance(s, Element))
        if parsed.num_atoms <= 0 or not_elements:
            return ParsedFormula((), (), (), parsed.num_atoms, 0.0, parsed.alphabetical_formula, not_elements)
        reduced = parsed.reduced_composition
        return ParsedFormula(
            amounts=tuple((element.Z, float(amount)) for element, amount in parsed.items()),
            fractions=tuple((e.Z, float(amount)) for e, amount in parsed.fractional_composition.items()),
            reduced=tuple((element.Z, float(amount)) for element, amount in reduced.items()),
            num_atoms=parsed.num_atoms,
            reduced_num_atoms=reduced.num_atoms,
            reduced_formula=reduced.alphabetical_formula,
            not_elements=(),
        )
