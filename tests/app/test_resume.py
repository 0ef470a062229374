"""Resume decisions: the prompt, batch mode, config drift and the run lock."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import cli_env, run_cli
from topoclass.app.resume import ask_to_resume, check_config_drift, resolve_resume_mode
from topoclass.checkpoint.lock import CheckpointLock
from topoclass.config import load_config
from topoclass.errors import ConfigError


def answers(*replies):
    queue = list(replies)

    def ask(prompt):
        assert prompt == "Do you want to resume from this checkpoint? (y/n): "
        if not queue:
            raise EOFError
        return queue.pop(0)

    return ask


def test_prompt_accepts_y_and_n_and_asks_again_otherwise(tmp_path):
    said = []
    assert ask_to_resume(tmp_path, ask=answers("maybe", "", "Y"), say=said.append) is True
    assert said[0] == f"Found existing checkpoint: {tmp_path}"
    assert said.count("Please answer y or n.") == 2
    assert ask_to_resume(tmp_path, ask=answers("n"), say=said.append) is False
    with pytest.raises(ConfigError, match="--resume auto"):
        ask_to_resume(tmp_path, ask=answers(), say=said.append)


def test_default_mode_asks_only_on_a_terminal():
    assert resolve_resume_mode("default", interactive=True) == "ask"
    assert resolve_resume_mode("default", interactive=False) == "auto"
    assert resolve_resume_mode("never", interactive=True) == "never"


def test_config_drift_refuses_model_changes_and_allows_epochs():
    stored = load_config(overrides={"train.epochs": 10, "train.lr": 0.1}).to_dict()
    longer = load_config(overrides={"train.epochs": 20, "train.lr": 0.1}).to_dict()
    assert check_config_drift(stored, longer) == ["train.epochs"]
    other = load_config(overrides={"model.hidden_dim": 64, "train.epochs": 10, "train.lr": 0.2}).to_dict()
    with pytest.raises(ConfigError, match=r"model\.hidden_dim, train\.lr"):
        check_config_drift(stored, other)


def test_config_drift_reads_renamed_keys_of_older_checkpoints_under_their_new_names():
    stored = load_config(overrides={"checkpoint.every_epochs": 2}).to_dict()
    stored["checkpoint"] = {"checkpoint_every_epochs": 2}
    assert check_config_drift(stored, load_config(overrides={"checkpoint.every_epochs": 2}).to_dict()) == []


@pytest.fixture
def trained_run(synthetic_config, tmp_path):
    config = synthetic_config(n=120, epochs=2)
    run = tmp_path / "run"
    done = run_cli(["train", "--config", str(config), "--run-dir", str(run), "--epochs", "1"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    return config, run


@pytest.mark.integration
def test_ask_mode_prompts_on_stdin_and_resumes(trained_run, tmp_path):
    config, run = trained_run
    args = ["train", "--config", str(config), "--run-dir", str(run), "--resume", "ask"]
    result = run_cli(args, tmp_path, input="maybe\ny\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Found existing checkpoint:" in result.stdout
    assert result.stdout.count("Do you want to resume from this checkpoint? (y/n):") == 2
    assert "Checkpoint loaded from epoch 1 with best val loss:" in result.stdout
    assert "Resuming from epoch 2" in result.stdout


@pytest.mark.integration
def test_answer_no_starts_fresh_and_keeps_the_old_run(trained_run, tmp_path):
    config, run = trained_run
    args = ["train", "--config", str(config), "--run-dir", str(run), "--resume", "ask", "--epochs", "1"]
    result = run_cli(args, tmp_path, input="n\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Starting fresh training" in result.stdout and "Moving the previous run" in result.stdout
    assert len(list(tmp_path.glob("run.prev-*"))) == 1


@pytest.mark.integration
def test_without_a_terminal_resume_is_automatic(trained_run, tmp_path):
    config, run = trained_run
    result = subprocess.run(
        [sys.executable, "-m", "topoclass.cli", "train", "--config", str(config), "--run-dir", str(run)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=cli_env(tmp_path),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Do you want to resume" not in result.stdout
    assert "Resuming from epoch 2" in result.stdout
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


@pytest.mark.integration
def test_changed_model_is_refused_and_changed_epochs_applied(trained_run, tmp_path):
    config, run = trained_run
    base = ["train", "--config", str(config), "--run-dir", str(run), "--resume", "auto"]
    refused = run_cli([*base, "--set", "model.hidden_dim=32"], tmp_path)
    assert refused.returncode == 2
    assert "model.hidden_dim" in refused.stderr and "Traceback" not in refused.stderr
    applied = run_cli([*base, "--epochs", "3"], tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Config changed since the checkpoint: train.epochs (applied)" in applied.stdout
    assert "Starting epoch 3/3" in applied.stdout


@pytest.mark.integration
def test_second_trainer_on_the_same_run_is_refused(trained_run, tmp_path):
    config, run = trained_run
    with CheckpointLock(run / "checkpoints"):
        result = run_cli(
            ["train", "--config", str(config), "--run-dir", str(run), "--resume", "auto"], tmp_path
        )
    assert result.returncode == 2
    assert "in use by PID" in result.stderr
