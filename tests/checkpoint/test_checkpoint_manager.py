from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from topoclass.checkpoint import storage
from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag, read_checkpoint
from topoclass.checkpoint.names import tag_or_none
from topoclass.config import CheckpointConfig
from topoclass.errors import CheckpointError, DamagedCheckpointError, ResumableStop


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Weights:
    """A component whose state is one tensor and a counter."""

    def __init__(self, value: float = 0.0) -> None:
        self.w = torch.full((3,), value)

    def state_dict(self) -> dict:
        return {"w": self.w.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.w = state["w"].clone()


def _manager(directory: Path, clock=None, **policy) -> tuple[CheckpointManager, Weights]:
    manager = CheckpointManager(directory, CheckpointConfig(**policy), **({"clock": clock} if clock else {}))
    weights = Weights()
    manager.attach({"model": weights}, lambda tag: {"epoch": tag.epoch})
    return manager, weights


def _flip_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


def test_tag_names_parse_and_order():
    assert CheckpointTag(5, None).name() == "checkpoint_epoch_5"
    assert CheckpointTag(7, 1200).name() == "checkpoint_epoch_7_step_1200"
    assert tag_or_none("checkpoint_epoch_7_step_1200") == CheckpointTag(7, 1200)
    assert tag_or_none("checkpoint_epoch_5") == CheckpointTag(5, None)
    for bad in ("best", "checkpoint_epoch_x", "checkpoint_epoch_5.corrupt-20240101T000000Z"):
        assert tag_or_none(bad) is None
    tags = [CheckpointTag(8, 10), CheckpointTag(7), CheckpointTag(7, 1200), CheckpointTag(7, 900)]
    ordered = sorted(tags, key=CheckpointTag.sort_key)
    assert ordered == [CheckpointTag(7, 900), CheckpointTag(7, 1200), CheckpointTag(7), CheckpointTag(8, 10)]


def test_the_manager_decides_at_epoch_end_full_best_only_or_nothing(tmp_path):
    manager, _ = _manager(tmp_path, every_epochs=5, every_minutes=0)
    with manager:
        decisions = {}
        for epoch, improved in [(1, False), (2, True), (5, False), (6, False), (7, True)]:
            decisions[epoch] = manager.on_epoch_end(epoch, improved=improved, last=False, stop=False)
        assert decisions[1] is None and decisions[6] is None
        assert decisions[2] == manager.best_path and decisions[7] == manager.best_path  # best only
        assert decisions[5] == tmp_path / "checkpoint_epoch_5"
        assert (
            manager.on_epoch_end(8, improved=False, last=True, stop=False) == tmp_path / "checkpoint_epoch_8"
        )
        assert (
            manager.on_epoch_end(9, improved=False, last=False, stop=True) == tmp_path / "checkpoint_epoch_9"
        )
        assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == [
            "checkpoint_epoch_5",
            "checkpoint_epoch_8",
            "checkpoint_epoch_9",
        ]


def test_the_manager_decides_mid_epoch_by_minutes_steps_and_stop(tmp_path):
    clock = FakeClock()
    manager, _ = _manager(tmp_path / "a", clock, every_minutes=30, every_steps=0)
    with manager:
        assert not manager.on_step(1, 1, epoch_done=False, stop=False)
        clock.now += 30 * 60
        assert not manager.on_step(1, 2, epoch_done=True, stop=False)  # the epoch's end decides then
        assert manager.on_step(1, 3, epoch_done=False, stop=False)
        assert not manager.on_step(1, 4, epoch_done=False, stop=False)  # saving restarts the clock
        assert manager.on_step(1, 5, epoch_done=False, stop=True)
    by_steps, _ = _manager(tmp_path / "b", clock, every_minutes=0, every_steps=100)
    with by_steps:
        saved = [s for s in range(1, 301) if by_steps.on_step(1, s, epoch_done=False, stop=False)]
    assert saved == [100, 200, 300]


def test_retention_keeps_newest_and_best_is_an_independent_copy(tmp_path):
    manager, weights = _manager(tmp_path, keep_last=2)
    with manager:
        weights.w.fill_(1)
        manager.save(CheckpointTag(1), best=True)
        manager.save(CheckpointTag(2, 50))
        weights.w.fill_(3)
        manager.save(CheckpointTag(2))
        assert not (
            tmp_path / "checkpoint_epoch_1"
        ).exists()  # gone at once, its space freed in the background
        manager.wait_for_cleanup()
        assert sorted(os.listdir(tmp_path)) == [
            "best",
            "checkpoint_epoch_2",
            "checkpoint_epoch_2_step_50",
            "latest",
        ]
        assert (tmp_path / "latest").read_text().strip() == "checkpoint_epoch_2"

        best = read_checkpoint(manager.best_path)  # epoch 1 was deleted, best still holds its state
        assert best.tag == CheckpointTag(1) and best.metadata == {"epoch": 1}
        assert torch.equal(best.state["model"]["w"], torch.full((3,), 1.0))

        path = manager.save(CheckpointTag(3), best=True)
        for name in storage.DATA_FILES:
            assert os.stat(path / name).st_ino != os.stat(manager.best_path / name).st_ino
        assert storage.read_manifest(manager.best_path)["source"] == "checkpoint_epoch_3"
        _flip_byte(path / storage.TENSORS_FILE)  # one damaged file never takes best/ with it
        storage.verify(manager.best_path)


def test_restore_loads_every_attached_component_and_names_a_missing_one(tmp_path):
    manager, weights = _manager(tmp_path)
    with manager:
        weights.w.fill_(7)
        path = manager.save(CheckpointTag(1))
        weights.w.fill_(0)
        manager.restore(read_checkpoint(path))
        assert torch.equal(weights.w, torch.full((3,), 7.0))
        manager.attach({"model": weights, "optimizer": Weights()}, lambda tag: {})
        with pytest.raises(CheckpointError, match="holds no 'optimizer' state"):
            manager.restore(read_checkpoint(path))


def test_find_latest_skips_corrupt_ones_renaming_them_aside(tmp_path, caplog):
    manager, _ = _manager(tmp_path, keep_last=5)
    with manager:
        for epoch in (1, 2, 3):
            manager.save(CheckpointTag(epoch))
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
    with CheckpointManager(tmp_path / "nothing-here", CheckpointConfig()) as manager:
        assert manager.find_latest() is None


def test_resuming_from_an_older_checkpoint_moves_the_later_timeline_aside(tmp_path):
    manager, _ = _manager(tmp_path, keep_last=5)
    with manager:
        manager.save(CheckpointTag(1))
        manager.save(CheckpointTag(2, 10), best=True)
        manager.save(CheckpointTag(2))
        manager.save(CheckpointTag(3))
        aside = manager.abandon_newer_than(CheckpointTag(2, 10))
    assert aside is not None and aside.name.startswith("abandoned-")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint_epoch_2", "checkpoint_epoch_3"]
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == [
        "checkpoint_epoch_1",
        "checkpoint_epoch_2_step_10",
    ]
    assert (tmp_path / "best").is_dir()  # best came from step 10: it belongs to the kept timeline
    assert not (tmp_path / "latest").exists()
    with CheckpointManager(tmp_path, CheckpointConfig()) as manager:
        assert manager.abandon_newer_than(CheckpointTag(2, 10)) is None
        assert manager.find_latest().tag == CheckpointTag(2, 10)


def test_state_that_cannot_be_stored_leaves_no_trace(tmp_path):
    class Unstorable:
        def state_dict(self):
            return {"hook": lambda: None}

        def load_state_dict(self, state):
            pass

    with CheckpointManager(tmp_path, CheckpointConfig()) as manager:
        manager.attach({"optimizer": Unstorable()}, lambda tag: {})
        with pytest.raises(CheckpointError, match=r"'optimizer\.hook'"):
            manager.save(CheckpointTag(1))
    assert not any(tmp_path.iterdir())


class _Killed(Exception):
    pass


def test_death_while_committing_best_leaves_a_torn_best_that_resume_sets_aside(tmp_path, monkeypatch):
    commits = []

    def die_on_second(count: int) -> None:
        commits.append(count)
        if len(commits) == 2:  # 1: the checkpoint, 2: best/
            raise _Killed

    monkeypatch.setattr(storage, "COMMIT_HOOKS", [die_on_second])
    manager, _ = _manager(tmp_path)
    with manager, pytest.raises(_Killed):
        manager.save(CheckpointTag(1), best=True)
    storage.verify(tmp_path / "checkpoint_epoch_1")
    with pytest.raises(DamagedCheckpointError, match=r"missing MANIFEST\.json"):
        storage.verify(manager.best_path)

    monkeypatch.setattr(storage, "COMMIT_HOOKS", [])
    with CheckpointManager(tmp_path, CheckpointConfig()) as fresh:
        loaded = fresh.find_latest()
    assert loaded is not None and loaded.tag == CheckpointTag(1)
    assert not fresh.best_path.exists()
    assert any(name.startswith("best.corrupt-") for name in os.listdir(tmp_path))


def test_retention_never_removes_the_checkpoint_just_saved(tmp_path):
    manager, weights = _manager(tmp_path, keep_last=2)
    with manager:
        for epoch in (1, 2, 3, 4):
            manager.save(CheckpointTag(epoch))
        weights.w.fill_(20)
        manager.save(CheckpointTag(2))  # training restarted from an older point
        manager.wait_for_cleanup()
    names = sorted(path.name for path in tmp_path.glob("checkpoint_*"))
    assert names == ["checkpoint_epoch_2", "checkpoint_epoch_4"]
    restarted = read_checkpoint(tmp_path / "checkpoint_epoch_2")
    assert torch.equal(restarted.state["model"]["w"], torch.full((3,), 20.0))


def test_a_manifest_of_the_wrong_shape_is_set_aside_like_any_damage(tmp_path):
    manager, _ = _manager(tmp_path, keep_last=5)
    with manager:
        manager.save(CheckpointTag(1))
        manager.save(CheckpointTag(2))
        manifest = tmp_path / "checkpoint_epoch_2" / storage.MANIFEST_FILE
        manifest.write_text(manifest.read_text().replace('"epoch": 2', '"epoch": [2]'))
        loaded = manager.find_latest()
    assert loaded is not None and loaded.tag == CheckpointTag(1)
    assert any(name.startswith("checkpoint_epoch_2.corrupt-") for name in os.listdir(tmp_path))


def test_a_best_that_lags_behind_the_best_checkpoint_is_repaired(tmp_path):
    manager, weights = _manager(tmp_path, keep_last=5)
    manager.attach({"model": weights}, lambda tag: {"best_epoch": tag.epoch})
    with manager:
        manager.save(CheckpointTag(1), best=True)
        weights.w.fill_(2)
        manager.save(CheckpointTag(2))  # died before copying it to best/
        latest = manager.find_latest()
        assert latest is not None and storage.read_manifest(manager.best_path)["epoch"] == 1
        manager.repair_best(latest)
    assert storage.read_manifest(manager.best_path)["epoch"] == 2
    assert torch.equal(read_checkpoint(manager.best_path).state["model"]["w"], torch.full((3,), 2.0))


def test_a_failed_save_keeps_earlier_checkpoints_and_training_goes_on_until_too_many(tmp_path, monkeypatch):
    manager, _ = _manager(tmp_path, keep_last=5, max_failed_saves=2)
    with manager:
        manager.save(CheckpointTag(1))

        def disk_full(path, chunks):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(storage, "write_chunks", disk_full)
        assert manager.save(CheckpointTag(2)) is None
        assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch_1", "latest"]  # no partial files
        with pytest.raises(ResumableStop, match=r"2 checkpoint saves in a row failed .*No space left"):
            manager.save(CheckpointTag(3))
        monkeypatch.undo()
        storage.verify(tmp_path / "checkpoint_epoch_1")


def test_non_finite_weights_are_never_written(tmp_path):
    manager, weights = _manager(tmp_path)
    weights.w[1] = float("nan")
    with manager, pytest.raises(CheckpointError, match=r"non-finite values in model\.w"):
        manager.save(CheckpointTag(1))
    assert not list(tmp_path.glob("checkpoint_*"))
