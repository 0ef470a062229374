"""A parsed formula holds exactly what pymatgen's own derived compositions say."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from pymatgen.core import Composition

from topoclass.features.formula import parse_formula

EDGE_CASES = [
    "Bi2Se3",
    "Bi4Se6",
    "Li4Fe4P4O16",
    "NaCl",
    "Na2Cl2",
    # pymatgen's special formulas: peroxides and diatomic elements keep a factor of 2.
    "H2",
    "H",
    "O2",
    "O4",
    "N2",
    "Cl",
    "Li2O2",
    "LiO",
    "Na4O4",
    "KO",
    "H2O2",
    "LiO2",
    "Cs3O3",
    # Not whole, nested, hydrated, noble gases.
    "Fe0.5O",
    "Na0.33333333333CoO2",
    "Mg(OH)2",
    "CuSO4(H2O)5",
    "Xe",
    "He2Ar",
]


def pymatgen_facts(formula: str) -> tuple:
    """The facts as read from pymatgen's reduced and fractional compositions."""
    parsed = Composition(formula)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No Pauling electronegativity")
        reduced = parsed.reduced_composition
        fractions = parsed.fractional_composition
        return (
            bytes(element.Z for element in fractions),
            tuple(float(amount) for amount in fractions.values()),
            round(sum(element.Z * amount for element, amount in parsed.items())),
            round(sum(element.Z * amount for element, amount in reduced.items())),
            parsed.num_atoms,
            reduced.num_atoms,
            tuple(sorted(round(amount) for amount in reduced.values())),
            reduced.alphabetical_formula,
        )


def own_facts(formula: str) -> tuple:
    parsed = parse_formula(formula)
    return (
        parsed.atomic_numbers,
        parsed.fractions,
        parsed.electrons,
        parsed.reduced_electrons,
        parsed.num_atoms,
        parsed.reduced_num_atoms,
        parsed.reduced_counts,
        parsed.reduced_formula,
    )


@pytest.mark.parametrize("formula", EDGE_CASES)
def test_parsed_facts_equal_pymatgen_derived_compositions(formula: str) -> None:
    assert own_facts(formula) == pymatgen_facts(formula)


def test_special_formulas_keep_pymatgen_factor_of_two() -> None:
    assert parse_formula("LiO").reduced_formula == "Li2 O2"
    assert parse_formula("H").reduced_counts == (2,)
    assert parse_formula("LiO2").reduced_formula == "Li1 O2"


def test_every_tang_formula_parses_as_pymatgen_derives_it() -> None:
    data_dir = os.environ.get("TOPOCLASS_DATA_DIR")
    sources = sorted((Path(data_dir) / "tang2019").glob("*_ccmp.txt")) if data_dir else []
    if not sources:
        pytest.skip("set TOPOCLASS_DATA_DIR to a folder holding tang2019/ to run this test")
    formulas = {
        line.partition(",")[2].strip() for source in sources for line in source.read_text().splitlines()
    }
    formulas.discard("")
    differing = [formula for formula in sorted(formulas) if own_facts(formula) != pymatgen_facts(formula)]
    assert len(formulas) > 8000
    assert differing == []
