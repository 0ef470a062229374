"""Faults through the command line, in real processes: what the user sees and what is kept."""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest

from tests.app.test_training_lifecycle import read_only
from tests.helpers import (
    run_cli,
    signal_on_line,
    start_cli,
    train_synthetic_run,
    write_small_config,
    write_synthetic_table,
)

pytestmark = pytest.mark.integration


def test_a_diverging_learning_rate_ends_in_one_line_and_leaves_only_finite_checkpoints(tmp_path):
    table = write_synthetic_table(tmp_path / "t.csv", 160)
    config = write_small_config(
        tmp_path / "c.yaml",
        table,
        train="epochs: 4, batch_size: 16, lr: 1.0e6, grad_clip: 0, warmup_epochs: 0, nonfinite_patience: 2, "
        "max_rollbacks: 2",
        checkpoint="every_epochs: 1, every_minutes: 0",
    )
    result = run_cli(["train", "--config", str(config), "--run-dir", str(tmp_path / "run")], tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 2), result.stdout + result.stderr
    if result.returncode == 2:
        assert "training diverged" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        status = json.loads((tmp_path / "run" / "status.json").read_text())
        assert status["state"] == "failed" and "diverged" in status["reason"]
    verify = run_cli(["checkpoints", "verify", str(tmp_path / "run")], tmp_path)
    assert "non-finite" not in verify.stdout


def test_readers_never_disturb_a_trainer_that_saves_every_step(tmp_path):
    table = write_synthetic_table(tmp_path / "t.csv", 400)
    config = write_small_config(
        tmp_path / "c.yaml",
        table,
        train="epochs: 6, batch_size: 16",
        checkpoint="every_epochs: 1, every_minutes: 0, every_steps: 1, keep_last: 2",
    )
    run = tmp_path / "run"
    trainer = start_cli(["train", "--config", str(config), "--run-dir", str(run)], tmp_path)
    readings, problems = 0, []
    while trainer.poll() is None:
        if not (run / "checkpoints" / "best").exists():
            time.sleep(0.2)
            continue
        for args in (
            ["predict", str(run), "--formula", "NaCl", "--spacegroup", "225"],
            ["checkpoints", "verify", str(run)],
        ):
            reader = run_cli(args, tmp_path)
            readings += 1
            if reader.returncode != 0:
                problems.append((args[0], reader.stdout[-500:], reader.stderr[-500:]))
    output = trainer.stdout.read()
    assert trainer.returncode == 0, output
    assert readings >= 4, "the training ended before the readers had a go"
    assert problems == []


def test_resume_never_starts_over_when_every_checkpoint_is_damaged(tmp_path):
    train_synthetic_run(tmp_path, n=120, epochs=2)
    checkpoints = tmp_path / "run" / "checkpoints"
    for path in [*checkpoints.glob("checkpoint_*"), checkpoints / "best"]:
        (path / "tensors.safetensors").write_bytes(b"damaged")
    result = run_cli(["resume", str(tmp_path / "run")], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "every checkpoint" in result.stderr and "--resume never" in result.stderr
    assert not list(tmp_path.glob("run.prev-*"))  # nothing moved, nothing started over


def test_a_stop_signal_while_featurizing_exits_resumable(tmp_path):
    from tests.test_cli_structures import write_table

    write_table(tmp_path, 200)
    table = tmp_path / "materials.csv"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data: {{dataset: table, table: {table}, tasks: [{{name: topo}}], use_structure: true,"
        " featurize_workers: 1}\ntrain: {epochs: 1, progress_bar: false}\n"
    )
    process = start_cli(["train", "--config", str(config), "--run-dir", str(tmp_path / "run")], tmp_path)
    for line in process.stdout:
        if "Featurizing" in line:
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            break
    output = process.stdout.read()
    assert process.wait(timeout=120) == 75, output
    assert "stopped by SIGTERM while preparing the data" in output
    assert not (tmp_path / "run").exists()  # nothing was written: a rerun starts cleanly


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_run(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    table = write_synthetic_table(tmp_path / "t.csv", 100)
    config = write_small_config(tmp_path / "c.yaml", table, train="epochs: 1")
    with read_only(cache):
        result = run_cli(
            ["train", "--config", str(config), "--run-dir", str(tmp_path / "run")],
            tmp_path,
            TOPOCLASS_CACHE_DIR=str(cache),
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Featurization cache not written" in result.stdout
    assert not list(cache.iterdir())  # and no temporary leftovers


@pytest.mark.parametrize("precision", ["bf16"])
def test_exact_resume_in_reduced_precision(tmp_path, precision):
    from tests.trainer.test_crash_resume import assert_identical, final_model, train_args

    table = write_synthetic_table(tmp_path / "t.csv", 240)
    config = write_small_config(
        tmp_path / "c.yaml",
        table,
        train=f"epochs: 3, batch_size: 16, precision: {precision}",
        checkpoint="every_epochs: 1, every_minutes: 0",
    )
    reference = tmp_path / "reference"
    assert run_cli(train_args(config, reference), tmp_path).returncode == 0
    stopped = tmp_path / "stopped"
    process = start_cli(train_args(config, stopped), tmp_path)
    output = signal_on_line(process, "Starting epoch 2")
    assert process.wait() == 75, output
    resumed = run_cli(["resume", str(stopped)], tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_identical(final_model(reference), final_model(stopped))


def test_a_checkpoint_folder_that_cannot_be_written_is_refused_before_training(tmp_path):
    train_synthetic_run(tmp_path, n=100, epochs=1)
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    (tmp_path / "run" / "checkpoints").mkdir()
    with read_only(tmp_path / "run" / "checkpoints"):
        result = run_cli(
            [
                "train",
                "--config",
                str(tmp_path / "config.yaml"),
                "--run-dir",
                str(tmp_path / "run"),
                "--epochs",
                "2",
            ],
            tmp_path,
        )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "checkpoints" in result.stderr and "Traceback" not in result.stderr
