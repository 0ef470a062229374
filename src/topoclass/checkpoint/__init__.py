"""Crash-safe checkpoints: durable storage, resume policy, directory lock, catalog.

The package knows nothing about models or datasets: it stores any tree that
``state_dict()`` methods produce (see :mod:`.serialize`), writes it durably
(:mod:`.storage`), decides when to save and what to keep (:mod:`.manager`), and
guards a checkpoint directory against a second trainer (:mod:`.lock`).
"""

from __future__ import annotations

from topoclass.checkpoint.catalog import (
    CheckpointInfo,
    describe_checkpoint,
    export_weights,
    inspect_checkpoint,
    list_checkpoints,
    verify_checkpoints,
)
from topoclass.checkpoint.lock import CheckpointLock
from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag, LoadedCheckpoint, read_checkpoint
from topoclass.checkpoint.state import RNGState, Stateful

__all__ = [
    "CheckpointInfo",
    "CheckpointLock",
    "CheckpointManager",
    "CheckpointTag",
    "LoadedCheckpoint",
    "RNGState",
    "Stateful",
    "describe_checkpoint",
    "export_weights",
    "inspect_checkpoint",
    "list_checkpoints",
    "read_checkpoint",
    "verify_checkpoints",
]
