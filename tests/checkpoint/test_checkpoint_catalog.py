from __future__ import annotations

import hashlib
import json

import pytest
import safetensors
import safetensors.torch
import torch

from topoclass.checkpoint import storage
from topoclass.checkpoint.catalog import (
    describe_checkpoint,
    export_weights,
    format_info,
    inspect_checkpoint,
    list_checkpoints,
    verify_checkpoints,
)
from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag
from topoclass.config import CheckpointConfig
from topoclass.errors import CheckpointError, DamagedCheckpointError

CONFIG = {"model": {"hidden": 8}, "train": {"epochs": 3}, "data": {"use_structure": False, "run": "x"}}


class State:
    def __init__(self, tree: dict) -> None:
        self.tree = tree

    def state_dict(self) -> dict:
        return self.tree

    def load_state_dict(self, state: dict) -> None:
        self.tree = state


def _metadata(epoch: int, config: dict = CONFIG) -> dict:
    return {
        "config": config,
        "tasks": [{"name": "t"}],
        "history": [{"epoch": e, "val_loss": 1.0 / e} for e in range(1, epoch + 1)],
        "best_val_loss": 1.0 / epoch,
        "package_version": "0.1.0",
        "code_revision": "abc123",
        "resumed_from": None,
    }


def _save_run(directory, config=CONFIG, epochs=(1, 2, 3, 4)):
    model, optimizer = State({}), State({})
    with CheckpointManager(directory, CheckpointConfig(keep_last=5)) as manager:
        manager.attach({"model": model, "optimizer": optimizer}, lambda tag: _metadata(tag.epoch, config))
        for epoch in epochs:
            model.tree = {"w": torch.full((2, 2), float(epoch)), "b": torch.zeros(2)}
            optimizer.tree = {"state": {0: {"step": torch.tensor(1.0)}}}
            manager.save(CheckpointTag(epoch), best=epoch == 2)
    return directory


@pytest.fixture
def checkpoints(tmp_path):
    return _save_run(tmp_path / "checkpoints")


def _flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_list_marks_latest_best_and_problems(checkpoints):
    (checkpoints / "checkpoint_epoch_4" / storage.MANIFEST_FILE).unlink()
    infos = {info.name: info for info in list_checkpoints(checkpoints)}
    assert list(infos) == [
        "checkpoint_epoch_1",
        "checkpoint_epoch_2",
        "checkpoint_epoch_3",
        "checkpoint_epoch_4",
        "best",
    ]
    assert infos["checkpoint_epoch_3"].is_latest and not infos["checkpoint_epoch_4"].is_latest
    assert infos["checkpoint_epoch_4"].problem == "missing MANIFEST.json (never committed)"
    assert infos["checkpoint_epoch_4"].epoch == 4 and not infos["checkpoint_epoch_4"].verified
    assert (
        infos["best"].is_best
        and infos["checkpoint_epoch_2"].is_best
        and not infos["checkpoint_epoch_3"].is_best
    )
    assert infos["best"].epoch == 2 and infos["best"].verified
    assert infos["checkpoint_epoch_1"].size_bytes > 0 and infos["checkpoint_epoch_1"].created
    line = format_info(infos["checkpoint_epoch_3"])
    assert line.startswith("checkpoint_epoch_3 ") and "latest" in line and line.endswith(" ok")
    assert format_info(infos["checkpoint_epoch_4"]).endswith(
        "PROBLEM: missing MANIFEST.json (never committed)"
    )


def test_list_never_calls_a_checkpoint_ok_whose_bytes_changed(checkpoints):
    _flip_last_byte(checkpoints / "checkpoint_epoch_2" / storage.TENSORS_FILE)
    for infos in (list_checkpoints(checkpoints), verify_checkpoints(checkpoints)):
        by_name = {info.name: info for info in infos}
        assert by_name["checkpoint_epoch_2"].problem == "tensors.safetensors: sha256 mismatch"
        assert by_name["best"].verified  # an independent copy
        assert by_name["checkpoint_epoch_4"].is_latest
    assert not describe_checkpoint(checkpoints / "checkpoint_epoch_2").verified
    assert describe_checkpoint(checkpoints / "checkpoint_epoch_3").verified


def test_a_well_formed_json_manifest_of_the_wrong_shape_is_a_damaged_checkpoint(checkpoints):
    manifest_file = checkpoints / "checkpoint_epoch_3" / storage.MANIFEST_FILE
    manifest = json.loads(manifest_file.read_text())
    manifest["files"] = ["tensors.safetensors", "state.json"]
    manifest_file.write_text(json.dumps(manifest))
    info = {i.name: i for i in verify_checkpoints(checkpoints)}["checkpoint_epoch_3"]
    assert not info.verified and info.problem.startswith("manifest malformed")
    with pytest.raises(DamagedCheckpointError):
        inspect_checkpoint(checkpoints / "checkpoint_epoch_3")


def test_inspect_summarises_metadata(checkpoints):
    summary = inspect_checkpoint(checkpoints / "checkpoint_epoch_4")
    assert summary["name"] == "checkpoint_epoch_4" and summary["epoch"] == 4 and summary["step"] is None
    assert summary["best_val_loss"] == 0.25 and summary["config"] == CONFIG
    assert summary["history_length"] == 4 and [h["epoch"] for h in summary["history_tail"]] == [2, 3, 4]
    assert summary["package_version"] == "0.1.0" and summary["code_revision"] == "abc123"
    assert summary["tensor_count"] == 3 and summary["state_keys"] == ["model", "optimizer"]
    assert inspect_checkpoint(checkpoints / "best")["source"] == "checkpoint_epoch_2"


def test_inspect_of_tensors_that_are_not_safetensors_is_one_line(checkpoints):
    path = checkpoints / "checkpoint_epoch_3"
    (path / storage.TENSORS_FILE).write_bytes(b"not a safetensors file at all")
    manifest = json.loads((path / storage.MANIFEST_FILE).read_text())
    blob = (path / storage.TENSORS_FILE).read_bytes()
    manifest["files"][storage.TENSORS_FILE] = {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    (path / storage.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DamagedCheckpointError, match="undecodable"):
        inspect_checkpoint(path)
    with pytest.raises(DamagedCheckpointError, match="undecodable"):
        export_weights(path, checkpoints.parent / "out.safetensors")


def test_export_holds_weights_and_model_defining_metadata_only(checkpoints, tmp_path):
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    assert export_weights(checkpoints / "checkpoint_epoch_3", out) == "model"
    weights = safetensors.torch.load_file(out)
    assert set(weights) == {"w", "b"} and torch.equal(weights["w"], torch.full((2, 2), 3.0))
    with safetensors.safe_open(out, framework="pt") as handle:
        header = handle.metadata()
    assert json.loads(header["model"]) == CONFIG["model"] and "config" not in header and "epoch" not in header
    # The same weights from another run (other run directory, resume mode, epoch) give the same bytes.
    other_config = {**CONFIG, "train": {"epochs": 9}, "data": {"use_structure": False, "run": "elsewhere"}}
    other = _save_run(tmp_path / "other", other_config, epochs=(3,))
    again = tmp_path / "again.safetensors"
    export_weights(other / "checkpoint_epoch_3", again)
    assert again.read_bytes() == out.read_bytes()
    with pytest.raises(CheckpointError, match="is a directory"):
        export_weights(checkpoints / "checkpoint_epoch_3", tmp_path / "out")


def test_set_aside_checkpoints_are_listed_but_not_verified(checkpoints):
    aside_name = "checkpoint_epoch_1.corrupt-20250101T000000000000Z"
    (checkpoints / "checkpoint_epoch_1").rename(checkpoints / aside_name)
    listed = {info.name: info for info in list_checkpoints(checkpoints)}
    aside = listed[aside_name]
    assert not aside.verified and aside.epoch == 1 and not aside.is_latest
    verified = [info.name for info in verify_checkpoints(checkpoints)]
    assert verified == ["checkpoint_epoch_2", "checkpoint_epoch_3", "checkpoint_epoch_4", "best"]


def test_verify_reports_non_finite_tensors(checkpoints):
    from topoclass.checkpoint.serialize import safetensors_chunks

    path = checkpoints / "checkpoint_epoch_3"
    chunks = safetensors_chunks({"w": torch.tensor([1.0, float("inf")]), "b": torch.zeros(2)})
    blob = b"".join(bytes(c) for c in chunks)
    (path / storage.TENSORS_FILE).write_bytes(blob)
    manifest = json.loads((path / storage.MANIFEST_FILE).read_text())
    manifest["files"][storage.TENSORS_FILE] = {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    (path / storage.MANIFEST_FILE).write_text(json.dumps(manifest))
    info = describe_checkpoint(path)
    assert not info.verified and info.problem == "non-finite values in w"
