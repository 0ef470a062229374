from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from pymatgen.core import Composition, Element

from topoclass.config import TaskConfig
from topoclass.data.records import Material
from topoclass.data.split import load_split, save_split, split_materials
from topoclass.errors import DataError

CLASSES = ["trivial", "TI", "TCI", "semimetal"]
TOPO = TaskConfig(name="topo")
FRACTIONS = (0.7, 0.15, 0.15)


def synthetic_materials(count: int = 3000, seed: int = 1) -> list[Material]:
    """Binary compounds with imbalanced classes, polymorphs and some missing labels."""
    rng = np.random.default_rng(seed)
    symbols = [Element.from_Z(z).symbol for z in range(1, 84)]
    materials = []
    while len(materials) < count:
        a, b = rng.choice(symbols, size=2, replace=False)
        formula = f"{a}{rng.integers(1, 5)}{b}{rng.integers(1, 5)}"
        label = rng.choice(CLASSES, p=[0.55, 0.1, 0.05, 0.3])
        for _ in range(rng.choice([1, 1, 1, 2, 4])):  # polymorphs share a formula
            spacegroup = int(rng.integers(1, 231))
            value = None if rng.random() < 0.03 else str(label)
            materials.append(Material(f"m{len(materials)}", formula, spacegroup, labels={"topo": value}))
    return materials


@pytest.fixture(scope="module")
def materials() -> list[Material]:
    return synthetic_materials()


@pytest.fixture(scope="module")
def split(materials):
    return split_materials(materials, TOPO, FRACTIONS, seed=0)


def test_every_material_is_in_exactly_one_split(materials, split):
    joined = np.concatenate(list(split.values()))
    assert sorted(joined.tolist()) == list(range(len(materials)))
    for indices in split.values():
        assert indices.dtype.kind == "i" and np.all(np.diff(indices) > 0)


def test_no_reduced_formula_is_in_two_splits(materials, split):
    owner: dict[str, str] = {}
    for name, indices in split.items():
        for i in indices:
            reduced = Composition(materials[i].formula).reduced_formula
            assert owner.setdefault(reduced, name) == name, f"{reduced} leaks between splits"
    polymorphs = Counter(m.formula for m in materials)
    assert max(polymorphs.values()) >= 4  # the data does hold formulas in several space groups


def test_multiples_of_one_formula_stay_together():
    records = [
        Material(f"m{i}", f, 166, labels={"topo": "TI"}) for i, f in enumerate(["Bi2Se3", "Bi4Se6"] * 20)
    ]
    records += [Material(f"x{i}", f"Na{i + 1}Cl", 225, labels={"topo": "trivial"}) for i in range(40)]
    split = split_materials(records, TOPO, seed=3)
    homes = {name for name, indices in split.items() for i in indices if records[i].formula.startswith("Bi")}
    assert len(homes) == 1


def test_fractions_are_met(materials, split):
    for name, fraction in zip(("train", "val", "test"), FRACTIONS, strict=True):
        assert abs(len(split[name]) / len(materials) - fraction) < 0.02


def test_class_proportions_are_close_across_splits(materials, split):
    labels = np.array([m.labels["topo"] or "missing" for m in materials])
    for label in [*CLASSES, "missing"]:
        overall = np.mean(labels == label)
        for indices in split.values():
            assert abs(np.mean(labels[indices] == label) - overall) < 0.02, label


def test_split_is_deterministic_for_a_seed_and_changes_with_it(materials, split):
    again = split_materials(materials, TOPO, FRACTIONS, seed=0)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    other = split_materials(materials, TOPO, FRACTIONS, seed=1)
    assert not np.array_equal(split["test"], other["test"])


def test_numeric_main_label_is_stratified_by_quantiles():
    rng = np.random.default_rng(0)
    records = [
        Material(f"m{i}", f"Na{i + 1}Cl", 225, labels={"gap": float(rng.normal())}) for i in range(2000)
    ]
    split = split_materials(records, TaskConfig(name="gap", type="regression"))
    gaps = np.array([m.labels["gap"] for m in records])
    for indices in split.values():
        assert abs(np.median(gaps[indices]) - np.median(gaps)) < 0.15


def test_bad_arguments_are_errors(materials):
    with pytest.raises(ValueError, match="fractions"):
        split_materials(materials, TOPO, (0.8, 0.15, 0.15))
    with pytest.raises(DataError, match="absent"):
        split_materials(materials, TaskConfig(name="absent"))


def test_save_and_load_round_trip(tmp_path, materials, split):
    ids = [m.id for m in materials]
    path = tmp_path / "runs" / "split.json"
    save_split(path, split, ids)
    saved = json.loads(path.read_text())
    assert set(saved) == {"train", "val", "test", "ids_sha256"}
    assert len(saved["test"]) == len(split["test"])
    # The file refers to ids, so a reordered dataset maps back to the same materials.
    reordered = ids[::-1]
    loaded = load_split(path, reordered)
    for name in split:
        assert sorted(reordered[i] for i in loaded[name]) == sorted(ids[i] for i in split[name])
    assert all(np.array_equal(load_split(path, ids)[k], split[k]) for k in split)


def test_a_changed_dataset_is_detected(tmp_path, materials, split):
    ids = [m.id for m in materials]
    path = tmp_path / "split.json"
    save_split(path, split, ids)
    with pytest.raises(DataError, match="1 saved ids are gone") as info:
        load_split(path, ids[1:])
    assert info.value.file == str(path)
    with pytest.raises(DataError, match="1 ids are new"):
        load_split(path, [*ids, "brand-new"])
    tree = json.loads(path.read_text())
    tree["ids_sha256"] = "0" * 64
    path.write_text(json.dumps(tree))
    with pytest.raises(DataError, match="checksum"):
        load_split(path, ids)
    path.write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        load_split(path, ids)
