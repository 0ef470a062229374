from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from topoclass.config import DataConfig
from topoclass.data.datasets.jarvis import (
    CLASS_FILE,
    STRUCTURE_FILE,
    VALUE_FILE,
    load_jarvis,
    published_split,
)
from topoclass.errors import DataError
from topoclass.features.structures import read_structure


def write_zip(path: Path, member: str, tree: object) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, json.dumps(tree))


def escaped_poscar(a: float) -> str:
    text = Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="poscar")
    return text.replace("\n", "\\n")  # as stored in the JARVIS structure file


@pytest.fixture
def small_dir(tmp_path) -> Path:
    folder = tmp_path / "jarvis"
    folder.mkdir()
    classes = {"train": {"J-1": 1, "J-2": 0, "J-9": 1}, "val": {"J-3": 1}, "test": {"J-4": 0}}
    values = {"train": {"J-1": 0.5, "J-2": 0.02, "J-9": 0.3}, "val": {"J-3": 0.2}, "test": {"J-4": 0.0}}
    structures = {
        "train": {"J-1": escaped_poscar(4.0), "J-3": escaped_poscar(4.1), "J-7": escaped_poscar(4.2)},
        "test": {"J-4": escaped_poscar(4.3)},
    }
    write_zip(folder / CLASS_FILE, "dft_3d_spillage.json", classes)
    write_zip(folder / VALUE_FILE, "dft_3d_spillage.json", values)
    write_zip(folder / STRUCTURE_FILE, "dft_3d_Tc_supercon.json", structures)
    return tmp_path


def test_only_ids_with_structure_and_label_become_materials(small_dir, caplog):
    with caplog.at_level(logging.WARNING):
        raw = load_jarvis(DataConfig(data_dir=small_dir))
    assert "only 3 materials" in caplog.text
    by_id = {m.id: m for m in raw.materials}
    assert sorted(by_id) == ["J-1", "J-3", "J-4"] and raw.rejects == []
    assert by_id["J-1"].labels == {"spillage_class": "high", "spillage_value": 0.5}
    assert by_id["J-4"].labels == {"spillage_class": "low", "spillage_value": 0.0}
    assert [(t.name, t.type, t.classes) for t in raw.tasks] == [
        ("spillage_class", "classification", ["low", "high"]),
        ("spillage_value", "regression", None),
    ]
    assert raw.main_task == "spillage_class"


def test_published_split_is_kept_in_the_source(small_dir):
    splits = {m.id: published_split(m) for m in load_jarvis(DataConfig(data_dir=small_dir)).materials}
    assert splits == {"J-1": "train", "J-3": "val", "J-4": "test"}  # the label file's split


def test_escaped_poscar_text_is_readable(small_dir):
    material = next(m for m in load_jarvis(DataConfig(data_dir=small_dir)).materials if m.id == "J-3")
    assert material.structure.format == "poscar" and "\\n" not in material.structure.text
    structure = read_structure(material.structure)
    assert structure.composition.reduced_formula == "NaCl"
    assert structure.lattice.a == pytest.approx(4.1)


def test_missing_or_broken_files_are_data_errors(small_dir):
    (small_dir / "jarvis" / VALUE_FILE).write_bytes(b"not a zip")
    with pytest.raises(DataError, match=VALUE_FILE):
        load_jarvis(DataConfig(data_dir=small_dir))
    (small_dir / "jarvis" / VALUE_FILE).unlink()
    with pytest.raises(DataError, match="file not found"):
        load_jarvis(DataConfig(data_dir=small_dir))
    write_zip(small_dir / "jarvis" / VALUE_FILE, "x.json", {"training": {}})
    with pytest.raises(DataError, match="keys among"):
        load_jarvis(DataConfig(data_dir=small_dir))


def test_real_dataset_has_the_294_labelled_structures():
    value = os.environ.get("TOPOCLASS_DATA_DIR")
    if not value or not (Path(value) / "jarvis").is_dir():
        pytest.skip("set TOPOCLASS_DATA_DIR to a folder holding jarvis/ to run this test")
    raw = load_jarvis(DataConfig(data_dir=Path(value)))
    assert len(raw.materials) == 294
    assert sum(m.labels["spillage_class"] == "high" for m in raw.materials) == 207
    assert all(
        (m.labels["spillage_value"] > 0.1) == (m.labels["spillage_class"] == "high") for m in raw.materials
    )
    assert {published_split(m) for m in raw.materials} == {"train", "val", "test"}
    assert len(read_structure(raw.materials[0].structure)) >= 1
