import numpy as np
import pytest
from pymatgen.core import Element

from topoclass.features.composition import (
    MAX_Z,
    composition_descriptors,
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


def test_descriptors_keep_counts_and_electron_parity():
    descriptors = composition_descriptors(["Bi2Se3", "Bi4Se6", "NaCl", "Na1"])
    # Bi2Se3: 2*83 + 3*34 = 268 electrons (even); Na: 11 (odd).
    assert descriptors[0, 0] == 0 and descriptors[3, 0] == 1
    # The reduced formula of Bi4Se6 is Bi2Se3: same reduced parity, different absolute size.
    assert descriptors[1, 2] == descriptors[0, 2]
    assert descriptors[1, 5] > descriptors[0, 5]


def test_noble_gas_formulas_do_not_leak_pymatgen_warnings_to_the_user(recwarn):
    from topoclass.features.composition import material_descriptors

    for symbol in ("Ar", "Kr", "Xe"):  # pymatgen caches the value and warns only the first time
        vars(Element(symbol)).pop("X", None)
    material_descriptors(["ArBi2", "KrF2", "XeO3"], [12, 136, 19])
    assert not [w for w in recwarn if "electronegativity" in str(w.message)]
