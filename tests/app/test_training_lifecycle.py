"""A run's life as a user lives it: where files go, what is refused, what is never overwritten."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import heavy_imports, run_cli, train_synthetic_run
from topoclass.checkpoint.manager import read_checkpoint

pytestmark = pytest.mark.integration  # trains in real processes


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A finished 3-epoch run with a checkpoint every epoch, and its table and config."""
    root = tmp_path_factory.mktemp("lifecycle")
    train_synthetic_run(root, n=160)
    return root


@pytest.fixture
def workspace(template, tmp_path):
    """A private copy of the template (the config's table path points at the copy)."""
    shutil.copy(template / "materials.csv", tmp_path / "materials.csv")
    text = (template / "config.yaml").read_text().replace(str(template), str(tmp_path))
    (tmp_path / "config.yaml").write_text(text)
    shutil.copytree(template / "run", tmp_path / "run")
    saved = (tmp_path / "run" / "config.yaml").read_text().replace(str(template), str(tmp_path))
    (tmp_path / "run" / "config.yaml").write_text(saved)
    return tmp_path


def train(workspace: Path, *extra: str, run: str = "run", epochs: int = 3) -> subprocess.CompletedProcess:
    args = ["train", "--config", str(workspace / "config.yaml"), "--run-dir", str(workspace / run)]
    return run_cli([*args, "--epochs", str(epochs), *extra], workspace)


def final_weights(checkpoints: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(checkpoints / "checkpoint_epoch_3").state["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_checkpoints_can_live_elsewhere_and_every_tool_finds_them(workspace):
    elsewhere = workspace / "scratch-disk"
    result = train(workspace, "--set", f"checkpoint.dir={elsewhere}", run="new")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (elsewhere / "checkpoint_epoch_3").is_dir() and not (workspace / "new" / "checkpoints").exists()
    listed = run_cli(["checkpoints", "list", str(workspace / "new")], workspace)
    assert listed.returncode == 0 and "checkpoint_epoch_3" in listed.stdout
    assert run_cli(["checkpoints", "verify", str(workspace / "new")], workspace).returncode == 0
    evaluated = run_cli(["evaluate", str(workspace / "new"), "--no-baseline"], workspace)
    assert evaluated.returncode == 0, evaluated.stderr


def test_a_given_checkpoint_continues_into_a_new_run_directory(workspace):
    origin = workspace / "run" / "checkpoints" / "checkpoint_epoch_1"
    result = train(workspace, "--resume", str(origin), run="moved")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Checkpoint loaded from epoch 1" in result.stdout and "Resuming from epoch 2" in result.stdout
    assert_same_weights(
        final_weights(workspace / "run" / "checkpoints"), final_weights(workspace / "moved" / "checkpoints")
    )


def test_resuming_an_older_checkpoint_starts_a_new_timeline(workspace):
    checkpoints = workspace / "run" / "checkpoints"
    before = final_weights(checkpoints)
    result = train(workspace, "--resume", str(checkpoints / "checkpoint_epoch_1"))
    assert result.returncode == 0, result.stdout + result.stderr
    (aside,) = checkpoints.glob("abandoned-*")
    assert {p.name for p in aside.iterdir()} >= {"checkpoint_epoch_2", "checkpoint_epoch_3"}
    assert_same_weights(before, final_weights(checkpoints))  # the same run again, deterministically
    again = train(workspace, "--resume", "auto")
    assert again.returncode == 0 and "This run had already finished" in again.stdout


def test_a_finished_run_resumed_keeps_its_serving_rules_unless_they_are_gone(workspace):
    serving = workspace / "run" / "serving"
    manifest = (serving / "MANIFEST.json").read_bytes()
    again = run_cli(["resume", str(workspace / "run")], workspace)
    assert again.returncode == 0 and "This run had already finished" in again.stdout, again.stderr
    assert "Serving (chosen on validation)" not in again.stdout
    assert (serving / "MANIFEST.json").read_bytes() == manifest  # fitted for these weights and data
    assert heavy_imports(["resume", str(workspace / "run")], workspace) == {"torch"}
    shutil.rmtree(serving)
    refit = run_cli(["resume", str(workspace / "run")], workspace)
    assert refit.returncode == 0 and "Serving (chosen on validation)" in refit.stdout, refit.stderr
    assert (serving / "MANIFEST.json").is_file()


def test_changed_labels_are_refused_naming_them_and_nothing_is_overwritten(workspace):
    table = workspace / "materials.csv"
    lines = table.read_text().splitlines()
    fields = lines[5].split(",")
    fields[3] = "trivial" if fields[3] == "topological" else "topological"
    lines[5] = ",".join(fields)
    table.write_text("\n".join(lines) + "\n")
    run = workspace / "run"
    config_before = (run / "config.yaml").read_bytes()
    split = (run / "split.json").read_bytes()
    (run / "split.json").unlink()  # what an older message told users to do
    result = train(workspace, "--resume", "auto", epochs=4)
    message = one_line_error(result)
    assert "the data changed since this run started: 1 materials with other labels (e.g. m4)" in message
    assert "--accept-data-change" in message
    assert (run / "config.yaml").read_bytes() == config_before and not (run / "split.json").exists()
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    (run / "split.json").write_bytes(split)  # a changed label may move materials to other splits
    accepted = train(workspace, "--resume", "auto", "--accept-data-change", epochs=4)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "The data changed since this run started" in accepted.stdout


def test_reordered_data_resumes_exactly(workspace, tmp_path):
    shutil.copytree(workspace / "run", workspace / "straight")
    reference = train(workspace, "--resume", "auto", run="straight", epochs=4)
    assert reference.returncode == 0, reference.stderr
    table = workspace / "materials.csv"
    header, *rows = table.read_text().splitlines()
    random.Random(0).shuffle(rows)
    table.write_text("\n".join([header, *rows]) + "\n")
    resumed = train(workspace, "--resume", "auto", epochs=4)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    weights = [
        read_checkpoint(workspace / r / "checkpoints" / "checkpoint_epoch_4").state["model"]
        for r in ("straight", "run")
    ]
    assert_same_weights(*weights)


@pytest.mark.parametrize("rows", [0, 3])
def test_too_little_data_is_one_line_naming_the_counts(workspace, rows):
    table = workspace / "materials.csv"
    header, *body = table.read_text().splitlines()
    table.write_text("\n".join([header, *body[:rows]]) + "\n")
    message = one_line_error(train(workspace, run="tiny"))
    assert "too little data to split" in message and f"{rows} of {rows} records remain" in message
    assert not (workspace / "tiny").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--data-dir", "/nonexistent/data", "/nonexistent/data"), ("--device", "banana", "banana")],
)
def test_bad_settings_are_reported_before_anything_is_written(workspace, flag, value, message):
    args = ["train", "--run-dir", str(workspace / "fresh"), flag, value]
    if flag == "--device":
        args += ["--config", str(workspace / "config.yaml")]
    assert message in one_line_error(run_cli(args, workspace))
    assert not (workspace / "fresh").exists()


def test_only_a_topoclass_run_is_ever_moved_aside(workspace):
    data = workspace / "my-data"
    data.mkdir()
    (data / "precious.csv").write_text("keep me\n")
    message = one_line_error(train(workspace, run="my-data"))
    assert "is not empty and is not a topoclass run" in message
    assert sorted(p.name for p in workspace.iterdir() if p.name.startswith("my-data")) == ["my-data"]
    here = run_cli(["train", "--config", str(workspace / "config.yaml"), "--run-dir", "."], workspace)
    assert "not a topoclass run" in one_line_error(here)  # the tests' cwd holds the project


def test_resume_never_says_what_it_moves_and_keeps_it(workspace):
    result = train(workspace, "--resume", "never", epochs=1)
    assert result.returncode == 0, result.stderr
    assert "No checkpoint found" not in result.stdout
    assert "Moving the previous run" in result.stdout and "(--resume never)" in result.stdout
    (previous,) = workspace.glob("run.prev-*")
    assert (previous / "checkpoints" / "checkpoint_epoch_3").is_dir()


@contextlib.contextmanager
def read_only(path: Path):
    """Make ``path`` (recursively) unwritable, even for root; skip when this machine cannot."""
    if os.geteuid() != 0:
        for item in [path, *path.rglob("*")]:
            item.chmod(item.stat().st_mode & ~0o222)
        undo = ["chmod", "-R", "u+w", str(path)]
    else:
        if subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a directory read-only for root here (no chattr +i)")
        undo = ["chattr", "-R", "-i", str(path)]
    try:
        yield path
    finally:
        subprocess.run(undo, check=True)


def test_a_read_only_run_gives_one_line_errors(workspace):
    run = workspace / "run"
    with read_only(run):
        for args in (["resume", str(run)], ["evaluate", str(run), "--no-baseline"]):
            message = one_line_error(run_cli(args, workspace))
            assert str(run) in message, message
        out = run / "predictions.csv"
        predicted = run_cli(
            ["predict", str(run), "--formula", "NaCl", "--spacegroup", "225", "-o", str(out)], workspace
        )
        assert str(out) in one_line_error(predicted)
        export = run_cli(["checkpoints", "export", str(run), str(run / "w.safetensors")], workspace)
        assert "w.safetensors" in one_line_error(export)


def test_predict_counts_what_it_wrote_and_takes_one_kind_of_input(workspace):
    run = workspace / "run"
    table = workspace / "new.csv"
    table.write_text("formula,spacegroup\nBi2Se3,166\nNaCl,225\nXx2,12\nSnTe,999\n")
    out = workspace / "predictions.csv"
    result = run_cli(["predict", str(run), "--table", str(table), "-o", str(out)], workspace)
    assert result.returncode == 0, result.stderr
    assert "Predictions for 2 materials written to" in result.stdout and "(2 skipped)" in result.stdout
    assert len(out.read_text().splitlines()) == 3
    both = run_cli(
        ["predict", str(run), "--table", str(table), "--formula", "NaCl", "--spacegroup", "225"], workspace
    )
    assert "takes one of" in one_line_error(both)
