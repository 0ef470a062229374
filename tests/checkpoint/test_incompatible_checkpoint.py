"""A checkpoint from another version of the model is intact but unusable: one line says which and why."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from topoclass.checkpoint.manager import CheckpointTag, LoadedCheckpoint, load_component
from topoclass.errors import CheckpointError


def _checkpoint(state: dict) -> LoadedCheckpoint:
    return LoadedCheckpoint(
        path=Path("runs/x/checkpoints/checkpoint_epoch_5"),
        tag=CheckpointTag(epoch=5),
        state={"model": state},
        metadata={"package_version": "0.1.0", "code_revision": "abc123"},
    )


def test_a_resized_layer_is_one_line_naming_the_checkpoint_and_its_version():
    saved = nn.Linear(51, 4).state_dict()
    checkpoint = _checkpoint(saved)
    with pytest.raises(CheckpointError) as error:
        load_component(checkpoint, "model", nn.Linear(53, 4), saved)
    message = str(error.value)
    assert "\n" not in message
    assert str(checkpoint.path) in message and "0.1.0" in message and "abc123" in message
    assert "size mismatch for weight" in message


def test_a_fitting_state_loads():
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    load_component(_checkpoint(source.state_dict()), "model", target, source.state_dict())
    assert all((a == b).all() for a, b in zip(source.parameters(), target.parameters(), strict=True))
