from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from topoclass.config import DataConfig
from topoclass.data.datasets import load_dataset
from topoclass.data.datasets.tqc2020 import load_tqc2020
from topoclass.errors import DataError

LABELS = (
    "material_id;topo_class;sub_class;cross_type\n"
    "mp-1;SM*;ESFD†;Point\n"
    "mp-2;trivial*;LCEBR†;\n"
    "mp-3;TI*;NLC†;\n"
    "mp-4;SM*;ES†;Line\n"
    "mp-5;TI;SEBR\n"
    "\n"
)


@pytest.fixture
def small_dir(tmp_path) -> Path:
    folder = tmp_path / "tqc2020"
    (folder / "structures").mkdir(parents=True)
    (folder / "labels.csv").write_text(LABELS, encoding="utf-8")
    for material_id in ("mp-1", "mp-2", "mp-4", "mp-5"):
        (folder / "structures" / f"{material_id}.cif").write_text("data_x\n")  # never parsed here
    return tmp_path


def test_rows_become_materials_with_three_undecorated_labels(small_dir):
    raw = load_tqc2020(DataConfig(data_dir=small_dir))
    assert raw.name == "tqc2020" and raw.main_task == "topo_class"
    assert [(t.name, t.classes) for t in raw.tasks] == [
        ("topo_class", ["trivial", "TI", "SM"]),
        ("sub_class", ["LCEBR", "SEBR", "NLC", "ES", "ESFD"]),
        ("cross_type", ["Point", "Line", "Plane"]),
    ]
    by_id = {m.id: m for m in raw.materials}
    assert sorted(by_id) == ["mp-1", "mp-2", "mp-4"]
    assert by_id["mp-1"].labels == {"topo_class": "SM", "sub_class": "ESFD", "cross_type": "Point"}
    assert by_id["mp-2"].labels == {"topo_class": "trivial", "sub_class": "LCEBR", "cross_type": None}
    first = by_id["mp-1"]
    assert first.formula == "" and first.spacegroup is None and first.source == "tqc2020/labels.csv:2"
    assert first.structure.path == small_dir / "tqc2020" / "structures" / "mp-1.cif"
    assert first.structure.format == "cif"


def test_missing_structures_and_malformed_rows_are_rejects(small_dir):
    rejects = {r.id: r for r in load_tqc2020(DataConfig(data_dir=small_dir)).rejects}
    assert rejects["mp-3"].category == "missing_structure" and "mp-3.cif" in rejects["mp-3"].reason
    assert rejects["mp-5"].category == "malformed_line" and rejects["mp-5"].source == "tqc2020/labels.csv:6"
    assert len(rejects) == 2


def test_missing_or_wrong_files_are_data_errors(small_dir):
    labels = small_dir / "tqc2020" / "labels.csv"
    labels.write_text("id,topo_class\nmp-1,SM\n")
    with pytest.raises(DataError, match="header must be"):
        load_tqc2020(DataConfig(data_dir=small_dir))
    labels.unlink()
    with pytest.raises(DataError, match=r"labels\.csv"):
        load_tqc2020(DataConfig(data_dir=small_dir))


def test_registry_picks_the_adapter(small_dir):
    raw = load_dataset(DataConfig(dataset="tqc2020", data_dir=small_dir))
    assert raw.name == "tqc2020" and len(raw.materials) == 3


def test_real_dataset_reads_cheaply():
    value = os.environ.get("TOPOCLASS_DATA_DIR")
    if not value or not (Path(value) / "tqc2020").is_dir():
        pytest.skip("set TOPOCLASS_DATA_DIR to a folder holding tqc2020/ to run this test")
    start = time.perf_counter()
    raw = load_tqc2020(DataConfig(data_dir=Path(value)))
    assert time.perf_counter() - start < 5.0  # listing files only, no CIF parsing
    assert len(raw.materials) == 14193
    assert [r.category for r in raw.rejects] == ["missing_structure"] * 110
    classes = {m.labels["topo_class"] for m in raw.materials}
    assert classes == {"trivial", "TI", "SM"}
    assert all(m.labels["cross_type"] is None for m in raw.materials if m.labels["topo_class"] != "SM")
