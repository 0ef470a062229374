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
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import numpy as np

from topoclass.features.formula import ParsedFormula, parse_formula
from topoclass.features.symmetry import symmetry_operations

NUM_FILLING_FACTS = 7
WYCKOFF_TABLE = "wyckoff_multiplicities.json"
# Every special position of the 230 groups has coordinates in multiples of 1/24
# (1/8 in Fd-3m, 1/3 and 1/6 in hexagonal groups), so a 24-point grid meets them all.
_GRID = 24
# Larger cells are not a plausible reading of a formula. A cell of as many formula units
# as the general position's multiplicity (at most 48) is always consistent, so one is found.
_MAX_FORMULA_UNITS = 48
# Materials whose facts are computed together: bounds the [block, 48, elements] arrays (~10 MB).
_BLOCK = 4096


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


@dataclass(frozen=True)
class _SumTables:
    """Which counts are sums of each group's Wyckoff multiplicities (numerical semigroups), as
    arrays indexed by group number."""

    step: np.ndarray  # [231]
    limit: np.ndarray  # [231]
    reachable: np.ndarray  # [231, largest limit + 1]
    smallest_site: np.ndarray  # [231] log2 of the smallest multiplicity

    def holds(self, numbers: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Element-wise: is ``count`` a sum of group ``number``'s multiplicities (``numbers`` broadcast
        against ``counts``)."""
        limit = self.limit[numbers]
        capped = np.minimum(counts, limit)
        return (counts % self.step[numbers] == 0) & ((counts > limit) | self.reachable[numbers, capped])


@cache
def _sum_tables() -> _SumTables:
    multiplicities = {number: wyckoff_multiplicities(number) for number in range(1, 231)}
    step, limit = np.ones(231, np.int64), np.zeros(231, np.int64)
    # Past smallest * largest every multiple of the gcd is a sum (Schur's bound).
    for number, values in multiplicities.items():
        step[number], limit[number] = math.gcd(*values), values[0] * values[-1]
    reachable = np.zeros((231, int(limit.max()) + 1), dtype=bool)
    reachable[:, 0] = True
    smallest_site = np.zeros(231)
    for number, values in multiplicities.items():
        for m in values:
            for value in range(m, int(limit[number]) + 1):
                reachable[number, value] |= reachable[number, value - m]
        smallest_site[number] = math.log2(values[0])
    return _SumTables(step, limit, reachable, smallest_site)


def filling_facts(formulas: Sequence[str], spacegroups: Sequence[int]) -> np.ndarray:
    """Band-filling facts per material, shape [N, NUM_FILLING_FACTS].

    Columns: log2 of the smallest consistent formula units per primitive cell,
    electrons in that cell modulo 2, 4 and 8, log2 of the smallest Wyckoff
    multiplicity, whether that cell's electrons can fill bands, and the share of
    the consistent cells up to four times as large that can.
    """
    if len(formulas) != len(spacegroups):
        raise ValueError(f"{len(formulas)} formulas but {len(spacegroups)} space groups")
    out = np.zeros((len(formulas), NUM_FILLING_FACTS), dtype=np.float32)
    for start in range(0, len(formulas), _BLOCK):
        parsed = [parse_formula(formula) for formula in formulas[start : start + _BLOCK]]
        numbers = np.asarray(spacegroups[start : start + _BLOCK], dtype=np.int64)
        out[start : start + len(parsed)] = _block_facts(parsed, numbers)
    return out


def _block_facts(parsed: list[ParsedFormula], numbers: np.ndarray) -> np.ndarray:
    """The facts of a block of formulas at once: [materials, candidate cells, elements] arrays."""
    tables = _sum_tables()
    # Absent elements count 0 atoms, which always fit.
    counts = np.zeros((len(parsed), max(len(p.reduced_counts) for p in parsed)), dtype=np.int64)
    for row, formula in enumerate(parsed):
        counts[row, : len(formula.reduced_counts)] = formula.reduced_counts
    electrons = np.asarray([p.reduced_electrons for p in parsed], dtype=np.int64)
    units = np.arange(1, _MAX_FORMULA_UNITS + 1)
    # A cell of u formula units: every element's u * count atoms must sit on Wyckoff positions.
    consistent = tables.holds(numbers[:, None, None], units[None, :, None] * counts[:, None, :]).all(axis=2)
    cell_electrons = units[None, :] * electrons[:, None]
    # With spin-orbit coupling, a filling needs an even electron count, twice a sum of multiplicities.
    fillable = (cell_electrons % 2 == 0) & tables.holds(numbers[:, None], cell_electrons // 2) & consistent
    smallest = consistent.argmax(axis=1)  # a cell of _MAX_FORMULA_UNITS is always consistent
    larger = consistent & (units[None, :] <= 4 * units[smallest][:, None])
    electrons_in_cell = units[smallest] * electrons
    return np.stack(
        [
            np.log2(units[smallest]),
            electrons_in_cell % 2,
            electrons_in_cell % 4 / 3,
            electrons_in_cell % 8 / 7,
            tables.smallest_site[numbers],
            fillable[np.arange(len(parsed)), smallest],
            (fillable & larger).sum(axis=1) / larger.sum(axis=1),
        ],
        axis=1,
    )
