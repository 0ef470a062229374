"""Chemical formulas parsed once: every feature of a formula reads the same parsed facts.

pymatgen parses; what the features need of its answer is kept in a small frozen record,
because a pymatgen ``Composition`` memoizes its derived compositions (about 1.5 kB a formula):
cached by the ten thousand, those would make a featurization's memory grow with its dataset.

The derived facts (fractions, the reduced formula and its counts) are computed here from the
parsed amounts, by the same arithmetic in the same order as pymatgen's ``reduced_composition``,
``fractional_composition`` and ``alphabetical_formula``: building those three compositions
costs five times the parse (0.1 ms a formula), and a table of 10,000 formulas pays it 10,000
times. The few formulas pymatgen treats specially (peroxides and diatomic elements, whose
reduced formula keeps a factor of 2, and amounts that vanish when divided) go through pymatgen
itself; tests/features/test_formula.py checks every formula of the bundled data sets against it.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass
from functools import cache, lru_cache

from pymatgen.core import Composition, Element
from pymatgen.util.string import formula_double_format


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
    parsed = Composition(formula)
    items = list(parsed.items())  # each item costs pymatgen a lookup: taken once
    not_elements = tuple(str(s) for s, _ in items if not isinstance(s, Element))
    if parsed.num_atoms <= 0 or not_elements:
        return ParsedFormula(b"", (), 0, 0, parsed.num_atoms, 0.0, (), _alphabetical(parsed), not_elements)
    # All are elements here (narrowed for the type checker).
    pairs = [(element, amount) for element, amount in items if isinstance(element, Element)]
    elements, amounts = [element for element, _ in pairs], [amount for _, amount in pairs]
    factor = _reduction_factor(elements, amounts)
    if factor == 0:
        return _parsed_by_pymatgen(parsed)
    reduced = [amount / factor for amount in amounts]
    fractions = [amount / parsed.num_atoms for amount in amounts]
    if min(map(abs, reduced + fractions)) < Composition.amount_tolerance:
        return _parsed_by_pymatgen(parsed)  # an amount pymatgen would drop
    numbers = [element.Z for element in elements]
    return ParsedFormula(
        atomic_numbers=bytes(numbers),
        fractions=tuple(map(float, fractions)),
        electrons=round(sum(map(operator.mul, numbers, amounts))),
        reduced_electrons=round(sum(map(operator.mul, numbers, reduced))),
        num_atoms=parsed.num_atoms,
        reduced_num_atoms=_atom_count(reduced),
        reduced_counts=tuple(sorted(map(round, reduced))),
        reduced_formula=" ".join(
            sorted(
                f"{element.symbol}{formula_double_format(amount, ignore_ones=False)}"
                for element, amount in zip(elements, reduced, strict=True)
            )
        ),
        not_elements=(),
    )


def _reduction_factor(elements: list[Element], amounts: list[float]) -> int:
    """What pymatgen divides a composition by to reduce it: the greatest common divisor of whole
    amounts, 1 where one is not whole; 0 for its special formulas, which it reduces otherwise."""
    rounded = list(map(round, amounts))
    for amount, whole in zip(amounts, rounded, strict=True):
        if abs(amount - whole) >= Composition.amount_tolerance:
            return 1
    factor = math.gcd(*rounded)
    specials = _special_formulas().get(len(elements))
    if specials is None:
        return factor
    reduced = frozenset(
        (element.symbol, whole // factor) for element, whole in zip(elements, rounded, strict=True)
    )
    return 0 if reduced in specials else factor


@cache
def _special_formulas() -> dict[int, frozenset[frozenset[tuple[str, int]]]]:
    """The reduced formulas pymatgen keeps a factor of 2 in (Li2O2, H2, ...), as symbol counts,
    by their number of elements (a formula of another number of elements is none of them)."""
    by_size: dict[int, set[frozenset[tuple[str, int]]]] = {}
    for key in Composition.special_formulas:
        counts = Composition(key).get_el_amt_dict()
        by_size.setdefault(len(counts), set()).add(
            frozenset((symbol, round(amount)) for symbol, amount in counts.items())
        )
    return {size: frozenset(formulas) for size, formulas in by_size.items()}


def _atom_count(amounts: list[float]) -> float:
    """Atoms of a composition, summed as pymatgen sums them."""
    total: float = 0
    for amount in amounts:
        total += abs(amount)
    return total


def _alphabetical(composition: Composition) -> str:
    with warnings.catch_warnings():
        # pymatgen sorts by electronegativity, which noble gases lack; no order here depends on it.
        warnings.filterwarnings("ignore", message="No Pauling electronegativity")
        return composition.alphabetical_formula


def _parsed_by_pymatgen(parsed: Composition) -> ParsedFormula:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No Pauling electronegativity")
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
