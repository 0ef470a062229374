from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from topoclass.checkpoint import storage
from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag
from topoclass.errors import CheckpointError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "epoch": int(value)}


def _flip_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


def test_tag_names_parse_and_order():
    assert CheckpointTag(5, None).name() == "checkpoint_epoch_5"
    assert CheckpointTag(7, 1200).name() == "checkpoint_epoch_7_step_1200"
    assert CheckpointTag.parse("checkpoint_epoch_7_step_1200") == CheckpointTag(7, 1200)
    assert CheckpointTag.parse("checkpoint_epoch_5") == CheckpointTag(5, None)
    for bad in ("best", "checkpoint_epoch_x", "checkpoint_epoch_5.corrupt-20240101T000000Z"):
        with pytest.raises(CheckpointError):
            CheckpointTag.parse(bad)
    tags = [CheckpointTag(8, 10), CheckpointTag(7), CheckpointTag(7, 1200), CheckpointTag(7, 900)]
    ordered = sorted(tags, key=CheckpointTag.sort_key)
    assert ordered == [CheckpointTag(7, 900), CheckpointTag(7, 1200), CheckpointTag(7), CheckpointTag(8, 10)]


def test_schedule_by_epochs_minutes_and_steps(tmp_path):
    clock = FakeClock()
    manager = CheckpointManager(tmp_path, every_epochs=5, every_minutes=30, every_steps=0, clock=clock)
    assert [e for e in range(1, 12) if manager.due_end_of_epoch(e)] == [5, 10]
    assert not manager.due_mid_epoch(1)
    clock.now += 30 * 60
    assert manager.due_mid_epoch(2)
    manager.save(CheckpointTag(0, 2), _state(0), metadata={})
    assert not manager.due_mid_epoch(3)  # saving restarts the clock

    by_steps = CheckpointManager(tmp_path, every_epochs=0, every_minutes=0, every_steps=100, clock=clock)
    clock.now += 10**6
    assert [s for s in range(0, 301) if by_steps.due_mid_epoch(s)] == [100, 200, 300]
    assert not any(by_steps.due_end_of_epoch(e) for e in range(10))


def test_retention_keeps_newest_and_best_shares_files_by_hard_link(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(CheckpointTag(1), _state(1), metadata={"val": 1}, is_best=True)
    manager.save(CheckpointTag(2, 50), _state(2), metadata={}, is_best=False)
    manager.save(CheckpointTag(2), _state(3), metadata={})
    assert not (tmp_path / "checkpoint_epoch_1").exists()  # gone at once, its space freed in the background
    manager.wait_for_cleanup()
    assert sorted(os.listdir(tmp_path)) == [
        "best",
        "checkpoint_epoch_2",
        "checkpoint_epoch_2_step_50",
        "latest",
    ]
    assert (tmp_path / "latest").read_text().strip() == "checkpoint_epoch_2"

    best = manager.load(manager.best_path)  # epoch 1 was deleted, best still holds its state
    assert best.tag == CheckpointTag(1) and best.metadata == {"val": 1}
    assert torch.equal(best.state["model"]["w"], torch.full((3,), 1.0))

    path = manager.save(CheckpointTag(3), _state(4), metadata={}, is_best=True)
    for name in storage.DATA_FILES:
        assert os.stat(path / name).st_ino == os.stat(manager.best_path / name).st_ino
    assert storage.verify(manager.best_path) is None
    assert storage.read_manifest(manager.best_path)["source"] == "checkpoint_epoch_3"


def test_save_best_writes_only_best(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save_best(CheckpointTag(4, 10), _state(4), metadata={"best_val_loss": 0.5})
    assert sorted(os.listdir(tmp_path)) == ["best"]
    loaded = manager.load(tmp_path / "best")
    assert loaded.tag == CheckpointTag(4, 10) and loaded.metadata["best_val_loss"] == 0.5
    assert manager.find_latest() is None


def test_find_latest_skips_corrupt_ones_renaming_them_aside(tmp_path, caplog):
    manager = CheckpointManager(tmp_path, keep_last=5)
    for epoch in (1, 2, 3):
        manager.save(CheckpointTag(epoch), _state(epoch), metadata={"epoch": epoch})
    _flip_byte(tmp_path / "checkpoint_epoch_3" / storage.TENSORS_FILE)
    (tmp_path / "checkpoint_epoch_2" / storage.MANIFEST_FILE).unlink()
    (tmp_path / ".tmp-checkpoint_epoch_4-12345").mkdir()

    with caplog.at_level(logging.WARNING):
        loaded = manager.find_latest()

    assert loaded is not None and loaded.tag == CheckpointTag(1) and loaded.metadata == {"epoch": 1}
    names = sorted(os.listdir(tmp_path))
    assert "checkpoint_epoch_1" in names and ".tmp-checkpoint_epoch_4-12345" not in names
    assert any(n.startswith("checkpoint_epoch_3.corrupt-") for n in names)
    assert any(n.startswith("checkpoint_epoch_2.corrupt-") for n in names)
    assert "checkpoint_epoch_3" in caplog.text and "sha256 mismatch" in caplog.text
    assert "missing MANIFEST.json" in caplog.text


def test_find_latest_on_empty_or_missing_directory_is_none(tmp_path):
    assert CheckpointManager(tmp_path / "nothing-here").find_latest() is None


def test_load_explicit_checkpoint_run_directory_and_errors(tmp_path):
    run = tmp_path / "run"
    manager = CheckpointManager(run / "checkpoints")
    manager.save(CheckpointTag(1), _state(1), metadata={})
    manager.save(CheckpointTag(2, 7), _state(2), metadata={})

    assert manager.load(run).tag == CheckpointTag(2, 7)
    assert manager.load(run / "checkpoints").tag == CheckpointTag(2, 7)
    assert manager.load(run / "checkpoints" / "checkpoint_epoch_1").tag == CheckpointTag(1)

    other = CheckpointManager(tmp_path / "elsewhere")
    _flip_byte(run / "checkpoints" / "checkpoint_epoch_2_step_7" / storage.STATE_FILE)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        other.load(run / "checkpoints" / "checkpoint_epoch_2_step_7")
    assert other.load(run).tag == CheckpointTag(1)  # falls back, but leaves another run's files alone
    assert (run / "checkpoints" / "checkpoint_epoch_2_step_7").exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        other.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a topoclass checkpoint"):
        other.load(tmp_path / "empty")


def test_state_that_cannot_be_stored_leaves_no_trace(tmp_path):
    manager = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match=r"'optimizer\.hook'"):
        manager.save(CheckpointTag(1), {"optimizer": {"hook": lambda: None}}, metadata={})
    assert not any(tmp_path.iterdir())


class _Killed(Exception):
    pass


def test_death_while_committing_best_leaves_a_torn_best_that_resume_sets_aside(tmp_path, monkeypatch):
    def fake_kill(pid, signum):
        raise _Killed

    monkeypatch.setattr(storage.os, "kill", fake_kill)
    monkeypatch.setenv(storage.KILL_ENV, str(storage._write_count + 2))  # 1: the checkpoint, 2: best/
    manager = CheckpointManager(tmp_path)
    with pytest.raises(_Killed):
        manager.save(CheckpointTag(1), _state(1), metadata={}, is_best=True)
    assert storage.verify(tmp_path / "checkpoint_epoch_1") is None
    assert storage.verify(manager.best_path) == "missing MANIFEST.json (never committed)"

    monkeypatch.delenv(storage.KILL_ENV)
    loaded = manager.find_latest()
    assert loaded is not None and loaded.tag == CheckpointTag(1)
    assert not manager.best_path.exists()
    assert any(name.startswith("best.corrupt-") for name in os.listdir(tmp_path))


def test_retention_never_removes_the_checkpoint_just_saved(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for epoch in (1, 2, 3, 4):
        manager.save(CheckpointTag(epoch), _state(epoch), metadata={})
    manager.save(CheckpointTag(2), _state(20), metadata={})  # training restarted from an older point
    manager.wait_for_cleanup()
    names = sorted(path.name for path in tmp_path.glob("checkpoint_*"))
    assert names == ["checkpoint_epoch_2", "checkpoint_epoch_4"]
    restarted = manager.load(tmp_path / "checkpoint_epoch_2")
    assert torch.equal(restarted.state["model"]["w"], torch.full((3,), 20.0))
