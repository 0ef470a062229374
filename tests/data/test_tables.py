from __future__ import annotations

import json
from pathlib import Path

import pytest

from topoclass.config import DataConfig, TaskConfig
from topoclass.data.datasets import load_dataset
from topoclass.data.tables import read_table
from topoclass.errors import ConfigError, DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def categories(rejects) -> dict[str, str]:
    return {reject.source.rsplit(":", 1)[1]: reject.category for reject in rejects}


def test_csv_rows_become_materials_with_raw_labels_and_line_sources(tmp_path):
    table = write(
        tmp_path / "mats.csv",
        "id,formula,spacegroup,topo,gap,extra\na,Bi2Se3,166,TI,0.3,x\nb, NaCl ,225,trivial,,y\n",
    )
    materials, rejects = read_table(table, label_columns=["topo", "gap"])
    assert rejects == []
    assert [m.id for m in materials] == ["a", "b"]
    assert materials[0].formula == "Bi2Se3" and materials[0].spacegroup == 166
    assert materials[0].labels == {"topo": "TI", "gap": "0.3"}
    assert materials[1].formula == "NaCl"
    assert materials[1].labels == {"topo": "trivial", "gap": None}
    assert materials[0].source == f"{table}:2" and materials[1].source == f"{table}:3"
    assert materials[0].structure is None


def test_row_problems_become_rejects_and_lines_match_an_editor(tmp_path):
    table = write(
        tmp_path / "mats.csv",
        "formula,spacegroup,topo,note\n"
        'Bi2Se3,166,TI,"two\nlines"\n'  # lines 2-3: a quoted cell spans a line break
        "\n"  # line 4: blank, not a record
        ",,,\n"  # line 5: a row without values
        "NaCl,Fm-3m,trivial,\n"  # line 6: space group symbol, not a number
        "KCl,225.0,trivial,\n"  # line 7: a spreadsheet's float is still an integer
        "Xx2O,,TI,\n",  # line 8: left for cleaning to judge
    )
    materials, rejects = read_table(table, label_columns=["topo"])
    assert categories(rejects) == {"5": "empty_row", "6": "bad_spacegroup"}
    assert [m.source.rsplit(":", 1)[1] for m in materials] == ["2", "7", "8"]
    assert materials[0].id == "mats:2"  # no id column: file stem and line
    assert materials[1].spacegroup == 225
    assert materials[2].spacegroup is None and materials[2].formula == "Xx2O"
    assert "Fm-3m" in rejects[1].reason and "spacegroup" in rejects[1].reason


def test_row_with_more_fields_than_header_is_fatal_and_names_the_line(tmp_path):
    table = write(tmp_path / "t.csv", "formula,spacegroup,topo\nNaCl,225,trivial\nKCl,225,trivial,oops\n")
    with pytest.raises(DataError) as info:
        read_table(table, label_columns=["topo"])
    assert info.value.line == 3 and info.value.file == str(table)


@pytest.mark.parametrize("missing", ["formula", "spacegroup", "topo"])
def test_missing_required_column_names_file_and_column(tmp_path, missing):
    columns = [c for c in ("formula", "spacegroup", "topo") if c != missing]
    table = write(tmp_path / "t.csv", ",".join(columns) + "\n" + ",".join("1" for _ in columns) + "\n")
    with pytest.raises(DataError) as info:
        read_table(table, label_columns=["topo"])
    assert info.value.field == missing and str(table) in str(info.value)


def test_missing_file_and_unknown_suffix_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="unsupported"):
        read_table(write(tmp_path / "t.xlsx", "x"))


def test_tsv_and_sniffed_txt(tmp_path):
    tsv = write(tmp_path / "t.tsv", "formula\tspacegroup\ttopo\nBi2Se3\t166\tTI\n")
    txt = write(tmp_path / "t.txt", "formula;spacegroup;topo\nBi2Se3;166;TI\nNaCl;225;trivial\n")
    for table in (tsv, txt):
        materials, _ = read_table(table, label_columns=["topo"])
        assert materials[0].formula == "Bi2Se3" and materials[0].labels == {"topo": "TI"}


def test_json_lines_keep_numbers_and_nulls(tmp_path):
    rows = [
        {"id": "m1", "formula": "Bi2Se3", "spacegroup": 166, "topo": "TI", "gap": 0.25},
        {"id": "m2", "formula": "NaCl", "spacegroup": 225.0, "topo": None, "gap": 3},
        {},
    ]
    table = write(tmp_path / "t.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    materials, rejects = read_table(table, label_columns=["topo", "gap"])
    assert [m.id for m in materials] == ["m1", "m2"]
    assert materials[0].labels == {"topo": "TI", "gap": 0.25}
    assert materials[1].labels == {"topo": None, "gap": 3.0} and materials[1].spacegroup == 225
    assert [(r.source, r.category) for r in rejects] == [(f"{table}:3", "empty_row")]


@pytest.mark.parametrize(("line", "message"), [("[1, 2]", "JSON object"), ("{oops", "not valid JSON")])
def test_malformed_json_line_is_fatal_and_names_the_line(tmp_path, line, message):
    good = json.dumps({"formula": "NaCl", "spacegroup": 225, "topo": "trivial"})
    table = write(tmp_path / "t.ndjson", f"{good}\n{line}\n")
    with pytest.raises(DataError, match=message) as info:
        read_table(table, label_columns=["topo"])
    assert info.value.line == 2


def test_json_lines_without_a_label_key_anywhere_is_a_missing_column(tmp_path):
    table = write(tmp_path / "t.jsonl", json.dumps({"formula": "NaCl", "spacegroup": 225}) + "\n")
    with pytest.raises(DataError) as info:
        read_table(table, label_columns=["topo"])
    assert info.value.field == "topo"


def test_structure_cells_are_referenced_not_parsed(tmp_path):
    (tmp_path / "cifs").mkdir()
    (tmp_path / "cifs" / "a.cif").write_text("data_a\n")
    poscar = "\nBi Se\n1.0\n"
    table = tmp_path / "t.jsonl"
    rows = [
        {"id": "a", "structure": "cifs/a.cif", "topo": "TI"},
        {"id": "b", "structure": "cifs/missing.cif", "topo": "TI"},
        {"id": "c", "structure": poscar, "topo": "trivial"},
        {"id": "d", "formula": "NaCl", "spacegroup": 225, "structure": "", "topo": "trivial"},
    ]
    write(table, "\n".join(json.dumps(r) for r in rows))
    # With a structure column, formula and space group may be derived later.
    materials, rejects = read_table(table, label_columns=["topo"])
    by_id = {m.id: m for m in materials}
    assert by_id["a"].structure.path == tmp_path / "cifs" / "a.cif"
    assert by_id["a"].formula == "" and by_id["a"].spacegroup is None
    assert by_id["c"].structure.text == poscar
    assert by_id["d"].structure is None
    assert [(r.id, r.category) for r in rejects] == [("b", "bad_structure")]
    assert "missing.cif" in rejects[0].reason


def test_load_dataset_table_needs_tasks_and_applies_main_task(tmp_path):
    table = write(tmp_path / "t.csv", "formula,spacegroup,topo,gap\nBi2Se3,166,TI,0.3\n")
    with pytest.raises(ConfigError, match=r"data\.tasks: required for dataset 'table'"):
        load_dataset(DataConfig(dataset="table", table=table))
    tasks = [TaskConfig(name="topo"), TaskConfig(name="gap", type="regression")]
    raw = load_dataset(DataConfig(dataset="table", table=table, tasks=tasks, main_task="gap"))
    assert raw.main_task == "gap" and [t.name for t in raw.tasks] == ["topo", "gap"]
    assert raw.materials[0].labels == {"topo": "TI", "gap": "0.3"}
    with pytest.raises(ConfigError, match="main_task"):
        load_dataset(DataConfig(dataset="table", table=table, tasks=tasks, main_task="nope"))


def test_load_dataset_table_path_is_found_in_the_data_dir(tmp_path, monkeypatch):
    write(tmp_path / "t.csv", "formula,spacegroup,topo\nBi2Se3,166,TI\n")
    monkeypatch.chdir(tmp_path.parent)
    config = DataConfig(
        dataset="table", table=Path("t.csv"), data_dir=tmp_path, tasks=[TaskConfig(name="topo")]
    )
    raw = load_dataset(config)
    assert raw.name == "t" and raw.main_task == "topo" and len(raw.materials) == 1
