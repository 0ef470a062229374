"""Topological Quantum Chemistry (2020 scrape) labels with Materials Project crystal structures.

``<data_dir>/tqc2020/labels.csv`` (semicolon-separated, values decorated with ``*`` and
``†`` as published) gives three tasks of one model: ``topo_class``, its refinement
``sub_class``, and ``cross_type``, defined for semimetals only (empty: a missing label).
Structures are ``structures/<material_id>.cif``. Reading the dataset is cheap: structures
are referenced, not parsed; formula and space group come from them at featurization.
An id without a CIF becomes a ``missing_structure`` reject.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from topoclass.config import DataConfig, TaskConfig
from topoclass.data.datasets import register, require_data_dir
from topoclass.data.records import LabelValue, Material, RawDataset, Reject, StructureRef
from topoclass.data.tables import read_data_text
from topoclass.errors import DataError

logger = logging.getLogger(__name__)

NAME = "tqc2020"
LABELS_FILE = "labels.csv"
STRUCTURES_DIR = "structures"
ID_COLUMN = "material_id"
TASK_CLASSES = {
    "topo_class": ["trivial", "TI", "SM"],
    "sub_class": ["LCEBR", "SEBR", "NLC", "ES", "ESFD"],
    "cross_type": ["Point", "Line", "Plane"],
}
MAIN_TASK = "topo_class"
# Topological Quantum Chemistry's refinement: a linear combination of elementary band representations
# is trivial, a split one or none is a TI, an enforced semimetal (with or without Fermi degeneracy) is SM.
SUB_CLASS_OF = {"LCEBR": "trivial", "SEBR": "TI", "NLC": "TI", "ES": "SM", "ESFD": "SM"}
_DECORATIONS = "*†"


def tqc2020_tasks() -> list[TaskConfig]:
    """The default tasks of this dataset."""
    hierarchy: dict[str, dict[str, Any]] = {
        "sub_class": {"coarse_task": MAIN_TASK, "coarse_classes": dict(SUB_CLASS_OF)},
        "cross_type": {"applies_when": {MAIN_TASK: ["SM"]}},
    }
    return [
        TaskConfig(name=name, classes=list(classes), **hierarchy.get(name, {}))
        for name, classes in TASK_CLASSES.items()
    ]


@register(NAME)
def load_tqc2020(data: DataConfig) -> RawDataset:
    """Read the labels and reference each material's CIF."""
    folder = require_data_dir(data) / NAME
    labels_path = folder / LABELS_FILE
    structures = folder / STRUCTURES_DIR
    text = read_data_text(labels_path, missing_hint="the tqc2020 dataset needs labels.csv")
    try:
        available = set(os.listdir(structures))
    except OSError:
        raise DataError("structure folder not found", file=structures) from None

    rows = csv.reader(text.splitlines(), delimiter=";")
    header = [column.strip() for column in next(rows, [])]
    expected = [ID_COLUMN, *TASK_CLASSES]
    if header != expected:
        raise DataError(
            f"header must be {';'.join(expected)}, got {';'.join(header)}", file=labels_path, line=1
        )

    materials: list[Material] = []
    rejects: list[Reject] = []
    for line_number, row in enumerate(rows, start=2):
        if not any(field.strip() for field in row):
            continue
        source = f"{NAME}/{LABELS_FILE}:{line_number}"
        record = _parse_row(row, source, structures, available)
        if isinstance(record, Material):
            materials.append(record)
        else:
            rejects.append(record)

    missing = sum(reject.category == "missing_structure" for reject in rejects)
    logger.info(
        "%s: %d materials with a structure, %d ids without one (reported as rejects), %d malformed rows",
        NAME,
        len(materials),
        missing,
        len(rejects) - missing,
    )
    return RawDataset(
        name=NAME, materials=materials, rejects=rejects, tasks=tqc2020_tasks(), main_task=MAIN_TASK
    )


def _parse_row(row: list[str], source: str, structures: Path, available: set[str]) -> Material | Reject:
    values = [field.strip().strip(_DECORATIONS).strip() for field in row]
    material_id = values[0] if values else ""
    if len(values) != 1 + len(TASK_CLASSES) or not material_id:
        reason = f"line: expected {1 + len(TASK_CLASSES)} ';'-separated fields with an id, got {len(values)}"
        return Reject(
            id=material_id or ";".join(row), source=source, reason=reason, category="malformed_line"
        )
    cif_name = f"{material_id}.cif"
    if cif_name not in available:
        reason = f"no structure file {STRUCTURES_DIR}/{cif_name}"
        return Reject(id=material_id, source=source, reason=reason, category="missing_structure")
    labels: dict[str, LabelValue] = {
        task: (value or None) for task, value in zip(TASK_CLASSES, values[1:], strict=True)
    }
    return Material(
        id=material_id,
        formula="",
        spacegroup=None,
        labels=labels,
        structure=StructureRef(path=structures / cif_name, format="cif"),
        source=source,
    )
