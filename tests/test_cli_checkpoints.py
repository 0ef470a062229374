"""The ``checkpoints`` verbs as a user meets them: what they accept, what they say, their exit codes."""

from __future__ import annotations

import json

import pytest
import safetensors.torch

from tests.helpers import make_checkpointed_run
from topoclass.checkpoint import storage
from topoclass.cli import EXIT_USER_ERROR, EXIT_VERIFY_FAILED, main


def _flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _one_error_line(captured) -> str:
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_list_and_verify_follow_a_checkpoint_directory_that_lives_elsewhere(tmp_path, capsys):
    make_checkpointed_run(tmp_path / "run", checkpoint_dir=tmp_path / "scratch")
    assert main(["checkpoints", "list", str(tmp_path / "run")]) == 0
    listed = capsys.readouterr().out
    assert "checkpoint_epoch_1" in listed and "checkpoint_epoch_2_step_9" in listed and "best" in listed
    assert main(["checkpoints", "verify", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.count(" ok") == 3


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_verify_of_nothing_is_not_a_success(tmp_path, capsys, what):
    path = tmp_path / what
    if what == "empty":
        path.mkdir()
    code = main(["checkpoints", "verify", str(path)])
    assert code != 0
    assert str(path) in _one_error_line(capsys.readouterr())


def test_verify_and_list_report_a_damaged_checkpoint(tmp_path, capsys):
    layout = make_checkpointed_run(tmp_path / "run")
    damaged = layout.checkpoints / "checkpoint_epoch_2_step_9"
    _flip_last_byte(damaged / storage.TENSORS_FILE)
    assert main(["checkpoints", "verify", str(damaged)]) == EXIT_VERIFY_FAILED
    captured = capsys.readouterr()
    assert "PROBLEM: tensors.safetensors: sha256 mismatch" in captured.out
    assert "1 of 1 checkpoints failed verification" in captured.err
    assert main(["checkpoints", "verify", str(tmp_path / "run")]) == EXIT_VERIFY_FAILED
    capsys.readouterr()
    assert main(["checkpoints", "list", str(tmp_path / "run")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("checkpoint_epoch_2_step_9"))
    assert line.endswith("PROBLEM: tensors.safetensors: sha256 mismatch")


def test_latest_best_a_run_and_a_checkpoint_are_all_accepted(tmp_path, capsys):
    layout = make_checkpointed_run(tmp_path / "run")
    for argument, expected in [
        (layout.checkpoints / "latest", "checkpoint_epoch_2_step_9"),
        (layout.checkpoints / "best", "best"),
        (tmp_path / "run", "best"),
        (layout.checkpoints / "checkpoint_epoch_1", "checkpoint_epoch_1"),
    ]:
        out = tmp_path / f"{expected}.safetensors"
        assert main(["checkpoints", "export", str(argument), str(out)]) == 0
        assert set(safetensors.torch.load_file(out)) == {"w"}
        assert expected in capsys.readouterr().out
        assert main(["checkpoints", "inspect", str(argument)]) == 0
        assert json.loads(capsys.readouterr().out)["name"] == expected


def test_export_onto_a_directory_is_one_line(tmp_path, capsys):
    make_checkpointed_run(tmp_path / "run")
    (tmp_path / "existing").mkdir()
    assert (
        main(["checkpoints", "export", str(tmp_path / "run"), str(tmp_path / "existing")]) == EXIT_USER_ERROR
    )
    assert "is a directory" in _one_error_line(capsys.readouterr())
