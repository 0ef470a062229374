"""Turn raw records into a clean dataset, and say exactly what was left out and why.

Every record either survives with canonical labels or becomes a :class:`Reject`
with a one-line reason; nothing is silently dropped or repaired. Duplicates of
one material are merged, and contradictory duplicates are all rejected: a
model cannot learn from a material labelled both ways, and choosing one label
would hide a data problem.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from topoclass.config import TaskConfig
from topoclass.data.records import LabelValue, Material, Reject
from topoclass.errors import DataError
from topoclass.features.formula import parse_formula
from topoclass.files import atomic_write
from topoclass.tasks import label_text, task_type

logger = logging.getLogger(__name__)

# Reported even when zero, so every cleaning report has the same lines.
REJECT_CATEGORIES = (
    "empty_row",
    "bad_formula",
    "unknown_element",
    "bad_spacegroup",
    "bad_label",
    "no_labels",
    "conflicting_labels",
    "duplicate_id",
    "non_finite_features",
)
SPACEGROUP_RANGE = range(1, 231)


@dataclass
class CleanResult:
    """Cleaned materials, every reject, the counts for the report, and tasks with resolved classes."""

    materials: list[Material]
    rejects: list[Reject]
    counts: dict[str, int]
    tasks: list[TaskConfig]


def formula_key(formula: str) -> str:
    """Canonical text of the reduced composition: equal for ``Bi2Se3`` and ``Bi4Se6``.

    Raises ``ValueError`` when pymatgen cannot parse the formula.
    """
    return parse_formula(formula).reduced_formula


def clean_materials(
    materials: Sequence[Material], tasks: Sequence[TaskConfig], *, prior_rejects: Iterable[Reject] = ()
) -> CleanResult:
    """Validate, canonicalize and deduplicate materials for the given tasks."""
    rejects = list(prior_rejects)
    read = len(materials) + len(rejects)

    valid: list[Material] = []
    for material in materials:
        problem = record_problem(material, tasks)
        if problem is None:
            valid.append(material)
        else:
            rejects.append(problem)

    tasks = [_resolve_classes(task, valid) for task in tasks]
    check_hierarchy(tasks)
    labelled: list[Material] = []
    for material in valid:
        result = _canonical_labels(material, tasks)
        if isinstance(result, Reject):
            rejects.append(result)
        else:
            labelled.append(replace(material, labels=result))

    kept, merged, conflict_rejects = _merge_duplicates(labelled)
    rejects.extend(conflict_rejects)
    kept, id_rejects = _reject_duplicate_ids(kept)
    rejects.extend(id_rejects)

    counts = {"read": read, "kept": len(kept), "duplicates_merged": merged}
    counts.update(dict.fromkeys(REJECT_CATEGORIES, 0))
    counts.update(Counter(reject.category for reject in rejects))
    logger.info("cleaning: %s", ", ".join(f"{key}={value}" for key, value in counts.items() if value))
    return CleanResult(materials=kept, rejects=rejects, counts=counts, tasks=tasks)


def record_problem(material: Material, tasks: Sequence[TaskConfig]) -> Reject | None:
    """The first problem with a record's formula or space group, as a reject."""

    def reject(category: str, reason: str) -> Reject:
        return Reject(id=material.id, source=material.source, reason=reason, category=category)

    formula = material.formula.strip()
    columns = [task.label_column for task in tasks]
    if not formula and material.spacegroup is None and all(material.labels.get(c) is None for c in columns):
        return reject("empty_row", "record has no formula, space group or label")
    if not formula:
        return reject("bad_formula", "formula: missing")
    try:
        parsed = parse_formula(formula)
    except (ValueError, KeyError, TypeError) as exc:
        return reject("bad_formula", f"formula: '{formula}' is not a chemical formula ({exc})")
    if parsed.num_atoms <= 0:
        return reject("bad_formula", f"formula: '{formula}' has no atoms")
    if parsed.not_elements:
        return reject(
            "unknown_element",
            f"formula: '{formula}' contains {', '.join(parsed.not_elements)}, not an element",
        )
    if material.spacegroup is None:
        return reject("bad_spacegroup", "spacegroup: missing")
    if material.spacegroup not in SPACEGROUP_RANGE:
        return reject("bad_spacegroup", f"spacegroup: {material.spacegroup} is outside 1..230")
    return None


def check_hierarchy(tasks: Sequence[TaskConfig]) -> None:
    """A task's ``coarse_classes`` name a coarse task among ``tasks`` and map every class onto one of
    its; its ``applies_when`` names other classification tasks among ``tasks`` and classes of theirs."""
    by_name = {task.name: task for task in tasks}
    for task in tasks:
        for name, classes in (task.applies_when or {}).items():
            other = by_name.get(name)
            if other is None or other is task or other.classes is None:
                raise DataError(
                    f"task '{task.name}': applies_when names '{name}', not another classification task"
                )
            unknown = sorted(set(classes) - set(other.classes))
            if unknown or not classes:
                raise DataError(
                    f"task '{task.name}': applies_when lists {unknown or 'no classes'} for '{name}' "
                    f"(its classes: {', '.join(other.classes)})"
                )
        if task.coarse_task is None or task.coarse_classes is None:
            continue
        coarse = by_name.get(task.coarse_task)
        if coarse is None or coarse.classes is None:
            raise DataError(
                f"task '{task.name}': coarse_task '{task.coarse_task}' is not a classification task"
            )
        missing = sorted(set(task.classes or []) - set(task.coarse_classes))
        unknown = sorted(set(task.coarse_classes.values()) - set(coarse.classes))
        if missing or unknown:
            raise DataError(
                f"task '{task.name}': coarse_classes must map each of its classes onto a class of "
                f"'{coarse.name}' (unmapped: {missing or '-'}; not its classes: {unknown or '-'})"
            )


def _resolve_classes(task: TaskConfig, materials: Sequence[Material]) -> TaskConfig:
    """Fill in what the task leaves to the data (a classifier's classes)."""
    resolved = task_type(task).resolve(task, (m.labels.get(task.label_column) for m in materials))
    if resolved.classes != task.classes:
        logger.info("task '%s': classes inferred from the data: %s", task.name, resolved.classes)
    return resolved


def _canonical_labels(material: Material, tasks: Sequence[TaskConfig]) -> dict[str, LabelValue] | Reject:
    """Labels of the task columns only, as exact class names or floats; a reject if one is invalid."""
    labels: dict[str, LabelValue] = {}
    for task in tasks:
        column = task.label_column
        value = material.labels.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            labels[column] = None
            continue
        kind = task_type(task)
        canonical = kind.canonical(task, value)
        if canonical is None:
            reason = f"{column}: '{label_text(value)}' is not one of: {kind.expected(task)}"
            return Reject(id=material.id, source=material.source, reason=reason, category="bad_label")
        labels[column] = canonical
    if all(value is None for value in labels.values()):
        reason = f"labels: every task label is missing ({', '.join(labels)})"
        return Reject(id=material.id, source=material.source, reason=reason, category="no_labels")
    return labels


def _duplicate_key(material: Material) -> tuple[str, ...]:
    # Structures are never compared: two records with structures are distinct
    # unless they share an id.
    if material.has_structure:
        return ("id", material.id)
    return ("composition", formula_key(material.formula), str(material.spacegroup))


def _merge_duplicates(materials: Sequence[Material]) -> tuple[list[Material], int, list[Reject]]:
    """Merge records of one material; reject every record of a material with contradictory labels.

    A missing label does not contradict a present one: merged records keep the
    union of their labels.
    """
    groups: dict[tuple[str, ...], list[Material]] = {}
    for material in materials:
        groups.setdefault(_duplicate_key(material), []).append(material)

    kept: list[Material] = []
    rejects: list[Reject] = []
    merged = 0
    for key, group in groups.items():
        if len(group) == 1:
            kept.append(group[0])
            continue
        values = {column: _present_values(group, column) for column in group[0].labels}
        differing = [column for column, found in values.items() if len(found) > 1]
        if differing:
            reason = _conflict_reason(key, group, differing)
            rejects.extend(
                Reject(id=m.id, source=m.source, reason=reason, category="conflicting_labels") for m in group
            )
            continue
        union = {column: (found[0] if found else None) for column, found in values.items()}
        kept.append(replace(group[0], labels=union))
        merged += len(group) - 1
    return kept, merged, rejects


def _present_values(group: Sequence[Material], column: str) -> list[LabelValue]:
    found: list[LabelValue] = []
    for material in group:
        value = material.labels.get(column)
        if value is not None and value not in found:
            found.append(value)
    return found


def _conflict_reason(key: tuple[str, ...], group: Sequence[Material], columns: Sequence[str]) -> str:
    first = group[0]
    what = f"id {first.id}" if key[0] == "id" else f"{first.formula} in space group {first.spacegroup}"
    parts = []
    for column in columns:
        listed = ", ".join(f"{m.labels.get(column)} ({m.source})" for m in group)
        parts.append(f"{column}: {listed}")
    return f"conflicting labels for {what}: {'; '.join(parts)}"


def _reject_duplicate_ids(materials: Sequence[Material]) -> tuple[list[Material], list[Reject]]:
    """Ids must be unique: splits, predictions and reports refer to materials by id."""
    first_source: dict[str, str] = {}
    kept: list[Material] = []
    rejects: list[Reject] = []
    for material in materials:
        if material.id in first_source:
            reason = f"id: '{material.id}' already used by the record at {first_source[material.id]}"
            rejects.append(Reject(material.id, material.source, reason, "duplicate_id"))
            continue
        first_source[material.id] = material.source
        kept.append(material)
    return kept, rejects


def write_rejects(path: str | Path, rejects: Iterable[Reject]) -> None:
    """Write rejects as CSV with columns id, source, category, reason."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "source", "category", "reason"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(reject.as_row() for reject in rejects)
    atomic_write(path, buffer.getvalue())


def format_report(counts: dict[str, int]) -> str:
    """A short human summary of a cleaning run."""
    fixed = {"read", "kept", "duplicates_merged"}
    rejected = {key: value for key, value in counts.items() if key not in fixed and value}
    lines = [
        f"read {counts.get('read', 0)} records",
        f"kept {counts.get('kept', 0)}",
        f"merged {counts.get('duplicates_merged', 0)} duplicate records",
        f"rejected {sum(rejected.values())}" + (":" if rejected else ""),
    ]
    width = max((len(key) for key in rejected), default=0)
    lines.extend(f"  {key:<{width}}  {value}" for key, value in rejected.items())
    return "\n".join(lines)
