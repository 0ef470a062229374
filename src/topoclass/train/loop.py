"""The trainer, readable top to bottom.

Everything that must survive a crash (model, optimizer, schedule, grad scaler,
sampler position, RNG streams, this trainer's own counters and history) follows
one state protocol, ``state_dict()`` / ``load_state_dict()``, and is handed to
the checkpoint manager once. The trainer then only reports events (a step
finished, an epoch ended); the manager decides what to write and when.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from topoclass import __version__
from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag, LoadedCheckpoint
from topoclass.checkpoint.state import RNGState, Stateful
from topoclass.config import Config, TaskConfig
from topoclass.data.featureset import FeatureSet
from topoclass.data.loader import ResumableBatchSampler
from topoclass.errors import CheckpointError
from topoclass.files import atomic_write
from topoclass.model.inference import move_batch, predictions, raw_outputs
from topoclass.model.multitask import MultitaskModel
from topoclass.tasks import score_tasks, task_type
from topoclass.train.averaging import WeightAverage
from topoclass.train.device import seed_everything
from topoclass.train.loss import MultitaskLoss
from topoclass.train.schedule import LearningRateSchedule
from topoclass.train.signals import StopRequest

logger = logging.getLogger(__name__)

VALIDATION_BATCH = 1024


@dataclass
class TrainerState:
    """The trainer's own counters, so a resumed run continues exactly where it stopped."""

    completed_epochs: int = 0
    global_step: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # Running sums of the epoch in progress, so a resumed epoch reports the same mean loss.
    epoch_loss_sum: float = 0.0
    epoch_samples: int = 0
    early_stopped: bool = False

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class FitResult:
    outcome: str  # "finished", "early_stopped" or "stopped"
    state: TrainerState


def build_model(config: Config, tasks: list[TaskConfig]) -> MultitaskModel:
    """The model a config describes, for the given tasks."""
    return MultitaskModel(
        config.model, tasks, use_structure=config.data.use_structure, graph=config.data.graph
    )


class Trainer:
    """Trains a multitask model on one split; a checkpoint manager saves it as it goes."""

    def __init__(
        self,
        config: Config,
        features: FeatureSet,
        split: dict[str, torch.Tensor],
        *,
        device: torch.device,
        checkpoints: CheckpointManager,
        stop: StopRequest,
        metrics_file: Path,
        run_metadata: dict[str, Any],
    ) -> None:
        train = config.train
        self.config, self.features, self.split = config, features, split
        self.device, self.checkpoints, self.stop = device, checkpoints, stop
        self.metrics_file = metrics_file
        self.run_metadata = run_metadata
        self.resumed_from: str | None = None
        self.last_epoch_rate = 0.0  # training samples per second in the last epoch
        logger.info("Using device: %s", self.device)
        seed_everything(train.seed, deterministic=train.deterministic)
        self.model = build_model(config, features.tasks).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=train.lr, weight_decay=train.weight_decay
        )
        self.sampler = ResumableBatchSampler(split["train"], train.batch_size, seed=train.seed)
        self.schedule = LearningRateSchedule(
            self.optimizer,
            kind=train.scheduler,
            base_lr=train.lr,
            total_steps=train.epochs * len(self.sampler),
            warmup_steps=train.warmup_epochs * len(self.sampler),
            patience=train.patience,
        )
        self.use_amp = train.amp and self.device.type == "cuda"
        if train.amp and not self.use_amp:
            logger.warning("train.amp is ignored on %s: mixed precision needs CUDA", self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.loss = MultitaskLoss(
            features.tasks,
            features.labels[split["train"]],
            focal_gamma=train.focal_gamma,
            label_smoothing=train.label_smoothing,
            device=self.device,
        )
        # Evaluation uses an exponential moving average of the weights: smoother than the last step.
        self.averaged = WeightAverage(self.model, train.ema_decay) if train.ema_decay else None
        self.rng = RNGState()
        self.state = TrainerState()
        self.with_graphs = config.data.use_structure
        checkpoints.attach(self.stateful(), self._metadata)
        logger.info(
            "Data loaders created. Train: %d batches, Val: %d batches",
            len(self.sampler),
            math.ceil(len(split["val"]) / train.batch_size),
        )

    @property
    def evaluated_model(self) -> MultitaskModel:
        """The weights that are validated and kept as best: the averaged ones when averaging is on."""
        return self.averaged.model if self.averaged is not None else self.model

    # -- state protocol ---------------------------------------------------------------------------

    def stateful(self) -> dict[str, Stateful]:
        """Everything a checkpoint holds, by name."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "scaler": self.scaler,
            **({"averaged_model": self.averaged} if self.averaged is not None else {}),
            "sampler": self.sampler,
            "trainer": self.state,
            "rng": self.rng,
        }

    def _metadata(self, tag: CheckpointTag) -> dict[str, Any]:
        return {
            **self.run_metadata,
            "epoch": tag.epoch,
            "step": tag.step,
            "global_step": self.state.global_step,
            "best_val_loss": self.state.best_val_loss,
            "config": self.config.to_dict(),
            "package_version": __version__,
            "resumed_from": self.resumed_from,
            "tasks": [task.model_dump(mode="json") for task in self.features.tasks],
            "history": self.state.history,
        }

    def restore(self, checkpoint: LoadedCheckpoint) -> None:
        """Continue from ``checkpoint``: the same split, then every component's state."""
        saved = checkpoint.metadata.get("split_ids_sha256")
        if saved is None:
            raise CheckpointError(
                f"{checkpoint.path}: written by topoclass {checkpoint.metadata.get('package_version', '?')}, "
                "which did not record its split; evaluate or predict with it, or train anew"
            )
        if saved != self.run_metadata["split_ids_sha256"]:
            raise CheckpointError(
                f"{checkpoint.path}: the checkpoint was trained on another split of the data; "
                "resume it in its own run directory, or start a new run with --run-dir"
            )
        self.checkpoints.restore(checkpoint)
        self.resumed_from = str(checkpoint.path)

    def describe_position(self) -> str:
        """Where a restored run continues, in the words of the checkpoint names."""
        state, sampler = self.state, self.sampler
        if state.early_stopped or state.completed_epochs >= self.config.train.epochs:
            return "This run had already finished; nothing to train"
        if sampler.position and sampler.epoch == state.completed_epochs + 1:
            return (
                f"Resuming from epoch {sampler.epoch}, step {state.global_step} "
                f"(batch {sampler.position} of {len(sampler)})"
            )
        return f"Resuming from epoch {state.completed_epochs + 1}"

    # -- training -----------------------------------------------------------------------------------

    def fit(self) -> FitResult:
        """Train until the last epoch, early stopping, or a stop request."""
        started = time.perf_counter()
        try:
            return self._fit()
        finally:
            elapsed = time.perf_counter() - started
            logger.info(
                "Checkpointing took %.2f s of %.1f s training (%.2f%%)",
                self.checkpoints.seconds,
                elapsed,
                100 * self.checkpoints.seconds / max(elapsed, 1e-9),
            )

    def _fit(self) -> FitResult:
        epochs = self.config.train.epochs
        while self.state.completed_epochs < epochs and not self.state.early_stopped:
            epoch = self.state.completed_epochs + 1
            self.sampler.set_epoch(epoch)
            if self.sampler.position == 0:
                logger.info("Starting epoch %d/%d", epoch, epochs)
            if not self._train_epoch(epoch):
                return FitResult("stopped", self.state)
            improved = self._end_epoch(epoch)
            self.state.early_stopped = self.state.epochs_without_improvement >= self.config.train.patience
            last = self.state.early_stopped or epoch == epochs
            self.checkpoints.on_epoch_end(epoch, improved=improved, last=last, stop=self.stop.requested)
            if self.stop.requested and not last:
                return FitResult("stopped", self.state)
        if self.state.early_stopped:
            logger.info("Early stopping: no val-loss improvement for %d epochs", self.config.train.patience)
        return FitResult("early_stopped" if self.state.early_stopped else "finished", self.state)

    def _train_epoch(self, epoch: int) -> bool:
        """One pass over the training batches; False if a stop request interrupted it."""
        self.model.train()
        total = len(self.sampler)
        bar = tqdm(
            total=total,
            initial=self.sampler.position,
            desc=f"epoch {epoch}",
            unit="batch",
            # A bar redrawn into a batch job's log file is noise: only on a terminal.
            disable=not (self.config.train.progress_bar and sys.stderr.isatty()),
            leave=False,
            dynamic_ncols=True,
        )
        started, samples_seen = time.perf_counter(), 0
        for rows in self.sampler:
            loss = self._train_step(rows)
            samples_seen += len(rows)
            self.state.epoch_loss_sum += loss * len(rows)
            self.state.epoch_samples += len(rows)
            rate = samples_seen / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{rate:.0f}", refresh=False)
            bar.update()
            if self.stop.requested:
                bar.close()
                logger.warning("Stop requested (%s): saving a checkpoint", self.stop.signal_name)
            saved = self.checkpoints.on_step(
                epoch,
                self.state.global_step,
                epoch_done=self.sampler.position >= total,
                stop=self.stop.requested,
            )
            if saved and self.stop.requested:
                return False
        bar.close()
        self.last_epoch_rate = samples_seen / max(time.perf_counter() - started, 1e-9)
        return True

    def _train_step(self, rows: torch.Tensor) -> float:
        self.state.global_step += 1
        self.schedule.on_step(self.state.global_step)
        batch = move_batch(self.features.batch(rows, with_graphs=self.with_graphs), self.device)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            outputs = self.model(batch)
        loss, _ = self.loss({k: v.float() for k, v in outputs.items()}, batch["labels"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.averaged is not None:
            self.averaged.update(self.model, self.state.global_step)
        return float(loss.detach())

    def _end_epoch(self, epoch: int) -> bool:
        """Validate, log, step the plateau schedule, track the best; True if val loss improved."""
        val_loss, metrics = self.validate("val")
        train_loss = self.state.epoch_loss_sum / max(self.state.epoch_samples, 1)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": self.schedule.current_lr,
        }
        for task in self.features.tasks:
            for key in task_type(task).headline_metrics:
                if metrics[task.name].get(key) is not None:
                    row[f"val_{task.name}_{key}"] = metrics[task.name][key]
        self.schedule.on_epoch_end(val_loss)
        improved = val_loss < self.state.best_val_loss
        if improved:
            self.state.best_val_loss, self.state.best_epoch = val_loss, epoch
            self.state.epochs_without_improvement = 0
        else:
            self.state.epochs_without_improvement += 1
        self.state.history.append(row)
        self.state.completed_epochs = epoch
        self.state.epoch_loss_sum, self.state.epoch_samples = 0.0, 0
        # Rewritten whole from the history, so epochs replayed after a crash never appear twice.
        atomic_write(
            self.metrics_file, "".join(json.dumps(r) + "\n" for r in self.state.history), durable=False
        )
        summary = ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch" and isinstance(v, float))
        logger.info(
            "Epoch %d/%d: %s, %.0f samples/s%s",
            epoch,
            self.config.train.epochs,
            summary,
            self.last_epoch_rate,
            " (best)" if improved else "",
        )
        return improved

    def validate(self, split_name: str) -> tuple[float, dict[str, dict[str, Any]]]:
        """Mean loss and per-task metrics on a split."""
        rows = self.split[split_name]
        outputs = raw_outputs(
            self.evaluated_model, self.features, rows, batch_size=VALIDATION_BATCH, device=self.device
        )
        labels = self.features.labels[rows]
        loss, _ = self.loss(outputs, labels)
        metrics = score_tasks(self.features.tasks, labels.numpy(), predictions(self.features.tasks, outputs))
        return float(loss), metrics
