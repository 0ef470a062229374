"""The featurization cache: hit on unchanged inputs, rebuilt when inputs, settings or its files change."""

from __future__ import annotations

import os
import time

import torch

from tests.helpers import write_synthetic_table
from topoclass.cli import main
from topoclass.config import DataConfig, TaskConfig
from topoclass.data.build import prepare_dataset
from topoclass.data.cache import list_entries

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


def test_prune_removes_only_entries_idle_longer_than_asked(tmp_path, capsys):
    table = write_synthetic_table(tmp_path / "m.csv", 40)
    old = prepare_dataset(_config(tmp_path, table)).cache_path
    recent = prepare_dataset(_config(tmp_path, table, cutoff=5.0)).cache_path
    not_ours = tmp_path / "cache" / "my-notes"
    not_ours.mkdir()
    (not_ours / "MANIFEST.json").write_text("[]")
    crashed_write = tmp_path / "cache" / ".tmp-table-abc-123"
    crashed_write.mkdir()
    (crashed_write / "features.safetensors").write_bytes(b"partial")
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old / "MANIFEST.json", (ten_days_ago, ten_days_ago))
    os.utime(crashed_write, (ten_days_ago, ten_days_ago))
    os.utime(not_ours, (ten_days_ago, ten_days_ago))

    listed = {entry.path.name: entry for entry in list_entries(tmp_path / "cache")}
    assert listed[old.name].idle_days > 9.9 and listed[recent.name].idle_days < 0.1
    assert not listed[crashed_write.name].complete and not_ours.name not in listed

    cache_dir = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["cache", "prune", "--older-than", "5", "--dry-run", *cache_dir]) == 0
    assert old.exists() and crashed_write.exists()
    assert main(["cache", "prune", "--older-than", "5", *cache_dir]) == 0
    assert not old.exists() and not crashed_write.exists() and recent.exists()
    assert (not_ours / "MANIFEST.json").exists()  # a directory the cache did not write is never touched
    assert "2 entries" in capsys.readouterr().out.splitlines()[-1]


def test_a_cache_hit_counts_as_a_use(tmp_path):
    table = write_synthetic_table(tmp_path / "m.csv", 40)
    entry = prepare_dataset(_config(tmp_path, table)).cache_path
    long_ago = time.time() - 100 * 86400
    os.utime(entry / "MANIFEST.json", (long_ago, long_ago))
    assert prepare_dataset(_config(tmp_path, table)).from_cache
    assert list_entries(tmp_path / "cache")[0].idle_days < 0.1
