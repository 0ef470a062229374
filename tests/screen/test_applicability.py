"""Applicability flags: fitted once for a run of one's own, and what each flag means."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from pymatgen.core import Element

from tests.helpers import write_synthetic_table
from topoclass.app.runs import RunLayout
from topoclass.config import load_config
from topoclass.data.build import build_feature_arrays
from topoclass.data.records import Material
from topoclass.screen.applicability import (
    Applicability,
    applicability_for,
    fit_applicability,
    nearest_distance,
)


def test_nearest_distance_is_the_distance_to_the_closest_reference():
    reference = np.array([[0.0, 0.0], [3.0, 4.0]])
    vectors = np.array([[0.0, 1.0], [3.0, 5.0], [6.0, 8.0]])
    assert np.allclose(nearest_distance(vectors, reference, block=2), [1.0, 1.0, 5.0])


def features_of(formulas: list[str], groups: list[int]):
    materials = [
        Material(id=str(i), formula=f, spacegroup=g)
        for i, (f, g) in enumerate(zip(formulas, groups, strict=True))
    ]
    return build_feature_arrays(materials, [], graphs=None, graph_rows=[-1] * len(materials))


def test_fitted_flags_mark_unseen_elements_and_far_materials(tmp_path):
    # Validation formulas differ from training ones, as in a formula-grouped split.
    formulas = ["NaCl", "KCl", "NaBr", "KBr", "LiCl", "LiBr"] * 4 + [
        "LiF",
        "NaF",
        "KF",
        "RbCl",
        "RbBr",
        "CsCl",
    ]
    train = features_of(formulas, [225] * 30)
    fitted = fit_applicability(train, np.arange(0, 24), np.arange(24, 30))
    assert fitted.elements[11] and not fitted.elements[54]  # Na seen, Xe not
    fitted.save(tmp_path / "a.safetensors")
    loaded = Applicability.load(tmp_path / "a.safetensors")
    assert loaded.threshold == fitted.threshold and np.array_equal(loaded.elements, fitted.elements)
    new = features_of(["KCl", "XeF2", "U3Pt5Os2Ir"], [225, 139, 1])
    flags = loaded.flags(new, np.zeros(3, dtype=np.int64))
    assert list(flags["unknown_elements"]) == ["", "F,Xe", "Os,Ir,Pt,U"]
    assert not flags["out_of_distribution"][0] and flags["out_of_distribution"][2]
    assert flags["nearest_train_distance"][0] < flags["nearest_train_distance"][2]


def test_a_run_of_ones_own_fits_its_flags_once_and_keeps_them_beside_it(tmp_path):
    table = write_synthetic_table(tmp_path / "materials.csv", 80)
    overrides = {
        "data.dataset": "table",
        "data.table": str(table),
        "data.tasks": [{"name": "topological"}],
        "data.cache_dir": str(tmp_path / "cache"),
        "run_dir": str(tmp_path / "run"),
    }
    config = load_config(None, overrides)
    run = SimpleNamespace(config=config, layout=RunLayout.for_config(config))  # what fitting reads
    fitted = applicability_for(run)
    path = run.layout.applicability_file()
    assert fitted is not None and path.is_file()
    stamp = path.stat().st_mtime_ns
    again = applicability_for(run)
    assert path.stat().st_mtime_ns == stamp and again.threshold == fitted.threshold
    elements = {Element(symbol).Z for symbol in ("Na", "Cl")}
    assert np.isfinite(fitted.threshold) and fitted.max_atoms == 2**31 - 1  # no structures: no size limit
    assert fitted.elements.sum() > len(elements)


def test_without_training_data_there_are_no_flags_and_no_error(tmp_path):
    overrides = {
        "data.dataset": "table",
        "data.table": str(tmp_path / "gone.csv"),
        "run_dir": str(tmp_path / "run"),
    }
    config = load_config(None, overrides)
    run = SimpleNamespace(config=config, layout=RunLayout.for_config(config))
    assert applicability_for(run) is None
    assert not run.layout.applicability_file().exists()
