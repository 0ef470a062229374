"""Faults a long run meets, injected on the CPU: out of memory, divergence, a bad batch, a full disk."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import make_trainer
from topoclass.checkpoint import storage
from topoclass.checkpoint.manager import CheckpointManager, read_checkpoint
from topoclass.errors import DivergedError, ResumableStop
from topoclass.trainer import loop
from topoclass.trainer.loop import BatchFailedError, Trainer


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_out_of_memory_splits_the_batch_and_the_update_stays_the_same(prepared, tmp_path, monkeypatch):
    reference = make_trainer(prepared, tmp_path / "a")
    with reference.checkpoints:
        reference.fit()
    expected = weights(reference)

    raised = []

    def run_out_once(step, rows):
        if step == 3 and not raised:
            raised.append(len(rows))
            raise MemoryError("injected: no memory for this batch")

    monkeypatch.setattr(loop, "STEP_HOOKS", [run_out_once])
    trainer = make_trainer(prepared, tmp_path / "b")
    with trainer.checkpoints:
        trainer.fit()
    assert raised == [16] and trainer.state.micro_batches == 2
    # The step itself is exact up to rounding (the test below); a dozen Adam steps later, Adam's
    # division by the gradients' spread has grown that rounding, but no further.
    for name, value in weights(trainer).items():
        torch.testing.assert_close(value, expected[name], atol=1e-3, rtol=1e-3)
    saved = read_checkpoint(tmp_path / "b" / "checkpoints" / "checkpoint_epoch_2")
    assert saved.state["trainer"]["micro_batches"] == 2  # the split is kept for the rest of the run


def test_a_step_in_pieces_gives_the_gradients_of_the_step_in_one(prepared, tmp_path):
    whole, pieces = make_trainer(prepared, tmp_path / "a"), make_trainer(prepared, tmp_path / "b")
    pieces.state.micro_batches = 4
    rows, weight = whole.sampler.next_rows()
    for trainer in (whole, pieces):
        labels = trainer.features.labels[rows]
        trainer._accumulate(rows, weight, trainer.loss.normalizers(labels))
        trainer.checkpoints.close()
    for a, b in zip(whole.model.parameters(), pieces.model.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


def test_a_sample_that_does_not_fit_alone_stops_resumably_naming_it(prepared, tmp_path, monkeypatch):
    def never_fits(step, rows):
        if step == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    monkeypatch.setattr(loop, "STEP_HOOKS", [never_fits])
    trainer = make_trainer(prepared, tmp_path)
    with trainer.checkpoints, pytest.raises(ResumableStop, match="alone does not fit in memory") as stop:
        trainer.fit()
    assert any(material in str(stop.value) for material in prepared.features.ids)
    assert trainer.state.global_step == 1  # the failing step changed nothing


def test_non_finite_steps_are_skipped_then_the_run_rolls_back_with_a_smaller_learning_rate(
    prepared, tmp_path, monkeypatch
):
    poisoned = []

    def poison_once(step, rows):
        if step == 8 and not poisoned:  # epoch 2: the end of epoch 1 is the checkpoint to return to
            poisoned.append(step)
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(loop, "STEP_HOOKS", [poison_once])
    trainer = make_trainer(prepared, tmp_path, nonfinite_patience=2)
    with trainer.checkpoints:
        result = trainer.fit()
    assert result.outcome == "finished" and poisoned == [8]
    assert trainer.state.rollbacks == 1 and trainer.state.skipped_steps == 2
    assert trainer.schedule.scale == pytest.approx(0.5)
    assert all(torch.isfinite(value).all() for value in trainer.model.state_dict().values())
    assert [row["epoch"] for row in trainer.state.history] == [1, 2]


def test_a_run_that_keeps_diverging_stops_with_a_clear_error(prepared, tmp_path, monkeypatch):
    def poison_always(step, rows):
        if step > 6:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("inf"))

    monkeypatch.setattr(loop, "STEP_HOOKS", [poison_always])
    trainer = make_trainer(prepared, tmp_path, nonfinite_patience=2, max_rollbacks=2, epochs=3)
    with trainer.checkpoints, pytest.raises(DivergedError, match="after 2 rollbacks"):
        trainer.fit()
    for path in (tmp_path / "checkpoints").glob("checkpoint_*"):  # never a non-finite checkpoint
        assert not storage.nonfinite_tensors(path)


def test_an_error_in_one_batch_stops_the_run_naming_its_materials(prepared, tmp_path, monkeypatch):
    def broken(step, rows):
        if step == 4:
            raise ValueError("a bug in a layer (injected)")

    monkeypatch.setattr(loop, "STEP_HOOKS", [broken])
    trainer = make_trainer(prepared, tmp_path)
    with (
        trainer.checkpoints,
        pytest.raises(BatchFailedError, match="training step 4 failed on a batch of 16") as info,
    ):
        trainer.fit()
    assert isinstance(info.value.__cause__, ValueError)
    assert any(material in str(info.value) for material in prepared.features.ids)


def test_validation_with_non_finite_outputs_is_reported_not_a_traceback(prepared, tmp_path, caplog):
    trainer = make_trainer(prepared, tmp_path)
    with torch.no_grad():
        next(trainer.evaluated_model.parameters()).fill_(float("nan"))
    loss, metrics = trainer.validate("val")
    assert math.isnan(loss) and metrics == {}
    assert "not finite for 18 of 18 materials" in caplog.text
    trainer.checkpoints.close()


def test_saves_that_fail_let_training_go_on_until_too_many_in_a_row(prepared, tmp_path, monkeypatch):
    def disk_full(path, chunks):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "write_chunks", disk_full)
    trainer = make_trainer(prepared, tmp_path, epochs=4)
    trainer.checkpoints.config.max_failed_saves = 3
    with trainer.checkpoints, pytest.raises(ResumableStop, match="3 checkpoint saves in a row failed"):
        trainer.fit()
    assert trainer.state.completed_epochs == 3  # two failed saves were survived
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name != ".lock"]  # no partial files


def test_room_for_two_checkpoints_is_checked_before_any_work(tmp_path, monkeypatch):
    import shutil as shutil_module

    from topoclass.config import CheckpointConfig
    from topoclass.errors import CheckpointError

    monkeypatch.setattr(
        shutil_module, "disk_usage", lambda path: shutil_module._ntuple_diskusage(10**9, 10**9 - 5000, 5000)
    )
    (tmp_path / "ck").mkdir()
    with (
        CheckpointManager(tmp_path / "ck", CheckpointConfig()) as manager,
        pytest.raises(CheckpointError, match="two checkpoints need"),
    ):
        manager.check_room(10_000)
