import numpy as np

from topoclass.features.symmetry import spacegroup_feature_table

# Column layout: 7 crystal systems, 7 centrings, 32 point groups, then
# centrosymmetric, polar, chiral (Sohncke), log order, number, screw axis, glide plane.
CENTRO, POLAR, CHIRAL, LOG_ORDER, SCREW, GLIDE = -7, -6, -5, -4, -2, -1


def test_table_shape_and_padding():
    table = spacegroup_feature_table()
    assert table.shape[0] == 231
    assert np.all(table[0] == 0)
    assert table[1:, 14:46].sum(axis=1).tolist() == [1.0] * 230  # exactly one point group each


def test_known_space_groups():
    table = spacegroup_feature_table()
    # P1: triclinic, polar, chiral, not centrosymmetric.
    assert table[1, 0] == 1 and table[1, CENTRO] == 0 and table[1, POLAR] == 1 and table[1, CHIRAL] == 1
    # P-1: centrosymmetric, not polar.
    assert table[2, CENTRO] == 1 and table[2, POLAR] == 0
    # R-3m (Bi2Se3): trigonal, centrosymmetric, R-centred.
    assert table[166, 4] == 1 and table[166, CENTRO] == 1 and table[166, 7 + 6] == 1
    # Fm-3m: cubic, F-centred, 48 point operations (log order normalised to 1).
    assert table[225, 6] == 1 and table[225, 7 + 5] == 1 and np.isclose(table[225, LOG_ORDER], 1.0)
    # P2_13: cubic, chiral, not centrosymmetric.
    assert table[198, CHIRAL] == 1 and table[198, CENTRO] == 0


def test_exactly_73_space_groups_are_symmorphic():
    table = spacegroup_feature_table()
    symmorphic = (table[1:, SCREW] == 0) & (table[1:, GLIDE] == 0)
    assert symmorphic.sum() == 73
    # Fm-3m and I23 are symmorphic; Pnma (P 2_1/n 2_1/m 2_1/a) and diamond Fd-3m (F 4_1/d -3 2/m)
    # have screws and glides; P2_13 only screws.
    assert symmorphic[225 - 1] and symmorphic[197 - 1]
    assert table[62, SCREW] == 1 and table[62, GLIDE] == 1
    assert table[227, SCREW] == 1 and table[227, GLIDE] == 1
    assert table[198, SCREW] == 1 and table[198, GLIDE] == 0
