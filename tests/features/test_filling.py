import functools

import numpy as np
import pytest

from topoclass.features.filling import NUM_FILLING_FACTS, filling_facts, wyckoff_multiplicities
from topoclass.features.symmetry import spacegroup_feature_table

UNITS, ODD, _, _, SMALLEST_SITE, FILLABLE, SHARE_FILLABLE = range(NUM_FILLING_FACTS)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (1, (1,)),
        (62, (4, 8)),  # Pnma: 4c on mirrors, general 8d
        (199, (4, 6, 12)),  # I2_13: 8a, 12b, 24c in the body-centred cell
        (225, (1, 2, 6, 8, 12, 24, 48)),  # Fm-3m
        (227, (2, 4, 8, 12, 24, 48)),  # Fd-3m: no site holds a lone atom
    ],
)
def test_multiplicities_of_known_groups(number, expected):
    assert wyckoff_multiplicities(number) == expected


def test_a_single_atom_site_exists_exactly_in_symmorphic_groups():
    # Two independent derivations must agree: the full symbols (no screw, no glide)
    # and the orbits (some point is fixed by a whole set of coset representatives).
    table = spacegroup_feature_table()
    symmorphic = {n for n in range(1, 231) if table[n, -2] == 0 and table[n, -1] == 0}
    single_site = {n for n in range(1, 231) if wyckoff_multiplicities(n)[0] == 1}
    assert len(symmorphic) == 73
    assert single_site == symmorphic


def test_general_position_has_one_atom_per_point_operation():
    point_operations = np.exp(spacegroup_feature_table()[1:, -4] * np.log(48))
    largest = [wyckoff_multiplicities(n)[-1] for n in range(1, 231)]
    np.testing.assert_allclose(largest, point_operations, rtol=1e-4)


def test_filling_facts_of_known_materials():
    formulas = ["Bi2Se3", "Cu", "Si", "Ge2Pt2Y"]
    facts = filling_facts(formulas, [166, 225, 227, 4])
    assert facts.shape == (4, NUM_FILLING_FACTS)
    # Bi2Se3 (R-3m): one formula unit per primitive cell, 268 electrons: can be an insulator.
    assert facts[0, UNITS] == 0 and facts[0, FILLABLE] == 1
    # Copper: an odd electron count never fills Kramers-paired bands.
    assert facts[1, ODD] == 1 and facts[1, FILLABLE] == 0
    # Silicon in diamond needs two atoms per cell (the smallest Fd-3m site), 28 electrons.
    assert facts[2, UNITS] == 1 and facts[2, SMALLEST_SITE] == 1 and facts[2, FILLABLE] == 1
    # Ge2Pt2Y in P2_1 (only the 2-fold general position): two formula units, 518 electrons,
    # and 259 Kramers pairs cannot be a sum of 2-fold sites: filling forces a semimetal.
    assert facts[3, UNITS] == 1 and facts[3, ODD] == 0 and facts[3, FILLABLE] == 0
    assert facts[3, SHARE_FILLABLE] == pytest.approx(0.5)


def test_lengths_must_match():
    with pytest.raises(ValueError):
        filling_facts(["NaCl", "Si"], [225])


def _lattice_for(number: int):
    from pymatgen.core import Lattice

    if number <= 2:
        return Lattice.from_parameters(9, 10, 11, 80, 85, 95)
    if number <= 15:
        return Lattice.monoclinic(9, 10, 11, 100)
    if number <= 74:
        return Lattice.orthorhombic(9, 10, 11)
    if number <= 142:
        return Lattice.tetragonal(9, 11)
    if number <= 194:
        return Lattice.hexagonal(9, 11)
    return Lattice.cubic(12)


def test_smallest_cell_never_exceeds_the_real_one():
    # Random crystals: atoms on random points of random groups. The filling facts assume
    # the smallest cell whose atoms fit on Wyckoff positions; a real cell can be larger
    # but never smaller, or a multiplicity would be missing from the table.
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    rng = np.random.default_rng(7)
    checked, exact_above_one = 0, 0
    for number in rng.choice(np.arange(1, 231), size=40, replace=False):
        species = list(rng.choice(["Na", "Cl", "Bi", "Se"], size=int(rng.integers(1, 4)), replace=False))
        # Special positions (0 or 1/2 coordinates) as well as general ones.
        coords = [np.where(rng.random(3) < 0.4, rng.choice([0.0, 0.5], 3), rng.random(3)) for _ in species]
        crystal = Structure.from_spacegroup(int(number), _lattice_for(int(number)), species, coords)
        analyzer = SpacegroupAnalyzer(crystal, symprec=1e-3)
        primitive = analyzer.find_primitive()
        reduced = primitive.composition.reduced_composition
        real_units = primitive.composition.num_atoms / reduced.num_atoms
        facts = filling_facts([reduced.formula], [analyzer.get_space_group_number()])
        smallest = np.rint(2.0 ** facts[0, UNITS])
        assert smallest <= real_units, (number, species, coords)
        checked += 1
        exact_above_one += bool(smallest == real_units > 1)
    assert checked == 40
    assert exact_above_one >= 5  # the bound is tight, not trivially 1


def test_the_shipped_multiplicity_table_is_what_spglib_gives():
    from topoclass.features.filling import compute_wyckoff_multiplicities, wyckoff_multiplicities

    assert all(wyckoff_multiplicities(n) == compute_wyckoff_multiplicities(n) for n in range(1, 231))


@functools.cache
def _sums(multiplicities: tuple[int, ...], up_to: int = 30_000) -> frozenset[int]:
    """Brute force: every count up to ``up_to`` that atoms on sites of these multiplicities make."""
    reachable = {0}
    for value in range(1, up_to + 1):
        if any(value - m in reachable for m in multiplicities):
            reachable.add(value)
    return frozenset(reachable)


def _is_sum(count: int, multiplicities: tuple[int, ...]) -> bool:
    assert count <= 30_000
    return count in _sums(multiplicities)


def _facts_by_definition(counts: list[int], electrons: int, number: int) -> list[float]:
    import math

    sites = wyckoff_multiplicities(number)
    consistent = [u for u in range(1, 49) if all(_is_sum(u * c, sites) for c in counts)]
    fillable = [u for u in consistent if u * electrons % 2 == 0 and _is_sum(u * electrons // 2, sites)]
    units, cell = consistent[0], consistent[0] * electrons
    larger = [u for u in consistent if u <= 4 * units]
    return [
        math.log2(units),
        cell % 2,
        cell % 4 / 3,
        cell % 8 / 7,
        math.log2(sites[0]),
        float(units in fillable),
        sum(u in fillable for u in larger) / len(larger),
    ]


def test_filling_facts_follow_their_definition_on_random_formulas():
    from topoclass.features.formula import parse_formula

    rng = np.random.default_rng(7)
    symbols = ["H", "Li", "O", "Na", "Si", "Cl", "Cu", "Se", "Bi", "Te", "Pt", "Y"]
    formulas, groups = [], []
    for _ in range(150):
        chosen = rng.choice(symbols, size=int(rng.integers(1, 5)), replace=False)
        formulas.append("".join(f"{s}{int(rng.integers(1, 7))}" for s in chosen))
        groups.append(int(rng.choice([1, 2, 14, 62, 166, 194, 199, 216, 221, 225, 227, 229])))
    facts = filling_facts(formulas, groups)
    for row, (formula, number) in enumerate(zip(formulas, groups, strict=True)):
        parsed = parse_formula(formula)
        expected = _facts_by_definition(list(parsed.reduced_counts), parsed.reduced_electrons, number)
        np.testing.assert_array_equal(facts[row], np.asarray(expected, dtype=np.float32), err_msg=formula)
