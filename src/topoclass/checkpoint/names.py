"""Names in a checkpoint directory: the checkpoints' own, ``best`` and the ``latest`` pointer.

Kept apart from the manager (and its PyTorch imports) so finding a run's checkpoint costs
no more than listing a directory.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

BEST_NAME = "best"
LATEST_POINTER = "latest"
ABANDONED_PREFIX = "abandoned-"
_TAG_PATTERN = re.compile(r"checkpoint_epoch_(\d+)(?:_step_(\d+))?")


@dataclass(frozen=True)
class CheckpointTag:
    """Which point of training a checkpoint captures; ``step`` is None at the end of an epoch."""

    epoch: int
    step: int | None = None

    def name(self) -> str:
        """Directory name: ``checkpoint_epoch_5`` or ``checkpoint_epoch_7_step_1200``."""
        if self.step is None:
            return f"checkpoint_epoch_{self.epoch}"
        return f"checkpoint_epoch_{self.epoch}_step_{self.step}"

    def sort_key(self) -> tuple[int, float]:
        """Training order: the end of epoch e comes after every mid-epoch checkpoint of epoch e."""
        return (self.epoch, math.inf if self.step is None else self.step)


def tag_or_none(name: str) -> CheckpointTag | None:
    """The tag a directory name encodes, or None if it is not a checkpoint name."""
    match = _TAG_PATTERN.fullmatch(name)
    if match is None:
        return None
    step = match.group(2)
    return CheckpointTag(int(match.group(1)), None if step is None else int(step))


def checkpoint_dirs(directory: Path) -> list[tuple[CheckpointTag, Path]]:
    """Every directory named like a checkpoint in ``directory``, newest first."""
    if not Path(directory).is_dir():
        return []
    found = [
        (tag, entry)
        for entry in Path(directory).iterdir()
        if (tag := tag_or_none(entry.name)) and entry.is_dir()
    ]
    return sorted(found, key=lambda item: item[0].sort_key(), reverse=True)
