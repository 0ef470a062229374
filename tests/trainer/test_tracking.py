"""Experiment tracking: TensorBoard event files, read back through TensorBoard's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import SYNTHETIC_CONFIG, run_cli, write_synthetic_table
from topoclass.checkpoint.manager import CheckpointManager
from topoclass.config import CheckpointConfig
from topoclass.errors import ConfigError
from topoclass.trainer.tracking import EpochLog, wanted_loggers

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard would plot: tag → [(step, value)] in the order written."""
    events = event_accumulator.EventAccumulator(str(directory), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_epochs_replayed_after_a_crash_are_not_plotted_twice(tmp_path):
    first = EpochLog(tmp_path, ["tensorboard"], resume_after_epoch=0)
    for epoch in (1, 2, 3):
        first.write({"epoch": epoch, "train_loss": 10.0 + epoch, "lr": 0.1, "note": "text is skipped"})
    first.close()
    # The process died after epoch 3 was logged but before it was checkpointed: resume from 2.
    second = EpochLog(tmp_path, ["tensorboard"], resume_after_epoch=2)
    for epoch in (3, 4):
        second.write({"epoch": epoch, "train_loss": 20.0 + epoch, "lr": 0.1})
    second.close()

    scalars = read_scalars(tmp_path)
    assert scalars["train/loss"] == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]
    assert "note" not in scalars


def test_logger_setting_is_validated():
    assert wanted_loggers([]) == []
    assert wanted_loggers(None) == ["tensorboard"]  # installed here, so on by default
    with pytest.raises(ConfigError, match=r"train\.loggers: unknown logger 'wandb'"):
        wanted_loggers(["wandb"])


@pytest.mark.integration  # trains and kills real processes
def test_training_writes_curves_that_a_resumed_run_continues(tmp_path):
    table = write_synthetic_table(tmp_path / "materials.csv", 120)
    config = tmp_path / "config.yaml"
    config.write_text(SYNTHETIC_CONFIG.format(table=table, epochs=4, every_steps=0, export_onnx="false"))
    run_dir = tmp_path / "run"
    args = ["train", "--config", str(config), "--run-dir", str(run_dir), "--resume", "auto"]

    # Killed while committing a checkpoint: its epoch is already in the event file.
    killed = run_cli(args, tmp_path, kill_at_commit=3)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    logged = [step for step, _ in read_scalars(run_dir / "tensorboard")["train/loss"]]
    with CheckpointManager(run_dir / "checkpoints", CheckpointConfig()) as manager:
        latest = manager.find_latest()
    assert latest is not None
    checkpointed = latest.state["trainer"]["completed_epochs"]
    assert logged == list(range(1, checkpointed + 2))  # one epoch more than the checkpoint holds

    resumed = run_cli(args, tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    scalars = read_scalars(run_dir / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    for tag in ("val/loss", "lr", "samples_per_s", "memory/rss_gib"):
        assert [step for step, _ in scalars[tag]] == [1, 2, 3, 4], tag
    # The curves are the metrics file's figures, epoch by epoch.

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [value for _, value in scalars["train/loss"]] == pytest.approx(
        [row["train_loss"] for row in history]
    )
