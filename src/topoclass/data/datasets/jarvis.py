"""JARVIS-DFT spin-orbit spillage labels joined with the JARVIS crystal structures available here.

``<data_dir>/jarvis/`` holds zipped JSON files ``{"train"|"val"|"test": {JARVIS id: value}}``:
spillage class (1: spillage > 0.1) and value for about 11k ids without structures, and
POSCAR texts for 1,056 ids. Only ids with both a structure and a spillage label can be
used (294): a small set, reported as such. Labelled ids without a structure are not
materials here (nothing is known about them but an id) and are only counted in the log.

The published split of each material is kept, label-free, in ``Material.source``
(``jarvis/dft_3d_spillage_class.json.zip[train]``); :func:`published_split` reads it back.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path
from typing import Any

from topoclass.config import DataConfig, TaskConfig
from topoclass.data.datasets import register, require_data_dir
from topoclass.data.records import Material, RawDataset, StructureRef
from topoclass.errors import DataError

logger = logging.getLogger(__name__)

NAME = "jarvis"
CLASS_FILE = "dft_3d_spillage_class.json.zip"
VALUE_FILE = "dft_3d_spillage_value.json.zip"
STRUCTURE_FILE = "dft_3d_structures_tc_supercon.json.zip"
SPLITS = ("train", "val", "test")
CLASS_TASK = "spillage_class"
VALUE_TASK = "spillage_value"
# Class 0/1 in the files; named for what they mean: spillage <= 0.1 or > 0.1 (a topological candidate).
CLASS_NAMES = {0: "low", 1: "high"}
_SPLIT_IN_SOURCE = re.compile(r"\[(train|val|test)\]$")


def jarvis_tasks() -> list[TaskConfig]:
    """The default tasks of this dataset."""
    return [
        TaskConfig(name=CLASS_TASK, classes=[CLASS_NAMES[0], CLASS_NAMES[1]]),
        TaskConfig(name=VALUE_TASK, type="regression"),
    ]


@register(NAME)
def load_jarvis(data: DataConfig) -> RawDataset:
    """Materials with both a POSCAR structure and a spillage label."""
    folder = require_data_dir(data) / NAME
    classes = _read_split_file(folder / CLASS_FILE)
    values = _read_split_file(folder / VALUE_FILE)
    structures = _read_split_file(folder / STRUCTURE_FILE)

    materials: list[Material] = []
    for material_id, (_structure_split, poscar) in structures.items():
        if material_id not in classes:
            continue
        label_split, raw_class = classes[material_id]
        if raw_class not in CLASS_NAMES:
            raise DataError(
                f"id {material_id}: class must be 0 or 1, got {raw_class!r}", file=folder / CLASS_FILE
            )
        value = values.get(material_id, (label_split, None))[1]
        materials.append(
            Material(
                id=material_id,
                formula="",
                spacegroup=None,
                labels={
                    CLASS_TASK: CLASS_NAMES[raw_class],
                    VALUE_TASK: None if value is None else float(value),
                },
                structure=StructureRef(text=_poscar_text(poscar), format="poscar"),
                source=f"{NAME}/{CLASS_FILE}[{label_split}]",
            )
        )
    logger.warning(
        "%s: only %d materials have both a structure and a spillage label (a small set; "
        "%d labelled ids have no structure, %d structures have no label)",
        NAME,
        len(materials),
        len(classes) - len(materials),
        len(structures) - len(materials),
    )
    return RawDataset(name=NAME, materials=materials, rejects=[], tasks=jarvis_tasks(), main_task=CLASS_TASK)


def published_split(material: Material) -> str | None:
    """The JARVIS leaderboard split ("train", "val" or "test") recorded in the material's source."""
    match = _SPLIT_IN_SOURCE.search(material.source)
    return match.group(1) if match else None


def _read_split_file(path: Path) -> dict[str, tuple[str, Any]]:
    """``{id: (split, value)}`` from a zipped ``{split: {id: value}}`` JSON file."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [name for name in archive.namelist() if name.endswith(".json")]
            if len(members) != 1:
                raise DataError(f"expected one .json file in the archive, found {len(members)}", file=path)
            tree = json.loads(archive.read(members[0]))
    except FileNotFoundError:
        raise DataError("file not found (see the data README for the JARVIS files)", file=path) from None
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"not a readable zipped JSON file ({exc})", file=path) from None
    if (
        not isinstance(tree, dict)
        or not set(tree) <= set(SPLITS)
        or not all(isinstance(v, dict) for v in tree.values())
    ):
        raise DataError(
            f"expected an object with keys among {', '.join(SPLITS)}, each an object of ids", file=path
        )
    return {
        material_id: (split, value)
        for split, entries in tree.items()
        for material_id, value in entries.items()
    }


def _poscar_text(text: str) -> str:
    # The structure file stores POSCARs with escaped newlines ("\\n") inside one line.
    return text.replace("\\n", "\n") if "\n" not in text else text
