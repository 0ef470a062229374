"""Chemical formulas parsed once: every feature of a formula reads the same parsed facts.

pymatgen parses; what the features need of its answer is kept in a small frozen record,
because a pymatgen ``Composition`` memoizes its derived compositions (about 1.5 kB a formula):
cached by the ten thousand, those would make a featurization's memory grow with its dataset.
The record holds numbers computed as before from pymatgen's, so features are the same to the last bit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

from pymatgen.core import Composition, Element


@dataclass(frozen=True, slots=True)
class ParsedFormula:
    """What the features read of a formula: its elements' fractions and its electron and atom counts."""

    atomic_numbers: bytes  # of each element, in pymatgen's order
    fractions: tuple[float, ...]  # atomic fraction of each element, same order
    electrons: int  # per formula unit as written
    reduced_electrons: int  # per reduced formula unit
    num_atoms: float
    reduced_num_atoms: float
    reduced_counts: tuple[int, ...]  # atoms of each element in the reduced formula, ascending
    reduced_formula: str  # alphabetical: equal for Bi2Se3 and Bi4Se6
    not_elements: tuple[str, ...]  # species pymatgen read that are no element (a dummy "X")


@lru_cache(maxsize=1 << 14)
def parse_formula(formula: str) -> ParsedFormula:
    """The parsed facts of ``formula`` (cached, about 0.6 kB each; raises as pymatgen does)."""
    with warnings.catch_warnings():
        # pymatgen sorts by electronegativity, which noble gases lack; no order here depends on it.
        warnings.filterwarnings("ignore", message="No Pauling electronegativity")
        parsed = Composition(formula)
        not_elements = tuple(str(s) for s in parsed.elements if not isinstance(s, Element))
        if parsed.num_atoms <= 0 or not_elements:
            return ParsedFormula(
                b"", (), 0, 0, parsed.num_atoms, 0.0, (), parsed.alphabetical_formula, not_elements
            )
        reduced = parsed.reduced_composition
        fractions = parsed.fractional_composition
        return ParsedFormula(
            atomic_numbers=bytes(element.Z for element in fractions),
            fractions=tuple(float(amount) for amount in fractions.values()),
            electrons=round(sum(element.Z * amount for element, amount in parsed.items())),
            reduced_electrons=round(sum(element.Z * amount for element, amount in reduced.items())),
            num_atoms=parsed.num_atoms,
            reduced_num_atoms=reduced.num_atoms,
            reduced_counts=tuple(sorted(round(amount) for amount in reduced.values())),
            reduced_formula=reduced.alphabetical_formula,
            not_elements=(),
        )
