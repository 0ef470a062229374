from __future__ import annotations

import csv
from pathlib import Path

import pytest

from topoclass.config import TaskConfig
from topoclass.data.clean import clean_materials, format_report, write_rejects
from topoclass.data.records import Material, Reject, StructureRef
from topoclass.errors import DataError

TOPO = TaskConfig(name="topo", classes=["trivial", "TI", "TCI", "semimetal"])
GAP = TaskConfig(name="gap", type="regression")


def mat(id_, formula="Bi2Se3", spacegroup=166, structure=None, **labels):
    return Material(id_, formula, spacegroup, labels=labels, structure=structure, source=f"t.csv:{id_}")


def clean(materials, tasks=(TOPO, GAP), **kwargs):
    return clean_materials(materials, list(tasks), **kwargs)


def reject_categories(result) -> dict[str, str]:
    return {reject.id: reject.category for reject in result.rejects}


def assert_counts_add_up(result):
    counts = result.counts
    rejected = sum(v for k, v in counts.items() if k not in {"read", "kept", "duplicates_merged"})
    assert counts["read"] == counts["kept"] + rejected + counts["duplicates_merged"]


def test_labels_are_canonicalized_and_non_task_columns_dropped():
    result = clean(
        [mat("a", topo="  ti ", gap="0.5", note="x"), mat("b", "NaCl", 225, topo="TRIVIAL", gap=None)]
    )
    assert [m.labels for m in result.materials] == [
        {"topo": "TI", "gap": 0.5},
        {"topo": "trivial", "gap": None},
    ]
    assert result.rejects == [] and result.counts["kept"] == 2


@pytest.mark.parametrize(
    ("record", "category", "field"),
    [
        (mat("r", "", topo="TI"), "bad_formula", "formula"),
        (mat("r", "Bi2Se3)", topo="TI"), "bad_formula", "Bi2Se3)"),
        (mat("r", "Xx2O", topo="TI"), "unknown_element", "Xx"),
        (mat("r", "A1B2", topo="TI"), "unknown_element", "A1B2"),
        (mat("r", spacegroup=None, topo="TI"), "bad_spacegroup", "missing"),
        (mat("r", spacegroup=0, topo="TI"), "bad_spacegroup", "0"),
        (mat("r", spacegroup=231, topo="TI"), "bad_spacegroup", "231"),
        (mat("r", topo="Weyl"), "bad_label", "Weyl"),
        (mat("r", topo="TI", gap="large"), "bad_label", "large"),
        (mat("r", topo="TI", gap=float("nan")), "bad_label", "gap"),
        (mat("r", topo=None, gap=" "), "no_labels", "missing"),
        (mat("r", "", None, topo=None), "empty_row", "no formula"),
    ],
)
def test_bad_records_are_rejected_with_a_one_line_reason(record, category, field):
    result = clean([record, mat("ok", "NaCl", 225, topo="trivial")])
    assert reject_categories(result) == {"r": category}
    reason = result.rejects[0].reason
    assert field in reason and "\n" not in reason
    assert result.counts[category] == 1 and result.counts["kept"] == 1
    assert_counts_add_up(result)


def test_exact_duplicates_merge_into_the_first_even_across_multiples_of_a_formula():
    records = [
        mat("a", "Bi2Se3", topo="TI"),
        mat("b", "Bi4Se6", topo="ti"),  # same reduced composition and space group
        mat("c", "Bi2Se3", 12, topo="trivial"),  # a polymorph: another material
    ]
    result = clean(records)
    assert [m.id for m in result.materials] == ["a", "c"]
    assert result.counts["duplicates_merged"] == 1
    assert_counts_add_up(result)


def test_a_missing_label_does_not_contradict_a_present_one():
    result = clean([mat("a", topo="TI", gap=None), mat("b", topo=None, gap=0.3)])
    assert [(m.id, m.labels) for m in result.materials] == [("a", {"topo": "TI", "gap": 0.3})]
    assert result.counts["duplicates_merged"] == 1


def test_conflicting_duplicates_are_all_rejected_and_the_reason_names_both_sources():
    records = [
        mat("a", topo="TI"),
        mat("b", topo="trivial"),
        mat("c", topo="TI"),
        mat("d", "NaCl", 225, topo="TI"),
    ]
    result = clean(records)
    assert [m.id for m in result.materials] == ["d"]
    assert reject_categories(result) == dict.fromkeys("abc", "conflicting_labels")
    reason = result.rejects[0].reason
    assert "t.csv:a" in reason and "t.csv:b" in reason and "trivial" in reason and "TI" in reason
    assert result.counts["conflicting_labels"] == 3
    assert_counts_add_up(result)


def test_records_with_structures_are_keyed_by_id_not_formula():
    first, second = StructureRef(path=Path("a.cif")), StructureRef(path=Path("b.cif"))
    records = [mat("a", structure=first, topo="TI"), mat("b", structure=second, topo="trivial")]
    result = clean(records)
    assert [m.id for m in result.materials] == ["a", "b"]
    assert result.rejects == []


def test_repeated_id_of_different_materials_is_rejected():
    result = clean([mat("a", topo="TI"), mat("a", "NaCl", 225, topo="trivial")])
    assert [m.formula for m in result.materials] == ["Bi2Se3"]
    assert [r.category for r in result.rejects] == ["duplicate_id"]


def test_classes_are_inferred_when_not_listed():
    task = TaskConfig(name="kind")
    records = [
        mat("a", kind="metal"),
        mat("b", "NaCl", 225, kind="Insulator"),
        mat("c", "KCl", 225, kind="insulator "),
    ]
    result = clean(records, tasks=[task])
    assert result.tasks[0].classes == ["Insulator", "metal"]
    assert [m.labels["kind"] for m in result.materials] == ["metal", "Insulator", "Insulator"]
    assert task.classes is None  # the caller's task is not modified


def test_numeric_classes_from_json_match_text_classes():
    task = TaskConfig(name="flag", classes=["0", "1"])
    result = clean([mat("a", flag=1.0), mat("b", "NaCl", 225, flag="0")], tasks=[task])
    assert [m.labels["flag"] for m in result.materials] == ["1", "0"]


def test_a_single_inferred_class_is_a_data_error():
    with pytest.raises(DataError, match="kind"):
        clean([mat("a", kind="metal")], tasks=[TaskConfig(name="kind")])


def test_prior_rejects_are_counted_and_reported():
    prior = [Reject("x", "t.csv:9", "spacegroup: 'P1' is not an integer", "bad_spacegroup")]
    result = clean([mat("a", topo="TI")], prior_rejects=prior)
    assert result.rejects[0] is prior[0]
    assert result.counts["read"] == 2 and result.counts["bad_spacegroup"] == 1
    assert_counts_add_up(result)


def test_write_rejects_and_report(tmp_path):
    result = clean([mat("a", topo="TI"), mat("b", topo="trivial"), mat("c", "Xx", topo="TI")])
    path = tmp_path / "rejects.csv"
    write_rejects(path, result.rejects)
    assert b"\r" not in path.read_bytes()  # plain line ends, whatever the platform's csv default
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["category"] for row in rows] == [
        "unknown_element",
        "conflicting_labels",
        "conflicting_labels",
    ]
    assert set(rows[0]) == {"id", "source", "category", "reason"}
    report = format_report(result.counts)
    assert "read 3 records" in report and "kept 0" in report
    assert "conflicting_labels  2" in report and "rejected 3:" in report
    assert "bad_label" not in report  # zero counts are left out
