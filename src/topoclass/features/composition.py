"""Composition features: element indices with fractions, and an element property table.

A formula becomes a short set of (element, fraction) pairs that the composition
encoder attends over. Element properties come from pymatgen's periodic table, so
no property is typed in by hand here; the table travels with the model as a
buffer, which is why predictions never depend on a separately shipped file.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from pymatgen.core import Element

from topoclass.features.filling import NUM_FILLING_FACTS, filling_facts
from topoclass.features.formula import parse_formula
from topoclass.features.shipped_tables import ELEMENT_PROPERTIES, shipped_table

MAX_Z = 118  # every element pymatgen knows; missing properties are filled and flagged

_SCALAR_PROPERTIES = (
    "Z",
    "X",
    "row",
    "group",
    "atomic_mass",
    "atomic_radius",
    "mendeleev_no",
    "ionization_energy",
    "electron_affinity",
    "melting_point",
    "molar_volume",
    "average_ionic_radius",
)
_BLOCKS = ("s", "p", "d", "f")
NUM_FORMULA_FACTS = 8
NUM_DESCRIPTORS = NUM_FORMULA_FACTS + NUM_FILLING_FACTS


def _valence_shell_counts(element: Element) -> list[float]:
    """Electrons in the outer s, p, d, f subshells: what spin-orbit physics cares about."""
    try:
        shells = element.full_electronic_structure
    except (KeyError, ValueError):  # superheavy elements have no tabulated configuration
        return [math.nan] * len(_BLOCKS)
    outer_n = max(n for n, _, _ in shells)
    counts = dict.fromkeys(_BLOCKS, 0.0)
    for n, orbital, electrons in shells:
        depth = {"s": 0, "p": 0, "d": 1, "f": 2}[orbital]
        if n == outer_n - depth:
            counts[orbital] = float(electrons)
    return [counts[b] for b in _BLOCKS]


def _scalar(element: Element, name: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every untabulated value
        try:
            value = getattr(element, name)
        except (AttributeError, ValueError, KeyError):
            return math.nan
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def element_property_table() -> np.ndarray:
    """Standardized element properties, shape [MAX_Z + 1, P]; row 0 is padding (zeros).

    The table shipped with topoclass (read-only), as :func:`compute_element_property_table`
    derives it from pymatgen.
    """
    return shipped_table(ELEMENT_PROPERTIES)


def compute_element_property_table() -> np.ndarray:
    """The element property table from pymatgen's periodic table.

    Missing values are filled with the column median and flagged in an extra
    column per property, so the model can tell a real value from a filled one.
    """
    rows = []
    for z in range(1, MAX_Z + 1):
        element = Element.from_Z(z)
        scalars = [_scalar(element, name) for name in _SCALAR_PROPERTIES]
        block = [1.0 if element.block == b else 0.0 for b in _BLOCKS]
        rows.append([*scalars, math.log(z), *block, *_valence_shell_counts(element)])
    table = np.asarray(rows, dtype=np.float64)
    missing = np.isnan(table)
    table = np.where(missing, np.nanmedian(table, axis=0), table)
    mean, std = table.mean(axis=0), table.std(axis=0)
    table = (table - mean) / np.where(std > 0, std, 1.0)
    flagged = missing.any(axis=0)  # one flag column per property that has gaps
    table = np.concatenate([table, missing[:, flagged].astype(np.float64)], axis=1)
    return np.vstack([np.zeros((1, table.shape[1])), table]).astype(np.float32)


def parse_composition(formula: str) -> dict[int, float]:
    """Atomic number -> atomic fraction. Raises ValueError for unparsable formulas."""
    parsed = parse_formula(formula)
    return dict(zip(parsed.atomic_numbers, parsed.fractions, strict=True))


@contextmanager
def quiet_electronegativity() -> Iterator[None]:
    """Silence pymatgen's "No Pauling electronegativity for Ar" (it sorts elements by it).

    Noble gases have none; nothing here depends on that order, and the warning would reach
    the user once per such element.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No Pauling electronegativity")
        yield


def material_descriptors(formulas: Sequence[str], spacegroups: Sequence[int]) -> np.ndarray:
    """Whole-material facts, shape [N, NUM_DESCRIPTORS]: the formula's, then band filling's."""
    with quiet_electronegativity():
        return np.hstack([composition_descriptors(formulas), filling_facts(formulas, spacegroups)])


def composition_descriptors(formulas: Sequence[str]) -> np.ndarray:
    """Whole-formula facts that fractions lose, shape [N, NUM_FORMULA_FACTS].

    Electron-count parity matters physically: an odd number of electrons per
    cell cannot fill bands completely, so filling alone can enforce a
    semimetal. Fractions forget absolute counts, so counts and parities of both
    the formula as given and its reduced form are kept here.
    """
    rows = []
    for formula in formulas:
        parsed = parse_formula(formula)
        electrons, reduced_electrons, atoms = parsed.electrons, parsed.reduced_electrons, parsed.num_atoms
        rows.append(
            [
                electrons % 2,
                electrons % 4 / 3,
                reduced_electrons % 2,
                round(atoms) % 2,
                round(parsed.reduced_num_atoms) % 2,
                math.log(atoms),
                math.log(parsed.reduced_num_atoms),
                len(parsed.atomic_numbers) / 8,
            ]
        )
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), NUM_FORMULA_FACTS)


def encode_compositions(formulas: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pad compositions to a common width: element indices [N, E] (0 = pad) and fractions [N, E]."""
    parsed = [sorted(parse_composition(f).items()) for f in formulas]
    width = max((len(p) for p in parsed), default=1)
    index = np.zeros((len(parsed), width), dtype=np.int64)
    fraction = np.zeros((len(parsed), width), dtype=np.float32)
    for row, pairs in enumerate(parsed):
        for col, (z, frac) in enumerate(pairs):
            index[row, col] = z
            fraction[row, col] = frac
    return index, fraction
