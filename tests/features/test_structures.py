from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Composition, DummySpecies, Lattice, Structure
from pymatgen.io.cif import CifWriter
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from topoclass.data.records import StructureRef
from topoclass.errors import DataError
from topoclass.features.structures import (
    check_structure,
    read_structure,
    reduced_formula,
    search_spacegroup,
    spglib_spacegroup,
    structure_format,
)

CUTOFF = 6.0


FCC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def rock_salt() -> Structure:
    """Conventional NaCl cell, 8 atoms (explicit sites: pymatgen's from_spacegroup takes seconds)."""
    return Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4, np.vstack([FCC, (FCC + 0.5) % 1.0]))


def same_structure(a: Structure, b: Structure) -> bool:
    return (
        np.allclose(a.lattice.abc, b.lattice.abc, atol=1e-5)
        and np.allclose(a.lattice.angles, b.lattice.angles, atol=1e-4)
        and [s.symbol for s in a.species] == [s.symbol for s in b.species]
        and np.allclose(a.frac_coords % 1.0, b.frac_coords % 1.0, atol=1e-5)
    )


def test_cif_read_with_gemmi_matches_pymatgen(tmp_path):
    path = tmp_path / "nacl.cif"
    path.write_text(str(CifWriter(rock_salt())))
    structure = read_structure(StructureRef(path=path))
    assert same_structure(structure, Structure.from_file(path))
    assert len(structure) == 8


def test_symmetrized_cif_is_expanded_to_the_full_cell(tmp_path):
    path = tmp_path / "nacl_sym.cif"
    path.write_text(str(CifWriter(rock_salt(), symprec=0.1)))  # two sites plus the Fm-3m operations
    assert len(read_structure(StructureRef(path=path))) == 8


def test_cif_with_empty_trailing_loop_still_reads(tmp_path):
    # Some tqc2020 files end with a bond loop that has no rows; pymatgen's parser fails on them.
    path = tmp_path / "bonds.cif"
    path.write_text(
        str(CifWriter(rock_salt())) + "loop_\n_geom_bond_atom_site_label_1\n_geom_bond_distance\n"
    )
    assert len(read_structure(StructureRef(path=path))) == 8


@pytest.mark.parametrize("name", ["POSCAR", "CONTCAR_relaxed", "nacl.vasp"])
def test_poscar_files_by_name(tmp_path, name):
    path = tmp_path / name
    rock_salt().to(filename=str(path), fmt="poscar")
    assert same_structure(read_structure(StructureRef(path=path)), rock_salt())


def test_extxyz_and_json_files(tmp_path):
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    xyz = tmp_path / "nacl.xyz"
    ase.io.write(xyz, AseAtomsAdaptor.get_atoms(rock_salt()), format="extxyz")
    assert same_structure(read_structure(StructureRef(path=xyz)), rock_salt())
    js = tmp_path / "nacl.json"
    js.write_text(json.dumps(rock_salt().as_dict()))
    assert same_structure(read_structure(StructureRef(path=js)), rock_salt())


def test_inline_text_formats_are_sniffed():
    structure = rock_salt()
    texts = {
        "cif": str(CifWriter(structure)),
        "poscar": structure.to(fmt="poscar"),
        "json": json.dumps(structure.as_dict()),
    }
    for fmt, text in texts.items():
        ref = StructureRef(text=text)
        assert structure_format(ref) == fmt
        assert same_structure(read_structure(ref), structure)


def test_explicit_format_wins_over_the_file_name(tmp_path):
    path = tmp_path / "structure.txt"
    path.write_text(rock_salt().to(fmt="poscar"))
    assert len(read_structure(StructureRef(path=path, format="POSCAR"))) == 8
    with pytest.raises(DataError, match=r"structure\.txt"):
        structure_format(StructureRef(path=path))
    with pytest.raises(DataError, match="unknown structure format 'pdbx'"):
        structure_format(StructureRef(path=path, format="pdbx"))


def test_unreadable_inputs_are_one_line_data_errors(tmp_path):
    garbage = tmp_path / "garbage.cif"
    garbage.write_text("this is not a crystal\n")
    cases = [
        StructureRef(path=garbage),
        StructureRef(path=tmp_path / "missing.cif"),
        StructureRef(text="Na\n1.0\nnot numbers\n", format="poscar"),
        StructureRef(text='{"not": "a structure"}', format="json"),
    ]
    for ref in cases:
        with pytest.raises(DataError) as info:
            read_structure(ref)
        message = str(info.value)
        assert "\n" not in message and ref.describe() in message


def test_partial_occupancy_falls_back_to_pymatgen_and_is_rejected(tmp_path):
    disordered = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    path = tmp_path / "alloy.cif"
    path.write_text(str(CifWriter(disordered)))
    structure = read_structure(StructureRef(path=path))
    assert not structure.is_ordered
    assert "disordered" in check_structure(structure, cutoff=CUTOFF)


def test_check_accepts_a_good_crystal():
    assert check_structure(rock_salt(), cutoff=CUTOFF) is None


def test_check_finds_overlap_across_the_cell_boundary():
    # 0.01 and 0.99 of a 10 Å cell are 0.2 Å apart through the periodic boundary.
    structure = Structure(Lattice.cubic(10.0), ["Na", "Cl"], [[0.01, 0, 0], [0.99, 0, 0]])
    reason = check_structure(structure, cutoff=CUTOFF)
    assert reason is not None and "overlap" in reason and "0.200" in reason


def test_check_finds_atoms_without_neighbours():
    structure = Structure(Lattice.cubic(20.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    reason = check_structure(structure, cutoff=CUTOFF)
    assert reason is not None and "no neighbour within 6.0" in reason


def test_check_rejects_dummy_species_and_flat_cells():
    dummy = Structure(Lattice.cubic(3.0), [DummySpecies("X")], [[0, 0, 0]])
    assert "dummy" in check_structure(dummy, cutoff=CUTOFF)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = Structure(Lattice([[3, 0, 0], [0, 3, 0], [3, 3, 0]]), ["Na"], [[0, 0, 0]])
    assert "volume" in check_structure(flat, cutoff=CUTOFF)


def test_formula_and_spacegroup_tolerate_small_distortions():
    structure = rock_salt()
    assert (reduced_formula(structure), spglib_spacegroup(structure, 0.1)) == ("NaCl", 225)
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(len(structure), 3))
    shifts = (
        directions
        / np.linalg.norm(directions, axis=1, keepdims=True)
        * rng.uniform(0.005, 0.01, (len(structure), 1))
    )
    for index, shift in enumerate(
        shifts
    ):  # each atom 0.005 to 0.01 Å off its site: well inside symprec 0.1 Å
        structure.translate_sites([index], shift, frac_coords=False)
    assert spglib_spacegroup(structure, 0.1) == 225
    assert spglib_spacegroup(structure, 1e-4) != 225


def test_moyopy_finds_the_groups_spglib_finds_and_keeps_its_orbit_warnings_out_of_the_log(caplog):
    salt = rock_salt()
    salt.make_supercell([2, 1, 1])  # a tetragonal cell of a cubic crystal: moyopy warns about orbits
    distorted = salt.copy()
    distorted.translate_sites([0], [0.3, 0.0, 0.0], frac_coords=False)  # beyond 0.1 Å: not rock salt
    with caplog.at_level(logging.WARNING):
        found = [search_spacegroup(s, 0.1, how) for s in (salt, distorted) for how in ("spglib", "moyopy")]
    assert found[:2] == [225, 225] and found[2] == found[3] != 225
    assert not [record for record in caplog.records if record.name.startswith("moyo")]


def test_formula_is_fully_reduced_with_explicit_counts():
    oxygen = Structure(Lattice.cubic(3.0), ["O", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert reduced_formula(oxygen) == "O"  # pymatgen would say "O2"
    bi2se3 = Structure(Lattice.cubic(9.0), ["Bi"] * 4 + ["Se"] * 6, np.random.default_rng(1).random((10, 3)))
    assert reduced_formula(bi2se3) == "Bi2Se3"


def tqc2020_cifs(count: int) -> list[Path]:
    value = os.environ.get("TOPOCLASS_DATA_DIR")
    folder = Path(value) / "tqc2020" / "structures" if value else None
    if folder is None or not folder.is_dir():
        pytest.skip("set TOPOCLASS_DATA_DIR to a folder holding tqc2020/ to run this test")
    names = sorted(os.listdir(folder))
    return [folder / names[i] for i in np.linspace(0, len(names) - 1, count).astype(int)]


def test_real_cifs_match_the_pymatgen_reference():
    for path in tqc2020_cifs(12):
        structure = read_structure(StructureRef(path=path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = Structure.from_file(path)
        assert same_structure(structure, reference), path.name
        formula, spacegroup = reduced_formula(structure), spglib_spacegroup(structure, 0.1)
        analyzer = SpacegroupAnalyzer(reference, symprec=0.1)
        assert spacegroup == analyzer.get_space_group_number(), path.name
        assert Composition(formula).reduced_composition == reference.composition.reduced_composition
