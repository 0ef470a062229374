"""Space-group facts derived from spglib's symmetry database.

Each of the 230 space groups gets a fixed feature vector: crystal system,
lattice centring, point group, centrosymmetry, polarity, chirality, the
number of point operations, and whether the group has screw axes or glide
planes (nonsymmorphic operations force bands to stick together in pairs or
fours, which decides whether a given electron count can fill them). All of it
is computed from spglib's database, so no table is typed by hand.
"""

from __future__ import annotations

import re
import warnings
from functools import lru_cache

import numpy as np
import spglib

from topoclass.features.shipped_tables import SPACEGROUP_FEATURES, shipped_table

NUM_SPACEGROUPS = 230
_CRYSTAL_SYSTEM_FIRST_NUMBER = (1, 3, 16, 75, 143, 168, 195)  # triclinic ... cubic (ITA ranges)
_CENTRINGS = ("P", "A", "B", "C", "I", "F", "R")
_LAST_HALL_NUMBER = 530


def spacegroup_type(hall_number: int) -> spglib.SpaceGroupType:
    """spglib's description of one Hall setting (1..530)."""
    found = spglib.get_spacegroup_type(hall_number)
    if found is None:
        raise ValueError(f"spglib has no Hall setting {hall_number}")
    return found


def symmetry_operations(number: int) -> dict[str, np.ndarray]:
    """Rotations and translations of space group ``number`` in its standard setting."""
    with warnings.catch_warnings():
        # spglib announces a change of its error handling on every database call.
        warnings.simplefilter("ignore", DeprecationWarning)
        operations = spglib.get_symmetry_from_database(representative_hall_numbers()[number])
    if operations is None:
        raise ValueError(f"spglib has no symmetry operations for space group {number}")
    return operations


@lru_cache(maxsize=1)
def representative_hall_numbers() -> dict[int, int]:
    """Space-group number -> the first (standard) Hall setting spglib lists for it."""
    hall: dict[int, int] = {}
    for hall_number in range(1, _LAST_HALL_NUMBER + 1):
        hall.setdefault(spacegroup_type(hall_number).number, hall_number)
    return hall


def _has_invariant_direction(rotations: np.ndarray) -> bool:
    """Polar point groups leave some direction fixed under every rotation."""
    stacked = np.concatenate([r - np.eye(3) for r in rotations], axis=0)
    return np.linalg.matrix_rank(stacked.astype(float)) < 3


@lru_cache(maxsize=1)
def _point_group_symbols() -> list[str]:
    symbols = {spacegroup_type(h).pointgroup_international for h in range(1, _LAST_HALL_NUMBER + 1)}
    return sorted(symbols)


def _nonsymmorphic_elements(symbol: str) -> tuple[float, float]:
    """(has a screw axis, has a glide plane) from the full Hermann-Mauguin symbol after the lattice letter.

    A space group is symmorphic exactly when its symbol is a lattice letter followed by a
    point-group symbol (73 groups); screws are written with ``_`` and glides with a, b, c,
    n, d or e.
    """
    operations = symbol[1:]
    return float("_" in operations), float(re.search(r"[abcnde]", operations) is not None)


def spacegroup_feature_table() -> np.ndarray:
    """Feature vectors for space groups 1..230, shape [231, F]; row 0 is padding (zeros).

    The table shipped with topoclass (read-only), as :func:`compute_spacegroup_feature_table`
    derives it from spglib's database.
    """
    return shipped_table(SPACEGROUP_FEATURES)


def spacegroup_features(numbers: np.ndarray) -> np.ndarray:
    """The feature vectors of space groups ``numbers`` (0: padding, zeros), shape [N, F]."""
    numbers = np.asarray(numbers, dtype=np.int64)
    outside = numbers[(numbers < 0) | (numbers > NUM_SPACEGROUPS)]
    if outside.size:
        raise ValueError(f"no space group {int(outside[0])} (1-{NUM_SPACEGROUPS})")
    return spacegroup_feature_table()[numbers]


def compute_spacegroup_feature_table() -> np.ndarray:
    """The space-group feature table from spglib's database."""
    return np.stack([_spacegroup_row(number) for number in range(NUM_SPACEGROUPS + 1)])


def _spacegroup_row(number: int) -> np.ndarray:
    if number == 0:
        return np.zeros_like(_spacegroup_row(1))
    with warnings.catch_warnings():
        # spglib announces a change of its error handling on every database call.
        warnings.simplefilter("ignore", DeprecationWarning)
        sg_type = spacegroup_type(representative_hall_numbers()[number])
        rotations = symmetry_operations(number)["rotations"]
    unique_rotations = np.unique(rotations.reshape(len(rotations), -1), axis=0).reshape(-1, 3, 3)
    system = np.searchsorted(_CRYSTAL_SYSTEM_FIRST_NUMBER, number, side="right") - 1
    features = np.concatenate(
        [
            np.eye(len(_CRYSTAL_SYSTEM_FIRST_NUMBER))[system],
            [float(sg_type.international_short[0] == c) for c in _CENTRINGS],
            [float(sg_type.pointgroup_international == p) for p in _point_group_symbols()],
            [
                float(any(np.array_equal(r, -np.eye(3, dtype=int)) for r in unique_rotations)),
                float(_has_invariant_direction(unique_rotations)),
                float(all(round(np.linalg.det(r)) == 1 for r in unique_rotations)),
                np.log(len(unique_rotations)) / np.log(48),
                number / NUM_SPACEGROUPS,
                *_nonsymmorphic_elements(sg_type.international_full),
            ],
        ]
    )
    return features.astype(np.float32)
