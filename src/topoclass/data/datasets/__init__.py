"""Which datasets exist, and how a configuration picks one and its tasks.

Each adapter module registers itself with :func:`register`: a function that reads
the dataset into a :class:`RawDataset` (records before cleaning, the records it
already turned away, the tasks it offers) and a cheap check of its sources that
runs before anything is written to disk. The config may replace the tasks and
the headline task. Adding a dataset is one module here plus its import below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from topoclass.config import DATA_DIR_ENV, DataConfig, TaskConfig
from topoclass.data.records import RawDataset
from topoclass.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

Loader = Callable[[DataConfig], RawDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: how to read it and how to check its sources cheaply."""

    name: str
    load: Loader
    check: Callable[[DataConfig], None]
    takes_config_tasks: bool  # False: the config's tasks replace the built-in ones after reading


DATASETS: dict[str, DatasetSpec] = {}


def register(
    name: str, *, check: Callable[[DataConfig], None] | None = None, own_tasks: bool = False
) -> Callable[[Loader], Loader]:
    """Register a dataset loader under ``name``.

    ``check`` defaults to requiring ``<data_dir>/<name>/``; ``own_tasks`` means the loader
    reads the config's tasks itself (a user table) rather than offering built-in ones.
    """

    def decorate(load: Loader) -> Loader:
        DATASETS[name] = DatasetSpec(name, load, check or _folder_check(name), own_tasks)
        return load

    return decorate


def require_data_dir(data: DataConfig) -> Path:
    """The data directory; DataError saying how to set it when it is missing or absent."""
    data_dir = data.resolved_data_dir()
    how = f"set it with --data-dir or the environment variable {DATA_DIR_ENV}"
    if data_dir is None:
        raise DataError(f"no data directory given for dataset '{data.dataset}': {how}")
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} not found: {how}", file=data_dir)
    return data_dir


def _folder_check(name: str) -> Callable[[DataConfig], None]:
    def check(data: DataConfig) -> None:
        folder = require_data_dir(data) / name
        if not folder.is_dir():
            raise DataError(f"no '{name}' folder in the data directory", file=folder)

    return check


def dataset_spec(data: DataConfig) -> DatasetSpec:
    """The registered dataset ``data.dataset`` names; ConfigError listing the known ones."""
    spec = DATASETS.get(data.dataset)
    if spec is None:
        known = ", ".join(sorted(DATASETS))
        raise ConfigError(f"data.dataset: unknown dataset '{data.dataset}' (known: {known})")
    return spec


def check_sources(data: DataConfig) -> None:
    """Fail now, before anything is written, if the dataset's files are not where the config says."""
    dataset_spec(data).check(data)


def load_dataset(data: DataConfig) -> RawDataset:
    """Read the dataset named by ``data.dataset``, with the config's tasks applied."""
    spec = dataset_spec(data)
    spec.check(data)
    dataset = spec.load(data)
    if data.tasks is not None and not spec.takes_config_tasks:
        _check_label_columns(data.tasks, dataset, (data.resolved_data_dir() or Path()) / spec.name)
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


# The adapters register themselves on import.
from topoclass.data.datasets import jarvis, table, tang2019, tqc2020  # noqa: E402, F401
