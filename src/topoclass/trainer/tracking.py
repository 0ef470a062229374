"""Experiment tracking: what each epoch measured, as TensorBoard event files in the run directory.

Only figures the trainer already computed are written (losses, metrics, learning rate,
throughput, memory), once per epoch, from the first process. A resumed run continues the
same curves: its writer purges every step after the checkpoint it resumed from, so epochs
replayed after a crash never appear twice.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from topoclass.errors import ConfigError

logger = logging.getLogger(__name__)

KNOWN = ("tensorboard",)


def wanted_loggers(setting: list[str] | None) -> list[str]:
    """The loggers to use: those set, or TensorBoard when it is installed (``None``: automatic)."""
    if setting is None:
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []
    for name in setting:
        if name not in KNOWN:
            raise ConfigError(f"train.loggers: unknown logger '{name}' (known: {', '.join(KNOWN)})")
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"train.loggers: '{name}' is not installed (pip install {name})")
    return list(setting)


class EpochLog:
    """Writes one epoch's figures to every logger."""

    def __init__(self, directory: Path, loggers: list[str], *, resume_after_epoch: int) -> None:
        self._writer: Any = None
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events at or after it, left by an attempt that crashed, are dropped.
            self._writer = SummaryWriter(str(directory), purge_step=resume_after_epoch + 1)

    def write(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            return
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float):
                self._writer.add_scalar(_tag(key), value, epoch)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _tag(key: str) -> str:
    """A metrics-file key as a grouped TensorBoard tag: ``val_loss`` → ``val/loss``, ``rss_gib`` →
    ``memory/rss_gib``."""
    for prefix in ("train_", "val_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key.removeprefix(prefix)}"
    return f"memory/{key}" if key.endswith("_gib") else key
