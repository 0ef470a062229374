from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.helpers import KILL_SCRIPT
from topoclass.app.runs import checkpoint_target
from topoclass.checkpoint import storage
from topoclass.checkpoint.catalog import describe_checkpoint
from topoclass.checkpoint.manager import CheckpointManager
from topoclass.config import CheckpointConfig
from topoclass.errors import CheckpointError, DamagedCheckpointError

TREE = {"weights": torch.arange(6.0).reshape(2, 3), "counters": {"epoch": 3, 0: [1, 2]}}


def _write(path: Path, tree=TREE, **kwargs) -> Path:
    with storage.CheckpointStorage() as writer:
        return writer.write(path, tree, metadata={"note": "hi"}, epoch=3, step=kwargs.get("step"))


def _problem(path: Path) -> str | None:
    return describe_checkpoint(path).problem


def test_write_then_read_round_trip_with_manifest_describing_every_file(tmp_path):
    path = _write(tmp_path / "checkpoint_epoch_3", step=None)
    tree, metadata = storage.read(path)
    assert torch.equal(tree["weights"], TREE["weights"]) and tree["counters"] == TREE["counters"]
    assert metadata == {"note": "hi"}
    manifest = json.loads((path / storage.MANIFEST_FILE).read_text())
    assert manifest["format_version"] == storage.FORMAT_VERSION and manifest["epoch"] == 3
    for name in storage.DATA_FILES:
        data = (path / name).read_bytes()
        assert manifest["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch_3"]  # no temp directory left
    assert _problem(path) is None


def test_rewriting_an_existing_checkpoint_replaces_it(tmp_path):
    _write(tmp_path / "ck")
    _write(tmp_path / "ck", {"weights": torch.zeros(1)})
    tree, _ = storage.read(tmp_path / "ck")
    assert torch.equal(tree["weights"], torch.zeros(1))
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def _flip_last_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: _flip_last_byte(p / storage.TENSORS_FILE), "tensors.safetensors: sha256 mismatch"),
        (lambda p: (p / storage.STATE_FILE).unlink(), "missing file state.json"),
        (lambda p: (p / storage.MANIFEST_FILE).write_text("{not json"), "manifest unreadable"),
        (lambda p: (p / storage.MANIFEST_FILE).unlink(), "missing MANIFEST.json (never committed)"),
        (lambda p: _edit_manifest(p, files=[1, 2]), "manifest malformed"),
        (lambda p: _edit_manifest(p, epoch="three"), "manifest malformed (epoch"),
        (
            lambda p: _edit_manifest(p, files={"tensors.safetensors": 5, "state.json": {}}),
            "manifest malformed",
        ),
        (lambda p: os.truncate(p / storage.TENSORS_FILE, 10), "tensors.safetensors: truncated"),
    ],
)
def test_verify_names_the_problem_and_read_refuses(tmp_path, damage, problem):
    path = _write(tmp_path / "ck")
    damage(path)
    assert _problem(path).startswith(problem)
    with pytest.raises(DamagedCheckpointError, match="ck"):
        storage.read(path)


def _edit_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / storage.MANIFEST_FILE).read_text())
    (path / storage.MANIFEST_FILE).write_text(json.dumps({**manifest, **changes}))


def test_unserializable_state_fails_before_anything_is_written(tmp_path):
    with pytest.raises(CheckpointError, match=r"'model\.head'"):
        _write(tmp_path / "ck", {"model": {"head": object()}})
    assert not any(tmp_path.iterdir())


class _MarkerPayload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_is_real(tmp_path):
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(_MarkerPayload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("use_torch_save", [False, True])
def test_pickle_files_are_refused_and_never_unpickled(tmp_path, use_torch_save):
    marker = tmp_path / "pwned"
    evil_dir = tmp_path / "downloaded"
    evil_dir.mkdir()
    evil_file = evil_dir / "model.pt"
    if use_torch_save:
        torch.save({"model": _MarkerPayload(marker)}, evil_file)
    else:
        evil_file.write_bytes(pickle.dumps(_MarkerPayload(marker)))
    disguised = evil_dir / "weights"  # no telltale suffix: recognised by its magic bytes
    shutil.copyfile(evil_file, disguised)
    for target in (evil_file, disguised, evil_dir):
        with pytest.raises(CheckpointError, match=r"refusing to load .*pickle-based files are never loaded"):
            storage.read(target)
        with pytest.raises(CheckpointError, match="refusing to load"):
            checkpoint_target(target)
    evil_file.unlink()
    with pytest.raises(CheckpointError, match="refusing to load"):
        storage.read(evil_dir)
    assert not marker.exists()


def test_directory_without_our_files_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a topoclass checkpoint"):
        storage.read(tmp_path)


def test_clean_leftovers_removes_temp_dirs_and_restores_an_uncommitted_replacement(tmp_path):
    original = _write(tmp_path / "checkpoint_epoch_3")
    (tmp_path / ".tmp-checkpoint_epoch_4-99999").mkdir()
    # A replacement that died before its manifest: the old one sits aside, the new one is torn.
    os.rename(original, tmp_path / ".replaced-checkpoint_epoch_3-99999")
    torn = _write(tmp_path / "scratch", {"weights": torch.zeros(1)})
    (torn / storage.MANIFEST_FILE).unlink()
    os.rename(torn, original)

    storage.clean_leftovers(tmp_path)

    names = sorted(os.listdir(tmp_path))
    assert names[0] == "checkpoint_epoch_3" and names[1].startswith("checkpoint_epoch_3.corrupt-")
    assert len(names) == 2
    tree, _ = storage.read(original)
    assert torch.equal(tree["weights"], TREE["weights"])


@pytest.mark.integration
def test_kill_seam_leaves_a_torn_checkpoint_that_resume_skips(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(KILL_SCRIPT.parent)!r})
        from kill_during_write import kill_at
        from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag
        from topoclass.config import CheckpointConfig
        kill_at(2)
        weights = torch.zeros(4)
        holder = torch.nn.ParameterDict({{"w": torch.nn.Parameter(weights)}})
        manager = CheckpointManager({str(tmp_path)!r}, CheckpointConfig())
        manager.attach({{"w": holder}}, lambda tag: {{}})
        for epoch in (1, 2, 3):
            weights.fill_(float(epoch))
            manager.save(CheckpointTag(epoch))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert _problem(tmp_path / "checkpoint_epoch_1") is None
    torn = tmp_path / "checkpoint_epoch_2"
    assert (torn / storage.TENSORS_FILE).exists() and not (torn / storage.MANIFEST_FILE).exists()
    assert not (tmp_path / "checkpoint_epoch_3").exists()

    with CheckpointManager(tmp_path, CheckpointConfig()) as manager:
        loaded = manager.find_latest()
    assert loaded is not None and loaded.tag.epoch == 1
    assert torch.equal(loaded.state["w"]["w"], torch.full((4,), 1.0))
    assert any(name.startswith("checkpoint_epoch_2.corrupt-") for name in os.listdir(tmp_path))


def test_disk_errors_become_checkpoint_errors_and_leave_nothing(tmp_path, monkeypatch):
    def disk_full(path, chunks):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "write_chunks", disk_full)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*No space left on device"):
        _write(tmp_path / "ck")
    assert not any(tmp_path.iterdir())


def test_clean_leftovers_drops_the_old_copy_when_the_replacement_was_committed(tmp_path):
    _write(tmp_path / "checkpoint_epoch_3", {"weights": torch.zeros(2)})
    _write(tmp_path / ".replaced-checkpoint_epoch_3-99999")
    storage.clean_leftovers(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch_3"]
    tree, _ = storage.read(tmp_path / "checkpoint_epoch_3")
    assert torch.equal(tree["weights"], torch.zeros(2))
