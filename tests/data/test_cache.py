"""The featurization cache: hit on unchanged inputs, rebuilt when inputs, settings or its files change."""

from __future__ import annotations

import torch

from tests.conftest import write_synthetic_table
from topoclass.config import DataConfig, TaskConfig
from topoclass.data.prepare import prepare_dataset

TASKS = [TaskConfig(name="topological", classes=["trivial", "topological"])]


def _config(tmp_path, table, **graph):
    return DataConfig(
        dataset="table", table=table, tasks=TASKS, cache_dir=tmp_path / "cache", graph=graph or {}
    )


def test_second_load_comes_from_the_cache_with_identical_tensors(tmp_path):
    table = write_synthetic_table(tmp_path / "m.csv", 60)
    first = prepare_dataset(_config(tmp_path, table))
    second = prepare_dataset(_config(tmp_path, table))
    assert not first.from_cache and second.from_cache
    assert first.features.ids == second.features.ids
    for name, tensor in first.features.tensors().items():
        assert torch.equal(tensor, second.features.tensors()[name]) or torch.allclose(
            tensor, second.features.tensors()[name], equal_nan=True
        )
    assert first.counts == second.counts and len(first.rejects) == len(second.rejects)


def test_changed_input_or_settings_rebuild(tmp_path):
    table = write_synthetic_table(tmp_path / "m.csv", 60)
    prepare_dataset(_config(tmp_path, table))
    lines = table.read_text().splitlines()
    lines[5] = (
        lines[5].replace("trivial", "topological")
        if "trivial" in lines[5]
        else lines[5].replace("topological", "trivial")
    )
    table.write_text("\n".join(lines) + "\n")
    assert not prepare_dataset(_config(tmp_path, table)).from_cache
    assert prepare_dataset(_config(tmp_path, table)).from_cache
    assert not prepare_dataset(_config(tmp_path, table, cutoff=5.0)).from_cache


def test_damaged_cache_is_rebuilt(tmp_path, caplog):
    table = write_synthetic_table(tmp_path / "m.csv", 60)
    entry = prepare_dataset(_config(tmp_path, table)).cache_path
    blob = bytearray((entry / "features.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (entry / "features.safetensors").write_bytes(bytes(blob))
    again = prepare_dataset(_config(tmp_path, table))
    assert not again.from_cache
    assert "damaged" in caplog.text
    assert prepare_dataset(_config(tmp_path, table)).from_cache
