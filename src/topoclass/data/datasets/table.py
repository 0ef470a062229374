"""A user's own table of materials (``--dataset table``), with the tasks the config declares."""

from __future__ import annotations

from pathlib import Path

from topoclass.config import DataConfig
from topoclass.data.datasets import register
from topoclass.data.records import RawDataset
from topoclass.data.tables import SUPPORTED_SUFFIXES, read_table
from topoclass.errors import ConfigError, DataError

NAME = "table"


def table_path(data: DataConfig) -> Path:
    """The table file; a relative path not found as given is looked up in the data directory."""
    if data.table is None:
        raise ConfigError(
            f"data.table: required for dataset 'table' (a {', '.join(SUPPORTED_SUFFIXES)} file)"
        )
    path = data.table
    data_dir = data.resolved_data_dir()
    if not path.is_absolute() and not path.exists() and data_dir is not None:
        path = data_dir / path
    return path


def check_table(data: DataConfig) -> None:
    """The table exists and tasks are declared."""
    path = table_path(data)
    if not data.tasks:
        raise ConfigError("data.tasks: required for dataset 'table'")
    if not path.is_file():
        raise DataError("table file not found", file=path)


@register(NAME, check=check_table, own_tasks=True)
def load_table(data: DataConfig) -> RawDataset:
    """Read the table with the config's column names and tasks."""
    tasks = list(data.tasks or [])
    path = table_path(data)
    materials, rejects = read_table(
        path,
        id_column=data.id_column,
        formula_column=data.formula_column,
        spacegroup_column=data.spacegroup_column,
        structure_column=data.structure_column,
        label_columns=[task.label_column for task in tasks],
    )
    return RawDataset(
        name=path.stem, materials=materials, rejects=rejects, tasks=tasks, main_task=tasks[0].name
    )
