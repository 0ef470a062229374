from __future__ import annotations

import json

import pytest
import safetensors
import safetensors.torch
import torch

from topoclass.checkpoint import storage
from topoclass.checkpoint.catalog import (
    export_weights,
    format_info,
    inspect_checkpoint,
    list_checkpoints,
    verify_checkpoints,
)
from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag
from topoclass.errors import CheckpointError

CONFIG = {"model": {"hidden": 8}, "train": {"epochs": 3}}


def _metadata(epoch: int) -> dict:
    return {
        "config": CONFIG,
        "history": [{"epoch": e, "val_loss": 1.0 / e} for e in range(1, epoch + 1)],
        "best_val_loss": 1.0 / epoch,
        "package_version": "0.1.0",
        "code_revision": "abc123",
        "resumed_from": None,
    }


@pytest.fixture
def run_dir(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=5)
    for epoch in (1, 2, 3, 4):
        state = {
            "model": {"w": torch.full((2, 2), float(epoch)), "b": torch.zeros(2)},
            "optimizer": {"state": {0: {"step": torch.tensor(1.0)}}},
        }
        manager.save(CheckpointTag(epoch), state, metadata=_metadata(epoch), is_best=epoch == 2)
    return tmp_path


def test_list_marks_latest_best_and_problems(run_dir):
    checkpoints = run_dir / "checkpoints"
    (checkpoints / "checkpoint_epoch_4" / storage.MANIFEST_FILE).unlink()
    infos = {info.name: info for info in list_checkpoints(run_dir)}
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
    torn_line = format_info(infos["checkpoint_epoch_4"])
    assert torn_line.endswith("PROBLEM: missing MANIFEST.json (never committed)")


def test_only_full_verification_detects_silent_corruption(run_dir):
    target = run_dir / "checkpoints" / "checkpoint_epoch_2" / storage.TENSORS_FILE
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    quick = {info.name: info for info in list_checkpoints(run_dir)}
    full = {info.name: info for info in verify_checkpoints(run_dir)}
    assert quick["checkpoint_epoch_2"].verified
    assert full["checkpoint_epoch_2"].problem == "tensors.safetensors: sha256 mismatch"
    assert full["best"].problem == "tensors.safetensors: sha256 mismatch"  # it shares the file
    assert full["checkpoint_epoch_4"].is_latest


def test_inspect_summarises_metadata(run_dir):
    summary = inspect_checkpoint(run_dir)  # a run directory means its latest checkpoint
    assert summary["name"] == "checkpoint_epoch_4" and summary["epoch"] == 4 and summary["step"] is None
    assert summary["best_val_loss"] == 0.25 and summary["config"] == CONFIG
    assert summary["history_length"] == 4 and [h["epoch"] for h in summary["history_tail"]] == [2, 3, 4]
    assert summary["package_version"] == "0.1.0" and summary["code_revision"] == "abc123"
    assert summary["tensor_count"] == 3 and summary["state_keys"] == ["model", "optimizer"]
    assert inspect_checkpoint(run_dir / "checkpoints" / "best")["source"] == "checkpoint_epoch_2"


def test_export_weights_writes_model_tensors_with_config(run_dir, tmp_path):
    out = export_weights(
        run_dir / "checkpoints" / "checkpoint_epoch_3", tmp_path / "out" / "model.safetensors"
    )
    weights = safetensors.torch.load_file(out)
    assert set(weights) == {"w", "b"} and torch.equal(weights["w"], torch.full((2, 2), 3.0))
    with safetensors.safe_open(out, framework="pt") as handle:
        header = handle.metadata()
    assert json.loads(header["config"]) == CONFIG and header["epoch"] == "3"
    with pytest.raises(CheckpointError, match="'optimizer' is not a flat mapping"):
        export_weights(run_dir, tmp_path / "x.safetensors", key="optimizer")


def test_set_aside_checkpoints_are_listed_but_not_verified(run_dir):
    checkpoints = run_dir / "checkpoints"
    aside_name = "checkpoint_epoch_1.corrupt-20250101T000000000000Z"
    (checkpoints / "checkpoint_epoch_1").rename(checkpoints / aside_name)
    listed = {info.name: info for info in list_checkpoints(checkpoints)}
    aside = listed[aside_name]
    assert not aside.verified and aside.epoch == 1 and not aside.is_latest
    verified = [info.name for info in verify_checkpoints(checkpoints)]
    assert verified == ["checkpoint_epoch_2", "checkpoint_epoch_3", "checkpoint_epoch_4", "best"]
