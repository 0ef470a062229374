"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SYNTHETIC_CONFIG, write_synthetic_table


@pytest.fixture
def synthetic_config(tmp_path: Path):
    """Factory: write a synthetic table and a small config; returns the config path."""

    def make(n: int = 200, epochs: int = 3, every_steps: int = 0) -> Path:
        table = write_synthetic_table(tmp_path / "materials.csv", n)
        config = tmp_path / "config.yaml"
        config.write_text(SYNTHETIC_CONFIG.format(table=table, epochs=epochs, every_steps=every_steps))
        return config

    return make
