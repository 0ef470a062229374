"""Which datasets exist, and how a configuration picks one and its tasks.

Each dataset adapter returns a :class:`RawDataset`: the records as read (not yet
cleaned), the records it already turned away, and the tasks it offers. The
config may replace those tasks and the headline task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from topoclass.config import DATA_DIR_ENV, DataConfig, TaskConfig
from topoclass.data.records import Material, Reject
from topoclass.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

KNOWN_DATASETS = ("jarvis", "table", "tang2019", "tqc2020")


@dataclass
class RawDataset:
    """A dataset as read: records before cleaning, early rejects, its tasks and headline task."""

    name: str
    materials: list[Material]
    rejects: list[Reject]
    tasks: list[TaskConfig]
    main_task: str


def load_dataset(data: DataConfig) -> RawDataset:
    """Read the dataset named by ``data.dataset``, with the config's tasks applied."""
    name = data.dataset
    if name not in KNOWN_DATASETS:
        raise ConfigError(f"data.dataset: unknown dataset '{name}' (known: {', '.join(KNOWN_DATASETS)})")
    if name == "table":
        dataset = _load_table(data)
    else:
        data_dir = _require_data_dir(data)
        dataset = _load_adapter(name, data_dir, data)
        if data.tasks is not None:
            _check_label_columns(data.tasks, dataset, data_dir / name)
            dataset.tasks = list(data.tasks)
    _check_task_names(dataset.tasks)
    task_names = [task.name for task in dataset.tasks]
    if data.main_task is not None:
        if data.main_task not in task_names:
            raise ConfigError(
                f"data.main_task: '{data.main_task}' is not a task (tasks: {', '.join(task_names)})"
            )
        dataset.main_task = data.main_task
    elif dataset.main_task not in task_names:
        dataset.main_task = task_names[0]
    logger.info(
        "dataset %s: %d records read, %d turned away, tasks %s (main: %s)",
        dataset.name,
        len(dataset.materials),
        len(dataset.rejects),
        task_names,
        dataset.main_task,
    )
    return dataset


def _load_adapter(name: str, data_dir: Path, data: DataConfig) -> RawDataset:
    # Imported on demand: each adapter pulls in only what its own format needs.
    if name == "tang2019":
        from topoclass.data.tang2019 import load_tang2019

        return load_tang2019(data_dir)
    if name == "tqc2020":
        from topoclass.data.tqc2020 import load_tqc2020

        return load_tqc2020(data_dir, data)
    from topoclass.data.jarvis import load_jarvis

    return load_jarvis(data_dir, data)


def _require_data_dir(data: DataConfig) -> Path:
    data_dir = data.resolved_data_dir()
    how = f"set it with --data-dir or the environment variable {DATA_DIR_ENV}"
    if data_dir is None:
        raise DataError(f"no data directory given for dataset '{data.dataset}': {how}")
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} not found: {how}", file=data_dir)
    return data_dir


def _load_table(data: DataConfig) -> RawDataset:
    from topoclass.data.tables import read_table

    if data.table is None:
        raise ConfigError(
            "data.table: required for dataset 'table' (path of a .csv, .tsv, .txt or .jsonl file)"
        )
    if not data.tasks:
        raise ConfigError("data.tasks: required for dataset 'table'")
    path = data.table
    data_dir = data.resolved_data_dir()
    # A relative table path is looked up in the data directory when it is not found as given.
    if not path.is_absolute() and not path.exists() and data_dir is not None:
        path = data_dir / path
    materials, rejects = read_table(
        path,
        id_column=data.id_column,
        formula_column=data.formula_column,
        spacegroup_column=data.spacegroup_column,
        structure_column=data.structure_column,
        label_columns=[task.label_column for task in data.tasks],
    )
    return RawDataset(
        name=path.stem,
        materials=materials,
        rejects=rejects,
        tasks=list(data.tasks),
        main_task=data.tasks[0].name,
    )


def _check_label_columns(tasks: list[TaskConfig], dataset: RawDataset, where: Path) -> None:
    available = {column for material in dataset.materials for column in material.labels}
    for task in tasks:
        if task.label_column not in available:
            raise DataError(
                f"task '{task.name}': label column '{task.label_column}' not in dataset '{dataset.name}'"
                f" (columns: {', '.join(sorted(available))})",
                file=where,
                field=task.label_column,
            )


def _check_task_names(tasks: list[TaskConfig]) -> None:
    names = [task.name for task in tasks]
    if not names:
        raise ConfigError("data.tasks: at least one task is needed")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"data.tasks: task name '{repeated[0]}' is used twice")
