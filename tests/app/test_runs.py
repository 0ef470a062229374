"""The run layout: one answer to where a run's files live, and to what a checkpoint argument means."""

from __future__ import annotations

import pickle

import pytest

from tests.helpers import make_checkpointed_run
from topoclass.app.runs import RunLayout, checkpoint_target, is_run_directory
from topoclass.config import load_config
from topoclass.errors import CheckpointError, ConfigError


def test_checkpoint_dir_is_inside_the_run_unless_absolute(tmp_path):
    relative = RunLayout.for_config(
        load_config(None, {"run_dir": str(tmp_path / "r"), "checkpoint.dir": "ck"})
    )
    assert relative.checkpoints == tmp_path / "r" / "ck"
    default = RunLayout.for_config(load_config(None, {"run_dir": str(tmp_path / "r")}))
    assert default.checkpoints == tmp_path / "r" / "checkpoints"
    elsewhere = RunLayout.for_config(
        load_config(None, {"run_dir": str(tmp_path / "r"), "checkpoint.dir": str(tmp_path / "big-disk")})
    )
    assert elsewhere.checkpoints == tmp_path / "big-disk"


def test_an_opened_run_finds_checkpoints_that_live_elsewhere(tmp_path):
    layout = make_checkpointed_run(tmp_path / "run", checkpoint_dir=tmp_path / "elsewhere")
    assert RunLayout.open(tmp_path / "run").checkpoints == tmp_path / "elsewhere"
    target = checkpoint_target(tmp_path / "run")
    assert target.directory == layout.checkpoints and target.checkpoint is None
    assert target.single(prefer_best=True) == tmp_path / "elsewhere" / "best"
    assert target.single(prefer_best=False) == tmp_path / "elsewhere" / "checkpoint_epoch_2_step_9"


def test_every_way_of_naming_a_checkpoint_resolves(tmp_path):
    layout = make_checkpointed_run(tmp_path / "run")
    checkpoints = layout.checkpoints
    latest = checkpoint_target(checkpoints / "latest")
    assert latest.checkpoint == checkpoints / "checkpoint_epoch_2_step_9"
    assert checkpoint_target(checkpoints / "best").checkpoint == checkpoints / "best"
    one = checkpoint_target(checkpoints / "checkpoint_epoch_1")
    assert one.checkpoint == checkpoints / "checkpoint_epoch_1" and one.directory == checkpoints
    assert checkpoint_target(checkpoints).checkpoint is None


def test_arguments_that_name_no_checkpoint_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint_target(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        checkpoint_target(tmp_path / "empty")
    (tmp_path / "pickles").mkdir()
    (tmp_path / "pickles" / "checkpoint_epoch_5.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle-based files are never loaded"):
        checkpoint_target(tmp_path / "pickles")
    (tmp_path / "latest").write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="does not name a checkpoint"):
        checkpoint_target(tmp_path / "latest")


def test_a_folder_without_intact_checkpoints_says_so(tmp_path):
    layout = make_checkpointed_run(tmp_path / "run")
    for path in layout.checkpoints.iterdir():
        if path.is_dir():
            (path / "MANIFEST.json").unlink()
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        checkpoint_target(tmp_path / "run").single(prefer_best=True)


def test_only_recognizable_runs_are_runs(tmp_path):
    make_checkpointed_run(tmp_path / "run")
    assert is_run_directory(tmp_path / "run")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "labels.csv").write_text("a,b\n")
    assert not is_run_directory(tmp_path / "data")
    (tmp_path / "data" / "status.json").write_text('{"state": "whatever"}')
    assert not is_run_directory(tmp_path / "data")
    with pytest.raises(ConfigError, match="not a topoclass run"):
        RunLayout.open(tmp_path / "data")
