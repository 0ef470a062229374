"""Crash-safe checkpoints: durable storage, resume policy, directory lock, catalog.

The package knows nothing about models or datasets: it stores any tree that
``state_dict()`` methods produce (see :mod:`.serialize`), writes it durably
(:mod:`.storage`), decides when to save and what to keep (:mod:`.manager`), and
guards a checkpoint directory against a second trainer (:mod:`.lock`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Each name is imported from its module when first asked for: the package itself imports
# nothing, so reading a checkpoint's manifest does not import PyTorch.
_HOMES = {
    "CheckpointInfo": "catalog",
    "describe_checkpoint": "catalog",
    "export_weights": "catalog",
    "inspect_checkpoint": "catalog",
    "list_checkpoints": "catalog",
    "verify_checkpoints": "catalog",
    "CheckpointLock": "lock",
    "CheckpointManager": "manager",
    "CheckpointTag": "names",
    "LoadedCheckpoint": "manager",
    "read_checkpoint": "manager",
    "RNGState": "state",
    "Stateful": "state",
}

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


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
