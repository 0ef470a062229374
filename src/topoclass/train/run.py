"""A training run from start to finish: run directory, data, split, resume, train, report.

The run directory holds everything about a run: the resolved config, the split,
the cleaning report, the metrics history, the checkpoints and a status file
that says whether the run is running, stopped (resumable) or finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from topoclass.checkpoint.lock import CheckpointLock
from topoclass.checkpoint.manager import CheckpointManager, LoadedCheckpoint
from topoclass.config import Config, save_config
from topoclass.data.clean import format_report, write_rejects
from topoclass.data.featureset import FeatureSet, decode_label
from topoclass.data.prepare import PreparedDataset, prepare_dataset
from topoclass.data.records import Material
from topoclass.data.split import load_split, save_split, split_materials
from topoclass.errors import ConfigError
from topoclass.train.loop import Trainer
from topoclass.train.resume import RESUME_MODES, ask_to_resume, check_config_drift, resolve_resume_mode
from topoclass.train.signals import EXIT_RESUMABLE, install_stop_handlers

logger = logging.getLogger(__name__)

EXIT_OK = 0


@dataclass(frozen=True)
class RunPaths:
    """Where a run keeps its files."""

    root: Path
    checkpoints: Path

    @classmethod
    def for_config(cls, config: Config) -> RunPaths:
        root = config.run_dir or config.output_root / config.data.dataset
        return cls(root, config.checkpoint.checkpoint_dir or root / "checkpoints")

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"


def write_status(paths: RunPaths, state: str, **extra: object) -> None:
    """Record the run's state; written atomically so it is never half a file."""
    staging = paths.status.with_suffix(".tmp")
    staging.write_text(json.dumps({"state": state, "pid": os.getpid(), "time": time.time(), **extra}))
    staging.replace(paths.status)


def code_revision() -> str | None:
    """The git revision of the installed source, when it is a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def materials_for_split(features: FeatureSet, main_task: str) -> list[Material]:
    """Light records (id, formula, main label) that the splitter needs."""
    column = next(i for i, t in enumerate(features.tasks) if t.name == main_task)
    task = features.tasks[column]
    return [
        Material(id=i, formula=f, spacegroup=None, labels={task.label_column: decode_label(task, float(v))})
        for i, f, v in zip(features.ids, features.formulas, features.labels[:, column].tolist(), strict=True)
    ]


def load_or_make_split(config: Config, data: PreparedDataset, paths: RunPaths) -> dict[str, torch.Tensor]:
    """The run's saved split, or a new one saved for every later rerun and resume."""
    features = data.features
    if paths.split.exists():
        split = load_split(paths.split, features.ids)
    else:
        fractions = (config.data.split.train, config.data.split.val, config.data.split.test)
        split = split_materials(
            materials_for_split(features, data.main_task), data.main_task, fractions, config.data.split.seed
        )
        save_split(paths.split, split, features.ids)
    return {name: torch.as_tensor(rows, dtype=torch.long) for name, rows in split.items()}


def prepare_data(config: Config) -> PreparedDataset:
    """Load (or featurize and cache) the configured dataset, with a timing line."""
    data = prepare_dataset(config.data)
    how = "from cache" if data.from_cache else "featurized and cached"
    logger.info("Dataset %s: %d materials, %s in %.2f s", data.name, len(data.features), how, data.seconds)
    return data


def _choose_checkpoint(manager: CheckpointManager, mode: str) -> LoadedCheckpoint | None:
    """The checkpoint to resume from, per the resume mode; None to start fresh."""
    if mode == "never":
        return None
    if mode not in ("auto", "ask"):
        return manager.load(Path(mode))
    latest = manager.find_latest()
    if latest is not None and mode == "ask" and not ask_to_resume(latest.path):
        return None
    return latest


def _set_aside(paths: RunPaths) -> None:
    """Move an earlier run out of the way instead of overwriting it."""
    if paths.root.exists() and any(paths.root.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = paths.root.with_name(f"{paths.root.name}.prev-{stamp}")
        suffix = 1
        while aside.exists():
            suffix += 1
            aside = paths.root.with_name(f"{paths.root.name}.prev-{stamp}-{suffix}")
        shutil.move(str(paths.root), aside)
        logger.warning("Previous run moved to %s", aside)


def run_training(config: Config) -> int:
    """Train (or resume) the run a config describes; returns the process exit code."""
    paths = RunPaths.for_config(config)
    mode = resolve_resume_mode(config.checkpoint.resume)
    started = time.perf_counter()
    checkpoint = None
    if paths.checkpoints.is_dir():
        # Look, and set aside damaged checkpoints, only while owning the directory.
        with CheckpointLock(paths.checkpoints):
            checkpoint = _choose_checkpoint(CheckpointManager(paths.checkpoints), mode)
    elif mode not in RESUME_MODES:
        raise ConfigError(f"--resume {mode}: no checkpoint found there")
    if checkpoint is None:
        logger.info("No checkpoint found, starting fresh training")
        _set_aside(paths)
    else:
        for key in check_config_drift(checkpoint.metadata["config"], config.to_dict()):
            logger.warning("Config changed since the checkpoint: %s (applied)", key)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    with CheckpointLock(paths.checkpoints):
        return _train_locked(config, paths, checkpoint, time.perf_counter() - started)


def _announce_resume(trainer: Trainer, seconds: float) -> None:
    """Say where a restored run stands and where it continues."""
    state, sampler = trainer.state, trainer.sampler
    logger.info(
        "Checkpoint loaded from epoch %d with best val loss: %.4f",
        state.completed_epochs,
        state.best_val_loss,
    )
    logger.info("Resume (find, verify, load, restore) took %.2f s", seconds)
    if state.early_stopped or state.completed_epochs >= trainer.config.train.epochs:
        logger.info("This run had already finished; nothing to train")
    elif sampler.position and sampler.epoch == state.completed_epochs + 1:
        logger.info("Resuming from epoch %d, step %d", sampler.epoch, sampler.position)
    else:
        logger.info("Resuming from epoch %d", state.completed_epochs + 1)


def _train_locked(
    config: Config, paths: RunPaths, checkpoint: LoadedCheckpoint | None, find_seconds: float
) -> int:
    write_status(paths, "preparing")
    save_config(config, paths.config)
    data = prepare_data(config)
    write_rejects(paths.root / "rejects.csv", data.rejects)
    (paths.root / "data_report.json").write_text(json.dumps(data.counts, indent=2))
    logger.info("%s", format_report(data.counts))
    split = load_or_make_split(config, data, paths)
    manager = CheckpointManager(
        paths.checkpoints,
        keep_last=config.checkpoint.keep_last,
        every_epochs=config.checkpoint.checkpoint_every_epochs,
        every_minutes=config.checkpoint.checkpoint_every_minutes,
        every_steps=config.checkpoint.checkpoint_every_steps,
    )
    with install_stop_handlers() as stop:
        trainer = Trainer(
            config,
            data.features,
            split,
            run_dir=paths.root,
            checkpoints=manager,
            stop=stop,
            code_revision=code_revision(),
        )
        if checkpoint is not None:
            restore_started = time.perf_counter()
            trainer.restore(checkpoint)
            _announce_resume(trainer, find_seconds + time.perf_counter() - restore_started)
        write_status(paths, "running")
        result = trainer.fit()
    if result.outcome == "stopped":
        write_status(paths, "stopped", signal=stop.signal_name)
        logger.warning("Training stopped; resume with: topoclass resume %s", paths.root)
        return EXIT_RESUMABLE
    write_status(
        paths, "finished", best_epoch=result.state.best_epoch, best_val_loss=result.state.best_val_loss
    )
    logger.info(
        "Training finished: best val loss %.4f at epoch %d. Results in %s",
        result.state.best_val_loss,
        result.state.best_epoch,
        paths.root,
    )
    return EXIT_OK
