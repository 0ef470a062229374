from pymatgen.core import Lattice, Structure

from topoclass.config import GraphConfig
from topoclass.data.prepare import attach_structures
from topoclass.data.records import Material, StructureRef


def rock_salt_poscar() -> StructureRef:
    structure = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    return StructureRef(text=structure.to(fmt="poscar"), format="poscar")


def test_given_space_groups_are_kept_and_missing_ones_derived():
    ref = rock_salt_poscar()
    materials = [
        Material("derived", "", None, structure=ref),
        Material("declared", "", 216, structure=ref),  # the user's own value wins over the search
        Material("no-structure", "Bi2Se3", 166),
        Material("bad", "", None, structure=StructureRef(text="not a structure", format="poscar")),
    ]
    kept, rejects, store, rows = attach_structures(materials, GraphConfig(), workers=1)
    by_id = {m.id: (m, row) for m, row in zip(kept, rows, strict=True)}
    assert by_id["derived"][0].spacegroup == 225 and by_id["derived"][0].formula == "NaCl"
    assert by_id["declared"][0].spacegroup == 216 and by_id["declared"][0].formula == "NaCl"
    assert by_id["no-structure"][1] == -1 and by_id["no-structure"][0].spacegroup == 166
    assert [r.id for r in rejects] == ["bad"] and len(store) == 2
