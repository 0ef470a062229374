"""The example configs in configs/ are valid, and name datasets and tasks that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_synthetic_table
from topoclass.config import load_config
from topoclass.data.datasets import check_sources, load_dataset

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize("name", ["tang2019", "tqc2020_structures", "my_table"])
def test_example_configs_validate(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.run_dir is not None and str(config.run_dir).startswith("runs/")


def test_the_table_example_reads_a_table_with_its_declared_tasks(tmp_path):
    table = tmp_path / "my_materials.csv"
    write_synthetic_table(table, 20)
    text = table.read_text().replace("topological,gap", "topological,gap_eV")
    rows = [line + ("," if i else ",topo_class") for i, line in enumerate(text.splitlines())]
    table.write_text("\n".join(rows) + "\n")
    config = load_config(CONFIGS / "my_table.yaml", {"data.data_dir": str(tmp_path)})
    check_sources(config.data)
    raw = load_dataset(config.data)
    assert [t.name for t in raw.tasks] == ["topological", "topo_class", "band_gap"]
    assert len(raw.materials) == 20
