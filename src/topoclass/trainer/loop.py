"""The trainer, readable top to bottom.

Everything that must survive a crash (model, optimizer, schedule, grad scaler,
sampler position, RNG streams, this trainer's own counters and history) follows
one state protocol, ``state_dict()`` / ``load_state_dict()``, and is handed to
the checkpoint manager once. The trainer then only reports events (a step
finished, an epoch ended); the manager decides what to write and when.

One optimizer step takes ``batch_size x accumulate_steps`` samples per process.
They go through the model in micro-batches (split further when memory runs out,
or to respect ``max_atoms_per_batch``), and every task's loss is divided by its
labelled-row count over the whole step and every process, so however a step is
split, and whatever the number of processes, the update is the same.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from topoclass import __version__
from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag, LoadedCheckpoint
from topoclass.checkpoint.state import JobRNGState, Stateful
from topoclass.config import Config, TaskConfig
from topoclass.data.featureset import FeatureSet
from topoclass.data.loader import ResumableSampler, ordered_batches
from topoclass.distributed import ProcessGroup, is_peer_failure, peer_failed
from topoclass.errors import CheckpointError, DivergedError, ResumableStop
from topoclass.files import atomic_write
from topoclass.memory import is_out_of_memory, memory_report, release_memory
from topoclass.model.inference import move_batch, predictions, raw_outputs
from topoclass.model.multitask import MultitaskModel
from topoclass.tasks import score_tasks, task_type
from topoclass.trainer.averaging import WeightAverage
from topoclass.trainer.device import autocast_dtype, seed_everything, training_kernels
from topoclass.trainer.loss import MultitaskLoss
from topoclass.trainer.schedule import LearningRateSchedule
from topoclass.trainer.signals import StopRequest

logger = logging.getLogger(__name__)

VALIDATION_BATCH = 1024
# Atoms per validation batch when structures are used: memory follows atoms, not materials.
VALIDATION_ATOMS = 32768
# Hooks run before every micro-batch's forward pass with (global step, rows): tests inject faults here.
STEP_HOOKS: list[Any] = []


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
    micro_batches: int = 1  # pieces each batch is split into, learned from running out of memory
    skipped_steps: int = 0  # non-finite steps, over the whole run
    nonfinite_in_a_row: int = 0
    rollbacks: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class FitResult:
    outcome: str  # "finished", "early_stopped" or "stopped"
    state: TrainerState


class BatchFailedError(RuntimeError):
    """A training step failed on one batch (not for lack of memory): a bug, or a bad sample."""


class _RolledBack(Exception):
    """The state was restored from a checkpoint: the epoch loop starts over from there."""


def adamw(model: torch.nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where this PyTorch has that for the model's device."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):  # older PyTorch, or a device without a fused kernel
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


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
        group: ProcessGroup | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        train = config.train
        self.config, self.features, self.split = config, features, split
        self.device, self.checkpoints, self.stop = device, checkpoints, stop
        self.group = group or ProcessGroup()
        self.metrics_file = metrics_file
        self.on_epoch = on_epoch  # experiment tracking: called with each epoch's figures
        self.run_metadata = run_metadata
        self.resumed_from: str | None = None
        self.last_epoch_rate = 0.0  # training samples per second in the last epoch
        logger.info("Using device: %s", self.device)
        seed_everything(train.seed + self.group.rank, deterministic=train.deterministic)
        self.model = build_model(config, features.tasks).to(self.device)
        # DDP broadcasts the first process's initial weights and averages gradients.
        self.network: torch.nn.Module = self.model
        if self.group.distributed:
            ids = [device.index] if device.type == "cuda" else None
            # A batch without any crystal leaves the structure encoder unused: DDP must allow that.
            self.network = DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=config.data.use_structure
            )
        self.optimizer = torch.optim.AdamW(
            self.model.parameter_groups(train.lr, config.model.backbone_lr),
            lr=train.lr,
            weight_decay=train.weight_decay,
        )
        self.sampler = ResumableSampler(
            split["train"],
            train.batch_size,
            seed=train.seed,
            accumulate_steps=train.accumulate_steps,
            world_size=self.group.world_size,
            rank=self.group.rank,
        )
        self.schedule = LearningRateSchedule(
            self.optimizer,
            kind=train.scheduler,
            base_lr=train.lr,
            total_steps=train.epochs * len(self.sampler),
            warmup_steps=train.warmup_epochs * len(self.sampler),
            patience=train.patience,
        )
        self.autocast = autocast_dtype(train.precision, self.device)
        self.kernels = training_kernels(self.device, deterministic=train.deterministic)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=train.precision == "fp16")
        self.loss = MultitaskLoss(
            features.tasks,
            features.labels[split["train"]],
            focal_gamma=train.focal_gamma,
            label_smoothing=train.label_smoothing,
            device=self.device,
        )
        # Evaluation uses an exponential moving average of the weights: smoother than the last step.
        self.averaged = WeightAverage(self.model, train.ema_decay) if train.ema_decay else None
        self.rng = JobRNGState(self.group)
        self.state = TrainerState()
        self.with_graphs = config.data.use_structure
        self.atoms = features.atoms() if self.with_graphs else None
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
            "best_epoch": self.state.best_epoch,
            "world_size": self.group.world_size,
            "last_save_seconds": self.checkpoints.last_save_seconds,
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
                f"(batch {sampler.steps_taken} of {len(sampler)})"
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
            self._set_backbone_live(epoch)
            if self.sampler.position == 0:
                logger.info("Starting epoch %d/%d", epoch, epochs)
            try:
                finished_epoch = self._train_epoch(epoch)
            except _RolledBack:
                continue
            if not finished_epoch:
                return FitResult("stopped", self.state)
            improved = self._end_epoch(epoch)
            self.state.early_stopped = self.state.epochs_without_improvement >= self.config.train.patience
            last = self.state.early_stopped or epoch == epochs
            stop = self.group.any(self.stop.requested)
            self.checkpoints.on_epoch_end(epoch, improved=improved, last=last, stop=stop)
            if self.config.train.release_memory:
                release_memory(self.device)
            if stop and not last:
                return FitResult("stopped", self.state)
        if self.state.early_stopped:
            logger.info("Early stopping: no val-loss improvement for %d epochs", self.config.train.patience)
        return FitResult("early_stopped" if self.state.early_stopped else "finished", self.state)

    def _set_backbone_live(self, epoch: int) -> None:
        """A fine-tuned backbone runs live after its frozen warm-up epochs (a function of the epoch
        alone, so a resumed run is in the same mode as the run it continues)."""
        live = epoch > self.config.model.backbone_frozen_epochs
        for model in (self.model, self.evaluated_model):
            model.backbone_live = live and model.backbone is not None

    def _train_epoch(self, epoch: int) -> bool:
        """The rest of this epoch's optimizer steps; False if a stop request interrupted it."""
        self.network.train()
        bar = tqdm(
            total=len(self.sampler),
            initial=self.sampler.steps_taken,
            desc=f"epoch {epoch}",
            unit="batch",
            # A bar redrawn into a batch job's log file is noise: only on a terminal, and only once.
            disable=not (self.config.train.progress_bar and sys.stderr.isatty() and self.group.is_primary),
            leave=False,
            dynamic_ncols=True,
        )
        started, samples_seen = time.perf_counter(), 0
        with contextlib.closing(bar):
            while not self.sampler.epoch_done:
                rows, weight = self.sampler.next_rows()
                loss, samples = self._optimizer_step(rows, weight)
                self.sampler.advance()
                self.state.global_step += 1
                samples_seen += samples
                if loss is not None:
                    self.state.epoch_loss_sum += loss * samples
                    self.state.epoch_samples += samples
                if not bar.disable and self.sampler.steps_taken % 10 == 0:  # memory is cheap, not free
                    rate = samples_seen / max(time.perf_counter() - started, 1e-9)
                    memory = memory_report(self.device).short()
                    bar.set_postfix(loss=f"{loss or math.nan:.4f}", samples_per_s=f"{rate:.0f}", mem=memory)
                bar.update()
                stop = self.group.any(self.stop.requested)
                if stop:
                    logger.warning(
                        "Stop requested (%s): saving a checkpoint", self.stop.signal_name or "another process"
                    )
                saved = self.checkpoints.on_step(
                    epoch, self.state.global_step, epoch_done=self.sampler.epoch_done, stop=stop
                )
                if saved and stop:
                    return False
        self.last_epoch_rate = samples_seen / max(time.perf_counter() - started, 1e-9)
        return True

    # -- one optimizer step -------------------------------------------------------------------------

    def _optimizer_step(self, rows: torch.Tensor, weight: torch.Tensor | None) -> tuple[float | None, int]:
        """Forward and backward over the step's micro-batches, then update; (loss, samples) of the step.

        The loss is None when the step was skipped for a non-finite loss or gradient.
        """
        self.schedule.on_step(self.state.global_step + 1)
        labels = self.features.labels[rows]
        normalizers = self.group.sum(self.loss.normalizers(labels, weight).to(self.device))
        samples = int(self.group.sum(torch.tensor([float(len(rows) if weight is None else weight.sum())]))[0])
        while True:
            try:
                local_loss = self._accumulate(rows, weight, normalizers)
                break
            except Exception as error:
                if not is_out_of_memory(error) or self.group.distributed:
                    raise
                self._split_further(rows, error)
        loss = float(self.group.sum(torch.tensor([local_loss]))[0])
        grad_norm = self._unscaled_grad_norm()
        overflow = self.scaler.is_enabled() and not math.isfinite(grad_norm)  # fp16: the scaler's business
        if not math.isfinite(loss) or (not math.isfinite(grad_norm) and not overflow):
            self._skip_nonfinite_step(loss, grad_norm)
            return None, samples
        self.state.nonfinite_in_a_row = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.averaged is not None:
            self.averaged.update(self.model, self.state.global_step + 1)
        return loss, samples

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The network's outputs for a training batch, in the run's precision and kernels."""
        precision = torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None)
        with precision, self.kernels():
            return self.network(batch)

    def _accumulate(
        self, rows: torch.Tensor, weight: torch.Tensor | None, normalizers: torch.Tensor
    ) -> float:
        """Gradients of the whole step, summed over its micro-batches; returns this process's loss share."""
        self.optimizer.zero_grad(set_to_none=True)
        pieces = list(self._micro_batches(rows, weight))
        total = 0.0
        for index, (piece, piece_weight) in enumerate(pieces):
            last = index == len(pieces) - 1
            # DDP averages gradients over processes when the last piece's backward runs; the
            # loss is scaled by the number of processes so that the average is their sum.
            network = self.network
            deferred = isinstance(network, DistributedDataParallel) and not last
            with network.no_sync() if deferred else contextlib.nullcontext():  # type: ignore[operator]
                try:
                    for hook in STEP_HOOKS:
                        hook(self.state.global_step + 1, piece)
                    batch = move_batch(self.features.batch(piece, with_graphs=self.with_graphs), self.device)
                    outputs = self.forward(batch)
                    loss, _ = self.loss(
                        {k: v.float() for k, v in outputs.items()},
                        batch["labels"],
                        normalizers=normalizers,
                        row_weight=None if piece_weight is None else piece_weight.to(self.device),
                    )
                    self.scaler.scale(loss * self.group.world_size).backward()
                except Exception as error:
                    if is_out_of_memory(error):
                        raise
                    if self.group.distributed and is_peer_failure(error):  # in DDP's gradient all-reduce
                        raise peer_failed(error) from error
                    ids = [self.features.ids[int(i)] for i in piece[:10]]
                    raise BatchFailedError(
                        f"training step {self.state.global_step + 1} failed on a batch of {len(piece)} "
                        f"materials ({', '.join(ids)}{', ...' if len(piece) > 10 else ''})"
                    ) from error
            total += float(loss.detach())
        return total

    def _micro_batches(
        self, rows: torch.Tensor, weight: torch.Tensor | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """The step's forward passes: ``accumulate_steps`` batches, each split in ``micro_batches``
        pieces and, with ``max_atoms_per_batch``, into pieces of at most that many atoms."""
        size = -(-self.config.train.batch_size // self.state.micro_batches)
        atoms = None if self.atoms is None else self.atoms[rows]
        positions = torch.arange(len(rows))
        for piece in ordered_batches(
            positions, size, atoms=atoms, max_atoms=self.config.train.max_atoms_per_batch
        ):
            yield rows[piece], None if weight is None else weight[piece]

    def _split_further(self, rows: torch.Tensor, error: BaseException) -> None:
        """After running out of memory: free what the step held, split its batches in twice as many pieces."""
        self.optimizer.zero_grad(set_to_none=True)
        release_memory(self.device)
        size = -(-self.config.train.batch_size // self.state.micro_batches)
        if size <= 1:
            raise ResumableStop(
                f"material {self.features.ids[int(rows[0])]} alone does not fit in memory on {self.device}; "
                "resume on a device with more memory"
            ) from error
        self.state.micro_batches *= 2
        logger.warning(
            "Out of memory on %s at step %d: each batch now goes through in %d pieces "
            "(same update, gradients accumulated)",
            self.device,
            self.state.global_step + 1,
            self.state.micro_batches,
        )

    def _unscaled_grad_norm(self) -> float:
        """The gradient norm after unscaling, clipped to ``grad_clip`` when that is set."""
        self.scaler.unscale_(self.optimizer)
        limit = self.config.train.grad_clip if self.config.train.grad_clip > 0 else math.inf
        return float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit))

    def _skip_nonfinite_step(self, loss: float, grad_norm: float) -> None:
        """Drop a step with a non-finite loss or gradient; roll back after too many in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        self.state.skipped_steps += 1
        self.state.nonfinite_in_a_row += 1
        logger.warning(
            "Step %d skipped: loss %s, gradient norm %s (%d in a row)",
            self.state.global_step + 1,
            loss,
            grad_norm,
            self.state.nonfinite_in_a_row,
        )
        if self.state.nonfinite_in_a_row >= self.config.train.nonfinite_patience:
            self._roll_back()

    def _roll_back(self) -> None:
        """Return to the newest checkpoint with a smaller learning rate, or stop when that keeps failing."""
        train = self.config.train
        rollbacks, skipped = self.state.rollbacks + 1, self.state.skipped_steps
        if rollbacks > train.max_rollbacks:
            raise DivergedError(
                f"training diverged: {train.nonfinite_patience} non-finite steps in a row after "
                f"{train.max_rollbacks} rollbacks (learning rate now {self.schedule.current_lr:.3g}); "
                "lower train.lr, raise train.warmup_epochs or set train.grad_clip"
            )
        checkpoint = self.checkpoints.find_latest()
        if checkpoint is None:
            raise DivergedError(
                "training diverged before its first checkpoint: lower train.lr or raise train.warmup_epochs"
            )
        scale = self.schedule.scale * train.rollback_lr_factor
        self.checkpoints.restore(checkpoint)
        self.state.rollbacks, self.state.skipped_steps = rollbacks, skipped
        self.schedule.rescale(scale / self.schedule.scale)
        logger.warning(
            "Rolled back to %s after %d non-finite steps in a row; learning rate scaled by %.3g "
            "(rollback %d of %d)",
            checkpoint.path.name,
            train.nonfinite_patience,
            scale,
            rollbacks,
            train.max_rollbacks,
        )
        raise _RolledBack

    # -- end of an epoch ----------------------------------------------------------------------------

    def _end_epoch(self, epoch: int) -> bool:
        """Validate, log, step the plateau schedule, track the best; True if val loss improved."""
        val_loss, metrics = self.validate("val")
        train_loss = self.state.epoch_loss_sum / max(self.state.epoch_samples, 1)
        memory = memory_report(self.device)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": self.schedule.current_lr,
        }
        for task in self.features.tasks:
            for key in task_type(task).headline_metrics:
                value = metrics.get(task.name, {}).get(key)
                if value is not None:
                    row[f"val_{task.name}_{key}"] = value
        row.update({"skipped_steps": self.state.skipped_steps, **memory.fields()})
        self.schedule.on_epoch_end(val_loss)
        improved = math.isfinite(val_loss) and val_loss < self.state.best_val_loss
        if improved:
            self.state.best_val_loss, self.state.best_epoch = val_loss, epoch
            self.state.epochs_without_improvement = 0
        else:
            self.state.epochs_without_improvement += 1
        self.state.history.append(row)
        self.state.completed_epochs = epoch
        self.state.epoch_loss_sum, self.state.epoch_samples = 0.0, 0
        if self.group.is_primary:
            # Rewritten whole from the history, so epochs replayed after a crash never appear twice.
            lines = "".join(json.dumps(r, allow_nan=True) + "\n" for r in self.state.history)
            atomic_write(self.metrics_file, lines, durable=False)
        if self.on_epoch is not None and self.group.is_primary:
            self.on_epoch({**row, "samples_per_s": self.last_epoch_rate})
        shown = {k: v for k, v in row.items() if k.startswith(("train_", "val_", "lr"))}
        summary = ", ".join(f"{k}={v:.4f}" for k, v in shown.items() if isinstance(v, float))
        logger.info(
            "Epoch %d/%d: %s, %.0f samples/s%s",
            epoch,
            self.config.train.epochs,
            summary,
            self.last_epoch_rate,
            " (best)" if improved else "",
        )
        logger.info("%s", memory.line())
        return improved

    def validate(self, split_name: str) -> tuple[float, dict[str, dict[str, Any]]]:
        """Mean loss and per-task metrics on a split; every process gets the same numbers.

        Each process predicts its share of the rows; the outputs are gathered. Outputs that
        are not finite (a diverging run) are reported, and the loss is then NaN.
        """
        rows = self.split[split_name]
        shares = [rows[rank :: self.group.world_size] for rank in range(self.group.world_size)]
        mine = raw_outputs(
            self.evaluated_model,
            self.features,
            shares[self.group.rank],
            batch_size=VALIDATION_BATCH,
            device=self.device,
            max_atoms=VALIDATION_ATOMS if self.with_graphs else 0,
        )
        outputs = {name: self.group.gather_rows(values) for name, values in mine.items()}
        labels = self.features.labels[torch.cat(shares)]
        finite = torch.ones(len(rows), dtype=torch.bool)
        for values in outputs.values():
            finite &= torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
        broken = int((~finite).sum())
        if broken:
            logger.warning(
                "Validation: the model's outputs are not finite for %d of %d materials", broken, len(rows)
            )
            return math.nan, {}
        loss, _ = self.loss(outputs, labels)
        metrics = score_tasks(self.features.tasks, labels.numpy(), predictions(self.features.tasks, outputs))
        return float(loss), metrics
