"""Kill real training processes and check that resuming ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import random
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli, signal_on_line, start_cli
from topoclass.checkpoint.manager import CheckpointManager
from topoclass.config import CheckpointConfig
from topoclass.trainer.signals import EXIT_RESUMABLE

pytestmark = pytest.mark.integration  # kills real training processes

KILLS = 12


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    with CheckpointManager(run_dir / "checkpoints", CheckpointConfig()) as manager:
        loaded = manager.find_latest()
    assert loaded is not None
    trainer = loaded.state["trainer"]
    assert (
        trainer["completed_epochs"] == loaded.metadata["config"]["train"]["epochs"]
        or trainer["early_stopped"]
    )
    return loaded.state["model"]


def history(run_dir: Path) -> list[str]:
    return (run_dir / "metrics.jsonl").read_text().splitlines()


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"parameter {key} differs"


def train_args(config: Path, run_dir: Path) -> list[str]:
    return ["train", "--config", str(config), "--run-dir", str(run_dir), "--resume", "auto"]


def kill_after_start(
    args: list[str], tmp_path: Path, delay: float, kill_at_commit: int | None = None
) -> int | None:
    """Start training, wait until it trains, SIGKILL it after ``delay`` s; its exit code if it ended first."""
    process = start_cli(args, tmp_path, kill_at_commit=kill_at_commit)
    assert process.stdout is not None
    for line in process.stdout:
        if "Starting epoch" in line or "Resuming from" in line:
            break
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    if process.poll() is None:
        process.kill()
    process.wait()
    process.stdout.close()
    return process.returncode


def timed_training(args: list[str], tmp_path: Path) -> float:
    """Run training to the end; seconds from its first epoch to its exit (the part kills aim at)."""
    process = start_cli(args, tmp_path)
    assert process.stdout is not None
    started = None
    for line in process.stdout:
        if started is None and "Starting epoch" in line:
            started = time.monotonic()
    assert process.wait() == 0 and started is not None
    return time.monotonic() - started


def test_sigkill_at_random_moments_resumes_bit_identical(synthetic_config, tmp_path):
    config = synthetic_config(n=600, epochs=4, every_steps=3)
    reference = tmp_path / "reference"
    duration = timed_training(train_args(config, reference), tmp_path)

    chaos = tmp_path / "chaos"
    rng = random.Random(1234)
    kills = 0
    for attempt in range(KILLS):
        # Every third attempt dies inside a checkpoint write (after the data files, before the manifest);
        # the others at a random moment of training, validation or checkpointing. Delays are a small
        # fraction of the whole run, so each attempt gets only part of the way.
        commit = rng.randint(1, 3) if attempt % 3 == 2 else None
        delay = rng.uniform(0.02, 0.1) * duration
        code = kill_after_start(train_args(config, chaos), tmp_path, delay, kill_at_commit=commit)
        if code == 0:
            break
        assert code == -signal.SIGKILL
        kills += 1
    assert kills >= 10, f"only {kills} kills happened; the run finished too quickly"
    finished = run_cli(train_args(config, chaos), tmp_path)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "Checkpoint loaded from epoch" in finished.stdout
    assert_identical(final_model(reference), final_model(chaos))
    assert history(reference) and [r.split('"val_loss"')[0] for r in history(reference)] == [
        r.split('"val_loss"')[0] for r in history(chaos)
    ]


def test_sigterm_stops_with_resumable_exit_code_and_resume_is_exact(synthetic_config, tmp_path):
    config = synthetic_config(n=240, epochs=3)
    reference = tmp_path / "reference"
    assert run_cli(train_args(config, reference), tmp_path).returncode == 0

    stopped = tmp_path / "stopped"
    process = start_cli(train_args(config, stopped), tmp_path)
    output = signal_on_line(process, "Starting epoch 2")
    assert process.wait() == EXIT_RESUMABLE, output
    assert "Stop requested (SIGTERM)" in output
    (mid_epoch,) = (stopped / "checkpoints").glob("checkpoint_epoch_2_step_*")
    resumed = run_cli(["resume", str(stopped)], tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Checkpoint loaded from epoch 1" in resumed.stdout
    # The step the message names is the one in the checkpoint's name: the global optimizer step.
    position = re.search(r"Resuming from epoch 2, step (\d+) \(batch (\d+) of (\d+)\)", resumed.stdout)
    assert position is not None and mid_epoch.name == f"checkpoint_epoch_2_step_{position.group(1)}"
    assert int(position.group(1)) == int(position.group(3)) + int(position.group(2))  # one epoch done before
    assert_identical(final_model(reference), final_model(stopped))


def test_corrupt_latest_checkpoint_falls_back_to_older_one(synthetic_config, tmp_path):
    config = synthetic_config(n=160, epochs=3)
    reference = tmp_path / "reference"
    assert run_cli(train_args(config, reference), tmp_path).returncode == 0

    run = tmp_path / "run"
    code = kill_after_start(train_args(config, run), tmp_path, 60.0, kill_at_commit=4)
    assert code == -signal.SIGKILL  # died writing epoch 3 (best/latest writes count too)
    checkpoints = sorted((run / "checkpoints").glob("checkpoint_epoch_*"))
    newest = checkpoints[-1]
    data = newest / "tensors.safetensors"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # flip one byte in the middle of the tensors
    data.write_bytes(bytes(blob))

    resumed = run_cli(train_args(config, run), tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert list((run / "checkpoints").glob(f"{newest.name}.corrupt-*")), "bad checkpoint must be kept aside"
    assert_identical(final_model(reference), final_model(run))
