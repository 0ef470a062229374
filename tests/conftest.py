"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SYNTHETIC_CONFIG, write_synthetic_table
from topoclass.config import TaskConfig, load_config
from topoclass.data.build import prepare_dataset


@pytest.fixture
def synthetic_config(tmp_path: Path):
    """Factory: write a synthetic table and a small config; returns the config path."""

    def make(n: int = 200, epochs: int = 3, every_steps: int = 0) -> Path:
        table = write_synthetic_table(tmp_path / "materials.csv", n)
        config = tmp_path / "config.yaml"
        config.write_text(
            SYNTHETIC_CONFIG.format(table=table, epochs=epochs, every_steps=every_steps, export_onnx="false")
        )
        return config

    return make


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A featurized synthetic table of 120 materials (tasks topological and gap), for trainers."""
    root = tmp_path_factory.mktemp("faults")
    table = write_synthetic_table(root / "materials.csv", 120)
    config = load_config(
        None,
        {
            "data.dataset": "table",
            "data.table": str(table),
            "data.tasks": [
                TaskConfig(name="topological").model_dump(),
                TaskConfig(name="gap", type="regression").model_dump(),
            ],
            "data.cache_dir": str(root / "cache"),
        },
    )
    return prepare_dataset(config.data)
