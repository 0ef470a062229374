"""Where a run's files live: the one answer to every path question.

A run directory holds the resolved config, the split, the data fingerprint, the
cleaning report, the metrics history, the evaluation, a status file and (unless
``checkpoint.dir`` puts them elsewhere) the checkpoints. Training, evaluation,
prediction, the checkpoint tools and resume all ask :class:`RunLayout`, so they
agree on where things are.

A user may name a checkpoint in several ways: a run directory, a checkpoint
directory, one checkpoint, ``best``, or the ``latest`` pointer file.
:func:`checkpoint_target` turns any of them into what it means.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from topoclass.checkpoint import storage
from topoclass.checkpoint.names import BEST_NAME, LATEST_POINTER, checkpoint_dirs, tag_or_none
from topoclass.config import Config, load_config
from topoclass.errors import CheckpointError, ConfigError
from topoclass.files import atomic_write

logger = logging.getLogger(__name__)

STATES = ("preparing", "running", "stopped", "finished", "failed")
CHECKPOINT_SUBDIR = "checkpoints"


@dataclass(frozen=True)
class RunLayout:
    """The files of one run."""

    root: Path
    checkpoints: Path

    @classmethod
    def for_config(cls, config: Config) -> RunLayout:
        """The layout a config describes: ``run_dir`` (default ``runs/<dataset>``) and ``checkpoint.dir``
        (default ``checkpoints``; a relative path is inside the run directory)."""
        root = config.run_dir or config.output_root / config.data.dataset
        directory = config.checkpoint.dir
        if directory is None:
            checkpoints = root / CHECKPOINT_SUBDIR
        else:
            checkpoints = directory if directory.is_absolute() else root / directory
        return cls(root, checkpoints)

    @classmethod
    def open(cls, root: Path) -> RunLayout:
        """The layout of an existing run, read from its saved config."""
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"{root}: no such run directory")
        if not (root / "config.yaml").is_file():
            raise ConfigError(f"{root} is not a topoclass run (no config.yaml)")
        return cls.for_config(load_config(root / "config.yaml", {"run_dir": str(root)}))

    def config_file(self) -> Path:
        return self.root / "config.yaml"

    def split_file(self) -> Path:
        return self.root / "split.json"

    def status_file(self) -> Path:
        return self.root / "status.json"

    def fingerprint_file(self) -> Path:
        return self.root / "data_fingerprint.json"

    def rejects_file(self) -> Path:
        return self.root / "rejects.csv"

    def data_report_file(self) -> Path:
        return self.root / "data_report.json"

    def metrics_file(self) -> Path:
        return self.root / "metrics.jsonl"

    def evaluation_dir(self) -> Path:
        return self.root / "evaluation"

    def serving_dir(self) -> Path:
        return self.root / "serving"

    def network_export_dir(self) -> Path:
        """The network exported to ONNX, beside the serving rules (verified like a checkpoint)."""
        return self.root / "onnx"

    def model_card_file(self) -> Path:
        return self.root / "model_card.md"

    def tracking_dir(self) -> Path:
        return self.root / "tensorboard"

    def baseline_file(self) -> Path:
        return self.root / "baseline.json"

    def applicability_file(self) -> Path:
        """Where screening finds how far from its training data a material lies (fitted once)."""
        return self.root / "applicability.safetensors"

    def read_config(self) -> Config:
        """The run's saved config, with the run directory as it is found now."""
        return load_config(self.config_file(), {"run_dir": str(self.root)})

    def write_status(self, state: str, **extra: object) -> None:
        """Record the run's state: written atomically, so it is never half a file."""
        record = {"state": state, "pid": os.getpid(), "time": time.time(), **extra}
        atomic_write(self.status_file(), json.dumps(record), durable=False)

    def read_status(self) -> dict[str, Any] | None:
        """The recorded state, or None when there is no readable status file."""
        try:
            status = json.loads(self.status_file().read_text())
        except (OSError, ValueError):
            return None
        return status if isinstance(status, dict) and status.get("state") in STATES else None


def is_run_directory(path: Path) -> bool:
    """Whether ``path`` is recognizably a topoclass run (a status file this tool wrote, or a config
    beside a split): the only kind of directory topoclass ever moves aside."""
    if not path.is_dir():
        return False
    if RunLayout(path, path / CHECKPOINT_SUBDIR).read_status() is not None:
        return True
    return (path / "config.yaml").is_file() and (path / "split.json").is_file()


@dataclass(frozen=True)
class CheckpointTarget:
    """What a user's checkpoint argument names: a folder of checkpoints, and maybe one of them."""

    directory: Path
    checkpoint: Path | None = None

    def single(self, *, prefer_best: bool) -> Path:
        """The named checkpoint; else the folder's ``best/`` (if asked) or newest intact checkpoint.

        When ``best/`` is asked for but damaged, the intact checkpoint with the lowest recorded
        validation loss stands in for it, and a warning says so.
        """
        if self.checkpoint is not None:
            return self.checkpoint
        best = self.directory / BEST_NAME
        if prefer_best and best.is_dir() and _intact(best):
            return best
        intact = [path for _tag, path in checkpoint_dirs(self.directory) if _intact(path)]
        if not intact:
            if not checkpoint_dirs(self.directory) and not best.exists():
                raise CheckpointError(f"no checkpoint in {self.directory}")
            raise CheckpointError(
                f"no intact checkpoint in {self.directory} (see: topoclass checkpoints list)"
            )
        if not prefer_best:
            return intact[0]
        chosen = min(intact, key=_recorded_val_loss)
        if best.exists():
            logger.warning(
                "%s is damaged; using %s, the verified checkpoint with the lowest validation loss",
                best,
                chosen.name,
            )
        return chosen


def _intact(path: Path) -> bool:
    try:
        storage.verify(path)
    except CheckpointError:
        return False
    return True


def _recorded_val_loss(path: Path) -> float:
    """The validation loss a checkpoint's history ends with (infinite when it has none)."""
    try:
        history = storage.read_metadata(path).get("history") or []
        return float(history[-1]["val_loss"])
    except (CheckpointError, IndexError, KeyError, TypeError, ValueError):
        return math.inf


def checkpoint_target(path: Path) -> CheckpointTarget:
    """Resolve a run directory, a checkpoint directory, one checkpoint, ``best`` or ``latest``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_file() and path.name == LATEST_POINTER:
        name = path.read_text().strip()
        if tag_or_none(name) is None:
            raise CheckpointError(f"{path} does not name a checkpoint ({name!r})")
        return CheckpointTarget(path.parent, path.parent / name)
    if path.is_dir() and _is_single_checkpoint(path):
        return CheckpointTarget(path.parent, path)
    if path.is_dir() and (path / "config.yaml").is_file():
        return CheckpointTarget(RunLayout.open(path).checkpoints)
    if path.is_dir() and (checkpoint_dirs(path) or (path / BEST_NAME).is_dir()):
        return CheckpointTarget(path)
    if path.is_file() or storage.holds_pickles(path):
        storage.refuse_if_foreign(path)  # names pickle files for what they are
    raise CheckpointError(f"no checkpoint in {path}")


def _is_single_checkpoint(path: Path) -> bool:
    if tag_or_none(path.name) is not None or path.name == BEST_NAME:
        return True
    return any((path / name).exists() for name in (storage.MANIFEST_FILE, *storage.DATA_FILES))
