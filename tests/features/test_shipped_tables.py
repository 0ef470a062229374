"""The tables shipped with topoclass are what their libraries give today, to the last bit."""

from __future__ import annotations

import numpy as np
import pytest

from topoclass.features.shipped_tables import derivations, shipped_table


@pytest.mark.parametrize("name", sorted(derivations()))
def test_shipped_table_equals_its_derivation(name: str) -> None:
    shipped = shipped_table(name)
    derived = derivations()[name]()
    assert shipped.dtype == np.float32 and shipped.shape == derived.shape
    np.testing.assert_array_equal(shipped, derived)


def test_shipped_tables_are_read_only() -> None:
    for name in derivations():
        with pytest.raises(ValueError):
            shipped_table(name)[0, 0] = 1.0


def test_unknown_space_group_is_refused_by_number() -> None:
    from topoclass.features.symmetry import spacegroup_features

    with pytest.raises(ValueError, match="no space group 231"):
        spacegroup_features(np.array([1, 231]))
