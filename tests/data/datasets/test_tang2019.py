from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import pytest
from pymatgen.core import Composition

from topoclass.config import DataConfig, TaskConfig
from topoclass.data.clean import clean_materials
from topoclass.data.datasets import load_dataset
from topoclass.data.datasets.tang2019 import FILES, load_tang2019
from topoclass.data.split import split_materials
from topoclass.errors import ConfigError, DataError

SMALL = {
    "case1_ccmp.txt": "1, Al1Cl7Se1\n225, Na1Cl1\n",
    "ti_ccmp.txt": "166, Bi2Se3\nP-1, Ag2F5\n",
    "tci_ccmp.txt": "225, Sn1Te1\nno comma here\n\n",
    "case3_ccmp.txt": "225, Na1Cl1",  # also trivial in case1: a conflict; no final newline
}


@pytest.fixture
def small_dir(tmp_path) -> Path:
    folder = tmp_path / "tang2019"
    folder.mkdir()
    for name, text in SMALL.items():
        (folder / name).write_text(text)
    return tmp_path


def real_data_dir() -> Path:
    value = os.environ.get("TOPOCLASS_DATA_DIR")
    if not value or not (Path(value) / "tang2019").is_dir():
        pytest.skip("set TOPOCLASS_DATA_DIR to a folder holding tang2019/ to run this test")
    return Path(value)


def test_lines_become_materials_with_both_labels(small_dir):
    raw = load_tang2019(DataConfig(data_dir=small_dir))
    assert raw.name == "tang2019" and raw.main_task == "topological"
    assert [t.name for t in raw.tasks] == ["topological", "topo_class"]
    assert raw.tasks[1].classes == ["trivial", "TI", "TCI", "semimetal"]
    by_id = {m.id: m for m in raw.materials if m.id != "Na1Cl1@225"}
    assert by_id["Bi2Se3@166"].labels == {"topological": "topological", "topo_class": "TI"}
    assert by_id["Bi2Se3@166"].spacegroup == 166 and by_id["Bi2Se3@166"].source == "tang2019/ti_ccmp.txt:1"
    assert by_id["Al1Cl7Se1@1"].labels == {"topological": "trivial", "topo_class": "trivial"}
    assert by_id["Sn1Te1@225"].labels["topo_class"] == "TCI"
    assert len(raw.materials) == 5


def test_malformed_lines_are_rejects_not_errors(small_dir):
    rejects = {r.source: r.category for r in load_tang2019(DataConfig(data_dir=small_dir)).rejects}
    assert rejects == {
        "tang2019/ti_ccmp.txt:2": "bad_spacegroup",
        "tang2019/tci_ccmp.txt:2": "malformed_line",
    }


def test_a_missing_file_is_a_data_error_naming_it(small_dir):
    (small_dir / "tang2019" / "tci_ccmp.txt").unlink()
    with pytest.raises(DataError, match=r"tci_ccmp\.txt"):
        load_tang2019(DataConfig(data_dir=small_dir))


def test_cleaning_rejects_the_conflicting_pair(small_dir):
    raw = load_tang2019(DataConfig(data_dir=small_dir))
    result = clean_materials(raw.materials, raw.tasks, prior_rejects=raw.rejects)
    conflicts = [r for r in result.rejects if r.category == "conflicting_labels"]
    assert sorted(r.source for r in conflicts) == ["tang2019/case1_ccmp.txt:2", "tang2019/case3_ccmp.txt:1"]
    assert result.counts == result.counts | {"read": 7, "kept": 3, "conflicting_labels": 2}


def test_load_dataset_dispatches_and_applies_task_overrides(small_dir):
    raw = load_dataset(DataConfig(data_dir=small_dir, main_task="topo_class"))
    assert raw.name == "tang2019" and raw.main_task == "topo_class"
    only_class = [TaskConfig(name="topo_class", classes=["trivial", "TI", "TCI", "semimetal"])]
    raw = load_dataset(DataConfig(data_dir=small_dir, tasks=only_class))
    assert [t.name for t in raw.tasks] == ["topo_class"] and raw.main_task == "topo_class"
    with pytest.raises(DataError, match="spillage") as info:
        load_dataset(DataConfig(data_dir=small_dir, tasks=[TaskConfig(name="spillage")]))
    assert info.value.field == "spillage" and "tang2019" in str(info.value.file)
    with pytest.raises(ConfigError, match="not a task"):
        load_dataset(DataConfig(data_dir=small_dir, main_task="gap"))


def test_unknown_dataset_lists_the_known_ones(small_dir):
    with pytest.raises(ConfigError, match="tang2019") as info:
        load_dataset(DataConfig(dataset="tang2020", data_dir=small_dir))
    assert "tqc2020" in str(info.value) and "table" in str(info.value)


def test_missing_data_dir_says_how_to_set_it(tmp_path, monkeypatch):
    monkeypatch.delenv("TOPOCLASS_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="TOPOCLASS_DATA_DIR") as info:
        load_dataset(DataConfig())
    assert "--data-dir" in str(info.value)
    with pytest.raises(DataError, match="--data-dir") as info:
        load_dataset(DataConfig(data_dir=tmp_path / "nowhere"))
    assert "nowhere" in str(info.value)
    monkeypatch.setenv("TOPOCLASS_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="elsewhere"):
        load_dataset(DataConfig())


def test_real_tang_data_matches_the_documented_numbers():
    raw = load_dataset(DataConfig(data_dir=real_data_dir()))
    per_file = Counter(m.source.split(":")[0].split("/")[1] for m in raw.materials)
    assert per_file == {
        "case1_ccmp.txt": 6098,
        "ti_ccmp.txt": 824,
        "tci_ccmp.txt": 519,
        "case3_ccmp.txt": 3371,
    }
    assert set(per_file) == set(FILES) and raw.rejects == []
    assert len({(m.spacegroup, m.formula) for m in raw.materials}) == 10793
    assert len({m.formula for m in raw.materials}) == 8898

    result = clean_materials(raw.materials, raw.tasks, prior_rejects=raw.rejects)
    # 10,812 lines, 19 (space group, formula) pairs with two different labels, no exact repeats.
    assert result.counts["read"] == 10812
    assert result.counts["conflicting_labels"] == 38
    assert result.counts["duplicates_merged"] == 0
    assert result.counts["kept"] == 10812 - 38
    conflicting = Counter(r.id for r in result.rejects)
    assert len(conflicting) == 19 and set(conflicting.values()) == {2}
    binary_conflicts = [r for r in result.rejects if "topological: trivial" in r.reason]
    assert len(binary_conflicts) == 2 * 10

    main = next(t for t in result.tasks if t.name == raw.main_task)
    split = split_materials(result.materials, main, seed=0)
    homes: dict[str, str] = {}
    for name, indices in split.items():
        assert abs(len(indices) / len(result.materials) - {"train": 0.7}.get(name, 0.15)) < 0.02
        for i in indices:
            with warnings.catch_warnings():
                # pymatgen orders formulas by electronegativity and warns for the noble gases.
                warnings.filterwarnings("ignore", message="No Pauling electronegativity")
                reduced = Composition(result.materials[i].formula).reduced_formula
            assert homes.setdefault(reduced, name) == name
