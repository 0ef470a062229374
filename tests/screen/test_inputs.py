"""Every input format a screen reads: ids, sources, order, and bad items carrying their reason."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import ase.db
import ase.io
import pytest
from pymatgen.io.ase import AseAtomsAdaptor

from tests.screen.conftest import crystals, write_folder
from topoclass.errors import DataError
from topoclass.features.structures import read_structure
from topoclass.screen.chunks import survey
from topoclass.screen.inputs import expand_inputs, iter_items


def items_of(*paths: Path) -> list:
    return list(iter_items(expand_inputs(list(paths))))


def test_folder_is_walked_recursively_in_name_order_skipping_other_files(tmp_path):
    folder = write_folder(tmp_path / "cifs", 5)
    items = items_of(folder)
    assert [item.id for item in items] == ["c001", "c002", "c004", "sub/c000", "sub/c003"]
    assert items[3].source == str(folder / "sub" / "c000.cif")
    assert read_structure(items[0].material.structure).composition.reduced_formula == "GaAs"


def test_glob_expands_sorted_and_a_pattern_matching_nothing_is_an_error(tmp_path):
    folder = write_folder(tmp_path / "cifs", 5)
    assert [item.id for item in items_of(Path(f"{folder}/**/*.cif"))] == [
        "c001", "c002", "c004", "sub/c000", "sub/c003",
    ]  # fmt: skip
    with pytest.raises(DataError, match="matches no file"):
        items_of(Path(f"{folder}/*.nothing"))
    with pytest.raises(DataError, match="no such file"):
        items_of(tmp_path / "missing")


def test_extended_xyz_frames_are_items_and_a_broken_frame_ends_the_file(tmp_path):
    path = tmp_path / "frames.extxyz"
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in crystals(3)]
    ase.io.write(path, atoms, format="extxyz")
    path.write_text(path.read_text() + "many\nbroken\n")
    items = items_of(path)
    assert [item.id for item in items] == ["frames#0", "frames#1", "frames#2", "frames#3"]
    assert [item.source for item in items][:2] == [f"{path}#0", f"{path}#1"]
    assert read_structure(items[1].material.structure).composition.reduced_formula == "GaAs"
    assert items[3].material is None and "not an atom count" in items[3].problem


def test_ase_database_rows_are_items_named_by_their_material_id(tmp_path):
    path = tmp_path / "crystals.db"
    with ase.db.connect(str(path)) as database:
        for i, structure in enumerate(crystals(3)):
            extra = {"material_id": f"x-{i}"} if i != 1 else {}
            database.write(AseAtomsAdaptor.get_atoms(structure), **extra)
    items = items_of(path)
    assert [item.id for item in items] == ["x-0", "crystals#2", "x-2"]
    assert read_structure(items[2].material.structure).composition.reduced_formula == "NaCl"
    unparsed = iter_items(expand_inputs([path]), payload=False)
    assert [item.id for item in unparsed] == ["x-0", "crystals#2", "x-2"]
    only_second = list(iter_items(expand_inputs([path]), payload=lambda position: position == 1))
    assert [item.material is not None for item in only_second] == [False, True, False]


def test_table_rows_with_and_without_structures(tmp_path):
    cif = tmp_path / "a.cif"
    crystals(1)[0].to(filename=str(cif))
    table = tmp_path / "t.csv"
    table.write_text("id,formula,spacegroup,structure\nm1,Bi2Se3,166,\nm2,,,a.cif\nm3,NaCl,x,\n")
    items = items_of(table)
    assert [(item.id, item.source) for item in items] == [
        ("m1", f"{table}:2"), ("m2", f"{table}:3"), ("m3", f"{table}:4"),
    ]  # fmt: skip
    assert items[0].material.formula == "Bi2Se3" and items[0].material.structure is None
    assert items[1].material.structure.path == cif
    assert items[2].material is None and "not an integer space group" in items[2].problem


def test_json_lines_table_streams_rows(tmp_path):
    table = tmp_path / "t.jsonl"
    table.write_text(
        '{"id": "a", "formula": "NaCl", "spacegroup": 225}\n\n{"formula": "Si", "spacegroup": 227}\n'
    )
    assert [item.id for item in items_of(table)] == ["a", "t:3"]


@pytest.mark.parametrize("suffix", [".json", ".json.gz", ".json.bz2"])
def test_pymatgen_entry_dumps_as_lists_or_under_entries(tmp_path, suffix):
    structures = crystals(3)
    entries = [
        {
            "@class": "ComputedStructureEntry",
            "entry_id": "mp-1",
            "energy": -1.0,
            "structure": structures[0].as_dict(),
        },
        {
            "@class": "ComputedStructureEntry",
            "data": {"material_id": "agm2"},
            "structure": structures[1].as_dict(),
        },
        structures[2].as_dict(),
        {"energy": 1.0},
    ]
    opener = {".json": open, ".json.gz": gzip.open, ".json.bz2": bz2.open}[suffix]
    listed, wrapped = tmp_path / f"list{suffix}", tmp_path / f"wrapped{suffix}"
    with opener(listed, "wt") as stream:
        json.dump(entries, stream)
    with opener(wrapped, "wt") as stream:
        json.dump({"@module": "pymatgen", "entries": entries}, stream)
    for path, stem in ((listed, "list"), (wrapped, "wrapped")):
        items = items_of(path)
        assert [item.id for item in items] == ["mp-1", "agm2", f"{stem}#2", f"{stem}#3"]
        assert read_structure(items[1].material.structure).composition.reduced_formula == "GaAs"
        assert items[3].material is None and "no pymatgen structure" in items[3].problem


def test_a_space_group_stated_at_the_models_tolerance_is_kept_and_any_other_is_searched(tmp_path):
    structure = crystals(1)[0].as_dict()
    stated = [
        {"material_id": "at-0.1", "structure": structure, "symmetry": {"number": 225, "symprec": 0.1}},
        {"material_id": "at-0.01", "structure": structure, "symmetry": {"number": 225, "symprec": 0.01}},
        {"material_id": "no-tolerance", "structure": structure, "symmetry": {"number": 225}},
        {"material_id": "not-a-group", "structure": structure, "symmetry": {"number": 231, "symprec": 0.1}},
        {"material_id": "a-string", "structure": structure, "symmetry": {"number": "225", "symprec": 0.1}},
        {"material_id": "none", "structure": structure},
    ]
    path = tmp_path / "mp.json"
    path.write_text(json.dumps(stated))
    found = {item.id: item.material.spacegroup for item in iter_items(expand_inputs([path]), symprec=0.1)}
    assert found == {
        "at-0.1": 225, "at-0.01": None, "no-tolerance": None, "not-a-group": None, "a-string": None,
        "none": None,
    }  # fmt: skip
    # Without the model's tolerance nothing stated is trusted.
    assert {item.material.spacegroup for item in items_of(path)} == {None}


def test_large_json_dumps_are_streamed(tmp_path, monkeypatch):
    import topoclass.screen.inputs as inputs

    monkeypatch.setattr(inputs, "_WHOLE_JSON_BYTES", 0)  # everything counts as large
    path = tmp_path / "dump.json"
    path.write_text(json.dumps({"entries": [{"entry_id": "e1", "structure": crystals(1)[0].as_dict()}]}))
    assert [item.id for item in items_of(path)] == ["e1"]


def test_unknown_kinds_and_unreadable_dumps_are_one_line_errors(tmp_path):
    odd = tmp_path / "x.weird"
    odd.write_text("?")
    with pytest.raises(DataError, match="cannot tell how to read it"):
        items_of(odd)
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a readable JSON dump"):
        items_of(broken)


def test_survey_counts_and_changes_with_the_input_list(tmp_path):
    folder = write_folder(tmp_path / "cifs", 4)
    first = survey(expand_inputs([folder]))
    assert first.items == 4 and first.chunks(3) == 2
    assert survey(expand_inputs([folder])).digest == first.digest
    crystals(5)[4].to(filename=str(folder / "c099.cif"))
    assert survey(expand_inputs([folder])).digest != first.digest


def test_a_frame_longer_than_its_file_is_reported_not_read_forever(tmp_path):
    path = tmp_path / "cut.xyz"
    frame = '2\nLattice="3 0 0 0 3 0 0 0 3" pbc="T T T"\nNa 0 0 0\nCl 1.5 1.5 1.5\n'
    path.write_text(frame + "1000000000\nx\nNa 0 0 0\n")
    items = items_of(path)
    assert [item.id for item in items] == ["cut#0", "cut#1"]
    assert items[0].material is not None
    assert items[1].material is None and "ends inside the frame" in items[1].problem
