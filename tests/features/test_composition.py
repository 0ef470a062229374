import numpy as np
import pytest
from pymatgen.core import Element

from topoclass.features.composition import (
    MAX_Z,
    element_property_table,
    encode_compositions,
    parse_composition,
)


def test_fractions_sum_to_one_and_match_formula():
    fractions = parse_composition("Bi2Se3")
    assert fractions == pytest.approx({83: 0.4, 34: 0.6})


def test_encoding_pads_with_zero_index():
    index, fraction = encode_compositions(["Bi2Se3", "NaCl", "Al1Cl7Se1"])
    assert index.shape == (3, 3)
    assert index[0].tolist() == [34, 83, 0]
    assert fraction[1, 2] == 0.0
    np.testing.assert_allclose(fraction.sum(axis=1), 1.0, rtol=1e-6)


def test_unparsable_formula_raises():
    with pytest.raises(ValueError):
        parse_composition("Bi2Se3)(")


def test_element_table_is_standardized_and_orders_elements():
    table = element_property_table()
    assert table.shape[0] == MAX_Z + 1
    assert not np.isnan(table).any()
    assert np.all(table[0] == 0)  # padding row
    # Column 1 is electronegativity (standardized): F is the most electronegative element.
    x = table[1:, 1]
    assert int(np.argmax(x)) + 1 == Element("F").Z
    assert table[Element("Bi").Z, 0] > table[Element("Se").Z, 0]  # standardized Z keeps its order
