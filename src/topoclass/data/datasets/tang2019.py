"""Tang et al. 2019 (Topological Materials Arsenal) labels by space group and formula.

Four text files, one per class, each line ``SPACEGROUP, FORMULA``. They give two
tasks of one model: topological vs trivial, and the finer class. Malformed
lines are reported as rejects; a missing file is fatal.
"""

from __future__ import annotations

import logging

from topoclass.config import DataConfig, TaskConfig
from topoclass.data.datasets import register, require_data_dir
from topoclass.data.records import Material, RawDataset, Reject
from topoclass.data.tables import read_data_text

logger = logging.getLogger(__name__)

NAME = "tang2019"
BINARY_TASK = "topological"
CLASS_TASK = "topo_class"
BINARY_CLASSES = ["trivial", "topological"]
CLASS_CLASSES = ["trivial", "TI", "TCI", "semimetal"]

# File name -> finer class; every class but "trivial" is topological.
FILES = {
    "case1_ccmp.txt": "trivial",
    "ti_ccmp.txt": "TI",
    "tci_ccmp.txt": "TCI",
    "case3_ccmp.txt": "semimetal",
}


def tang2019_tasks() -> list[TaskConfig]:
    """The default tasks of this dataset."""
    return [
        TaskConfig(name=BINARY_TASK, classes=list(BINARY_CLASSES)),
        TaskConfig(
            name=CLASS_TASK,
            classes=list(CLASS_CLASSES),
            coarse_task=BINARY_TASK,  # every class but trivial is topological
            coarse_classes={
                name: "trivial" if name == "trivial" else "topological" for name in CLASS_CLASSES
            },
        ),
    ]


@register(NAME)
def load_tang2019(data: DataConfig) -> RawDataset:
    """Read ``<data_dir>/tang2019/*.txt`` into materials labelled for both tasks."""
    folder = require_data_dir(data) / NAME
    materials: list[Material] = []
    rejects: list[Reject] = []
    for file_name, topo_class in FILES.items():
        path = folder / file_name
        text = read_data_text(path, missing_hint="the Tang 2019 dataset has four files")
        labels = {
            BINARY_TASK: "trivial" if topo_class == "trivial" else "topological",
            CLASS_TASK: topo_class,
        }
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            record = _parse_line(line, f"{NAME}/{file_name}:{line_number}", labels)
            if isinstance(record, Material):
                materials.append(record)
            else:
                rejects.append(record)
    logger.info("%s: read %d materials, %d malformed lines", NAME, len(materials), len(rejects))
    return RawDataset(
        name=NAME, materials=materials, rejects=rejects, tasks=tang2019_tasks(), main_task=BINARY_TASK
    )


def _parse_line(line: str, source: str, labels: dict[str, str]) -> Material | Reject:
    fields = [part.strip() for part in line.split(",")]
    if len(fields) != 2 or not fields[1]:
        reason = f"line: expected 'SPACEGROUP, FORMULA', got '{line.strip()}'"
        return Reject(id=line.strip(), source=source, reason=reason, category="malformed_line")
    raw_spacegroup, formula = fields
    material_id = f"{formula}@{raw_spacegroup}"
    try:
        spacegroup = int(raw_spacegroup)
    except ValueError:
        reason = f"spacegroup: '{raw_spacegroup}' is not an integer"
        return Reject(id=material_id, source=source, reason=reason, category="bad_spacegroup")
    return Material(
        id=material_id, formula=formula, spacegroup=spacegroup, labels=dict(labels), source=source
    )
