"""Band filling: could this formula, in this space group, fill its bands completely?

With spin-orbit coupling and time reversal, a band insulator needs an electron
count per primitive cell that atoms sitting on the group's Wyckoff positions
could supply: twice a sum of Wyckoff multiplicities (Watanabe, Po, Zaletel and
Vishwanath, PRL 117, 096404, 2016). Any other count forces a metal or a
semimetal, which is most of what separates the topological semimetals from the
trivial insulators. A formula does not say how many formula units a primitive
cell holds, so the smallest count for which every element's atoms fit on the
group's Wyckoff positions is assumed, and the facts are stated for it.

The multiplicities are computed from spglib's symmetry operations, as orbit
sizes of points on a fine grid (spglib and pymatgen do not expose Wyckoff
multiplicities without a structure, and the one package that tabulates them
brings a dozen dependencies for one table); the result for all 230 groups ships
as a small table, and a test recomputes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import cache, lru_cache
from importlib.resources import files

import numpy as np

from topoclass.features.formula import parse_formula
from topoclass.features.symmetry import symmetry_operations

NUM_FILLING_FACTS = 7
WYCKOFF_TABLE = "wyckoff_multiplicities.json"
# Every special position of the 230 groups has coordinates in multiples of 1/24
# (1/8 in Fd-3m, 1/3 and 1/6 in hexagonal groups), so a 24-point grid meets them all.
_GRID = 24
# Larger cells are not a plausible reading of a formula. A cell of as many formula units
# as the general position's multiplicity (at most 48) is always consistent, so one is found.
_MAX_FORMULA_UNITS = 48


def wyckoff_multiplicities(number: int) -> tuple[int, ...]:
    """Distinct Wyckoff multiplicities of space group ``number``, counted in the primitive cell.

    Read from the table shipped with topoclass (``wyckoff_multiplicities.json``), which
    :func:`compute_wyckoff_multiplicities` made from spglib's operations; computing all 230
    takes seconds, reading them a millisecond.
    """
    return _shipped_multiplicities()[number]


@cache
def _shipped_multiplicities() -> dict[int, tuple[int, ...]]:
    table = json.loads(files("topoclass.features").joinpath(WYCKOFF_TABLE).read_text())
    return {int(number): tuple(values) for number, values in table.items()}


def compute_wyckoff_multiplicities(number: int) -> tuple[int, ...]:
    """The multiplicities from spglib's symmetry operations, as orbit sizes of grid points."""
    operations = symmetry_operations(number)
    rotations, translations = operations["rotations"], operations["translations"]
    centring = sum(np.array_equal(r, np.eye(3)) for r in rotations)
    shifts = np.rint(translations * _GRID).astype(np.int32)
    axis = np.arange(_GRID)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int32)
    # Images of every grid point under every operation, [points, ops, 3].
    images = (np.einsum("oij,pj->poi", rotations.astype(np.int32), points) + shifts) % _GRID
    codes = np.sort((images[..., 0] * _GRID + images[..., 1]) * _GRID + images[..., 2], axis=1)
    orbit_sizes = 1 + np.count_nonzero(np.diff(codes, axis=1), axis=1)
    return tuple(int(size) // centring for size in np.unique(orbit_sizes))


class _WyckoffSums:
    """Which counts are sums of a group's Wyckoff multiplicities (a numerical semigroup)."""

    def __init__(self, multiplicities: tuple[int, ...]) -> None:
        self.step = math.gcd(*multiplicities)
        # Past smallest * largest every multiple of the gcd is a sum (Schur's bound).
        self.limit = multiplicities[0] * multiplicities[-1]
        reachable = np.zeros(self.limit + 1, dtype=bool)
        reachable[0] = True
        for m in multiplicities:
            for value in range(m, self.limit + 1):
                reachable[value] |= reachable[value - m]
        self.reachable = reachable

    def __contains__(self, count: int) -> bool:
        if count % self.step:
            return False
        return count > self.limit or bool(self.reachable[count])

    def holds(self, counts: np.ndarray) -> np.ndarray:
        """Element-wise ``count in self`` for an array of non-negative counts."""
        capped = np.minimum(counts, self.limit)
        return (counts % self.step == 0) & ((counts > self.limit) | self.reachable[capped])


@cache
def _wyckoff_sums(number: int) -> _WyckoffSums:
    return _WyckoffSums(wyckoff_multiplicities(number))


def filling_facts(formulas: Sequence[str], spacegroups: Sequence[int]) -> np.ndarray:
    """Band-filling facts per material, shape [N, NUM_FILLING_FACTS].

    Columns: log2 of the smallest consistent formula units per primitive cell,
    electrons in that cell modulo 2, 4 and 8, log2 of the smallest Wyckoff
    multiplicity, whether that cell's electrons can fill bands, and the share of
    the consistent cells up to four times as large that can.
    """
    rows = [_facts(formula, int(number)) for formula, number in zip(formulas, spacegroups, strict=True)]
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), NUM_FILLING_FACTS)


def _facts(formula: str, number: int) -> tuple[float, ...]:
    parsed = parse_formula(formula)
    return _cell_facts(parsed.reduced_counts, parsed.reduced_electrons, number)


@lru_cache(maxsize=1 << 12)
def _cell_facts(counts: tuple[int, ...], electrons: int, number: int) -> tuple[float, ...]:
    """The facts depend on a formula only through its atom counts and electrons: many formulas share them.

    The cache is bounded (about 2 MB full, 0.5 kB an entry): it lives as long as the process,
    and a dataset's materials are mostly distinct keys.
    """
    sums = _wyckoff_sums(number)
    smallest_site = math.log2(min(wyckoff_multiplicities(number)))
    candidates = np.arange(1, _MAX_FORMULA_UNITS + 1)
    # A cell of u formula units: every element's u * count atoms must sit on Wyckoff positions.
    consistent = candidates[sums.holds(np.outer(candidates, np.asarray(counts))).all(axis=1)]
    cell_electrons = consistent * electrons
    # With spin-orbit coupling, a filling needs an even electron count, twice a sum of multiplicities.
    fillable = (cell_electrons % 2 == 0) & sums.holds(cell_electrons // 2)
    units = int(consistent[0])
    larger = consistent <= 4 * units
    electrons_in_cell = units * electrons
    return (
        math.log2(units),
        electrons_in_cell % 2,
        electrons_in_cell % 4 / 3,
        electrons_in_cell % 8 / 7,
        smallest_site,
        float(fillable[0]),
        float(fillable[larger].sum()) / int(larger.sum()),
    )
