"""A training run from start to finish: check, choose a checkpoint, prepare data, train, report.

The order is what keeps a user's files safe. Everything that can be checked
without writing (device, precision, data sources, the run directory, an explicit
checkpoint) is checked first; then the checkpoint to resume from is chosen, the
data prepared and checked against what the run recorded, the trainer built and
restored. Only when all of that holds is anything of the run written, and from
then on ``status.json`` always tells the truth: ``running``, ``stopped``,
``finished``, or ``failed`` with the reason.

Under torchrun every process runs this; the first one alone takes the lock,
chooses the checkpoint, featurizes (the others read its cache) and writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from topoclass import distributed
from topoclass.app.onnx_export import ensure_network_export
from topoclass.app.predict import load_run
from topoclass.app.prepare import RunData, run_data
from topoclass.app.resume import RESUME_MODES, ask_to_resume, check_config_drift, resolve_resume_mode
from topoclass.app.runs import RunLayout, checkpoint_target, is_run_directory
from topoclass.app.serving import fit_serving, save_serving, serving_fitted_for
from topoclass.app.slurm import warn_if_a_save_may_not_fit
from topoclass.app.torch_network import torch_network
from topoclass.checkpoint import storage
from topoclass.checkpoint.lock import CheckpointLock
from topoclass.checkpoint.manager import CheckpointManager, CheckpointTag, LoadedCheckpoint, read_checkpoint
from topoclass.config import Config, config_yaml
from topoclass.data.clean import format_report, write_rejects
from topoclass.data.datasets import check_sources
from topoclass.data.split import save_split
from topoclass.distributed import PeerFailedError, ProcessGroup
from topoclass.errors import CheckpointError, ConfigError, DataError, ResumableStop
from topoclass.files import atomic_write
from topoclass.inference.rules import Serving
from topoclass.model.backbones import pin_backbone
from topoclass.model.backbones.info import BackboneInfo
from topoclass.model.inference import raw_outputs
from topoclass.threads import configure_threads, node_processes
from topoclass.trainer.device import autocast_dtype, select_device
from topoclass.trainer.loop import VALIDATION_BATCH, BatchFailedError, Trainer
from topoclass.trainer.signals import EXIT_RESUMABLE, StopRequest, install_stop_handlers
from topoclass.trainer.tracking import EpochLog, wanted_loggers

logger = logging.getLogger(__name__)

EXIT_OK = 0


def code_revision() -> str | None:
    """The git revision of the installed source, when it is a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_training(config: Config, *, accept_data_change: bool = False) -> int:
    """Train (or resume) the run a config describes; returns the process exit code."""
    group = distributed.environment_group()
    layout = RunLayout.for_config(config)
    device = select_device(config.train.device, group.local_rank)
    autocast_dtype(config.train.precision, device)  # fp16 on a CPU is refused now, not after featurizing
    wanted_loggers(config.train.loggers)
    check_sources(config.data)
    backbone = pin_backbone(config)
    _check_run_directory(layout)
    mode = resolve_resume_mode(config.checkpoint.resume)
    explicit = None if mode in RESUME_MODES else checkpoint_target(Path(mode)).single(prefer_best=False)
    if not group.is_primary:
        _quiet(group)
    configure_threads(config.train.num_threads, _local_processes(group))
    distributed.start(group, device, timeout_s=config.train.collective_timeout_s)
    try:
        with install_stop_handlers() as stop:
            return _run(config, layout, device, group, mode, explicit, stop, accept_data_change, backbone)
    except PeerFailedError as error:
        raise ResumableStop(str(error)) from error
    finally:
        distributed.stop()


def _run(
    config: Config,
    layout: RunLayout,
    device: torch.device,
    group: ProcessGroup,
    mode: str,
    explicit: Path | None,
    stop: StopRequest,
    accept_data_change: bool,
    backbone: BackboneInfo | None = None,
) -> int:
    lock = CheckpointLock(layout.checkpoints)
    if group.is_primary and layout.checkpoints.is_dir():
        lock.acquire()  # before looking: choosing a checkpoint may set damaged ones aside
    try:
        started = time.perf_counter()
        checkpoint = _agree_on_checkpoint(layout, mode, explicit, group, holding_lock=lock.held)
        if checkpoint is not None:
            for key in check_config_drift(checkpoint.metadata["config"], config.to_dict()):
                logger.warning("Config changed since the checkpoint: %s (applied)", key)
        stop.immediate = True  # nothing to checkpoint yet: a stop signal stops at once (exit 75)
        data = _prepare_once(config, layout, group, checkpoint is not None, accept_data_change)
        stop.immediate = False
        if checkpoint is not None:
            _check_checkpoint_data(checkpoint, data, accept_data_change)
        elif group.is_primary:
            logger.info("Starting fresh training")
            lock.release()
            _set_aside_previous_run(layout, mode)
            lock.acquire()
        group.barrier()
        return _train(
            config, layout, device, group, data, checkpoint, stop, time.perf_counter() - started, backbone
        )
    finally:
        lock.release()


def _local_processes(group: ProcessGroup) -> int:
    """Processes of this job on this node (torchrun and Slurm say how many; else all of the group)."""
    said = node_processes()
    if said is not None:
        return said
    return group.world_size if group.distributed else 1


def _quiet(group: ProcessGroup) -> None:
    """Only the first process reports progress; the others say only what goes wrong, and who they are."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [rank {group.rank}] %(message)s"))


def _check_run_directory(layout: RunLayout) -> None:
    """Only an empty directory or a topoclass run may be the run directory."""
    root = layout.root
    if root.exists() and not root.is_dir():
        raise ConfigError(f"run directory {root} is a file")
    if root.is_dir() and any(root.iterdir()) and not is_run_directory(root):
        raise ConfigError(
            f"run directory {root} is not empty and is not a topoclass run; choose a new or empty directory"
        )


def _agree_on_checkpoint(
    layout: RunLayout, mode: str, explicit: Path | None, group: ProcessGroup, *, holding_lock: bool
) -> LoadedCheckpoint | None:
    """The first process chooses the checkpoint to resume from; every process loads that one."""
    chosen = None
    if group.is_primary:
        chosen = _choose_checkpoint(layout, mode, explicit, holding_lock=holding_lock)
    path = group.gather_objects(None if chosen is None else str(chosen.path))[0]
    if group.is_primary or path is None:
        return chosen
    return read_checkpoint(Path(path))


def _choose_checkpoint(
    layout: RunLayout, mode: str, explicit: Path | None, *, holding_lock: bool
) -> LoadedCheckpoint | None:
    """The checkpoint to resume from, per the resume mode; None to start fresh."""
    if explicit is not None:
        checkpoint = read_checkpoint(explicit)
        if holding_lock and explicit.parent.resolve() == layout.checkpoints.resolve():
            # Resuming from an older checkpoint of this run starts a new timeline.
            with CheckpointManager(layout.checkpoints, Config().checkpoint) as manager:
                manager.abandon_newer_than(checkpoint.tag)
        return checkpoint
    if mode == "never" or not layout.checkpoints.is_dir():
        return None
    with CheckpointManager(layout.checkpoints, Config().checkpoint) as manager:
        latest = manager.find_latest()
        if latest is not None:
            manager.repair_best(latest)
    if latest is None:
        damaged = sorted(path.name for path in layout.checkpoints.glob("*.corrupt-*"))
        if damaged:
            # Never start a multi-day run over without being told to.
            raise CheckpointError(
                f"every checkpoint of {layout.root} failed verification (set aside: {', '.join(damaged[:4])}"
                f"{', ...' if len(damaged) > 4 else ''}); to start over, run again with --resume never"
            )
        return None
    if mode == "ask" and not ask_to_resume(latest.path):
        return None
    return latest


def _prepare_once(
    config: Config, layout: RunLayout, group: ProcessGroup, resuming: bool, accept: bool
) -> RunData:
    """The run's data; featurized by the first process alone (the others then read its cache)."""
    if group.is_primary:
        data = run_data(config, layout, resuming=resuming, accept_data_change=accept)
    group.barrier()
    if not group.is_primary:
        data = run_data(config, layout, resuming=resuming, accept_data_change=accept)
    return data


def _check_checkpoint_data(checkpoint: LoadedCheckpoint, data: RunData, accept: bool) -> None:
    """A checkpoint continues only on the data it was trained on, unless the user accepts the change."""
    recorded = checkpoint.metadata.get("data_fingerprint")
    if recorded is not None and recorded != data.fingerprint["digest"] and not accept:
        raise DataError(
            f"{checkpoint.path} was trained on other data than this run reads; "
            "use the same data, or pass --accept-data-change to continue on this data"
        )


def _set_aside_previous_run(layout: RunLayout, mode: str) -> None:
    """Move an earlier run (and checkpoints it keeps elsewhere) out of the way instead of overwriting it.

    A run directory that never trained (a baseline's split, say) holds nothing that a new
    run would not write again the same way, and is used in place.
    """
    trained = layout.metrics_file().exists() or (
        layout.checkpoints.is_dir() and any(p.name != ".lock" for p in layout.checkpoints.iterdir())
    )
    if not trained:
        return
    for directory, what in ((layout.root, "run"), (layout.checkpoints, "checkpoint directory")):
        if not directory.is_dir() or not any(directory.iterdir()):
            continue
        if Path.cwd().resolve().is_relative_to(directory.resolve()):
            raise ConfigError(
                f"cannot move the previous {what} {directory} aside: it holds the current directory"
            )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = directory.with_name(f"{directory.name}.prev-{stamp}")
        suffix = 1
        while aside.exists():
            suffix += 1
            aside = directory.with_name(f"{directory.name}.prev-{stamp}-{suffix}")
        reason = "--resume never" if mode == "never" else "no checkpoint to resume from"
        logger.warning("Moving the previous %s %s to %s (%s)", what, directory, aside, reason)
        shutil.move(str(directory), aside)


def _train(
    config: Config,
    layout: RunLayout,
    device: torch.device,
    group: ProcessGroup,
    data: RunData,
    checkpoint: LoadedCheckpoint | None,
    stop: StopRequest,
    find_seconds: float,
    backbone: BackboneInfo | None = None,
) -> int:
    features = data.prepared.features
    run_metadata: dict[str, Any] = {
        "code_revision": code_revision(),
        "data_fingerprint": data.fingerprint["digest"],
        "split_ids_sha256": data.split_digest,
    }
    if backbone is not None:
        run_metadata["backbone"] = backbone.as_dict()
    with CheckpointManager(layout.checkpoints, config.checkpoint, group=group) as manager:
        trainer = Trainer(
            config,
            features,
            data.split_tensors(),
            device=device,
            checkpoints=manager,
            stop=stop,
            metrics_file=layout.metrics_file(),
            run_metadata=run_metadata,
            group=group,
        )
        if checkpoint is not None:
            restore_started = time.perf_counter()
            trainer.restore(checkpoint)
            logger.info(
                "Checkpoint loaded from epoch %d with best val loss: %.4f",
                trainer.state.completed_epochs,
                trainer.state.best_val_loss,
            )
            logger.info(
                "Resume (find, verify, load, restore) took %.2f s",
                find_seconds + time.perf_counter() - restore_started,
            )
            logger.info("%s", trainer.describe_position())
        if group.is_primary:
            warn_if_a_save_may_not_fit(
                None if checkpoint is None else checkpoint.metadata.get("last_save_seconds")
            )
            manager.check_room(_checkpoint_size_estimate(trainer))
            # Everything is known to be valid: from here on the run's files are written.
            _write_run_files(config, layout, data)
        loggers = wanted_loggers(config.train.loggers) if group.is_primary else []
        resumed_at = trainer.state.completed_epochs
        epoch_log = EpochLog(layout.tracking_dir(), loggers, resume_after_epoch=resumed_at)
        trainer.on_epoch = epoch_log.write
        try:
            with contextlib.closing(epoch_log):
                result = trainer.fit()
        except KeyboardInterrupt:
            _status(group, layout, "stopped", reason="interrupted at once (second Ctrl-C)")
            raise
        except (ResumableStop, BatchFailedError) as error:
            _save_last_good_state(trainer, manager, group, layout)
            state = "stopped" if isinstance(error, ResumableStop) else "failed"
            _status(group, layout, state, reason=_one_line(error))
            raise
        except BaseException as error:
            _status(group, layout, "failed", reason=_one_line(error))
            raise
    if result.outcome == "stopped":
        _status(group, layout, "stopped", signal=stop.signal_name)
        logger.warning("Training stopped; resume with: topoclass resume %s", layout.root)
        return EXIT_RESUMABLE
    if group.is_primary and serving_fitted_for(layout) != fitting_inputs(layout, data):
        fit_serving_rules(layout, data)  # not again for a finished run resumed with nothing to train
    if group.is_primary and config.train.export_onnx:
        ensure_network_export(layout)
    _status(
        group,
        layout,
        "finished",
        best_epoch=result.state.best_epoch,
        best_val_loss=result.state.best_val_loss,
    )
    logger.info(
        "Training finished: best val loss %.4f at epoch %d. Results in %s",
        result.state.best_val_loss,
        result.state.best_epoch,
        layout.root,
    )
    return EXIT_OK


def fitting_inputs(layout: RunLayout, data: RunData, checkpoint: Path | None = None) -> dict[str, str]:
    """What serving rules fitted now would depend on: the best weights' SHA-256 and the data's digest."""
    best = checkpoint or checkpoint_target(layout.checkpoints).single(prefer_best=True)
    weights = storage.read_manifest(best)["files"][storage.TENSORS_FILE]["sha256"]
    return {"weights": weights, "data": data.fingerprint["digest"]}


def fit_serving_rules(layout: RunLayout, data: RunData) -> Serving:
    """Fit the trees and every task's serving rule on validation, with the run's best weights; save them."""
    run = load_run(layout.root, backend="torch")
    network = torch_network(run)
    features, val = data.prepared.features, data.split["val"]
    outputs = raw_outputs(
        network.model, features, torch.as_tensor(val), batch_size=VALIDATION_BATCH, device=network.device
    )
    serving = fit_serving(
        features,
        data.split,
        {name: values.numpy() for name, values in outputs.items()},
        use_structure=run.config.data.use_structure,
        seed=run.config.train.seed,
    )
    save_serving(
        layout,
        serving,
        checkpoint=run.checkpoint.name,
        fitted_for=fitting_inputs(layout, data, run.checkpoint),
    )
    logger.info(
        "Serving (chosen on validation): %s; see %s",
        ", ".join(f"{name} by the {rule.predictor}" for name, rule in serving.rules.items()),
        layout.model_card_file(),
    )
    return serving


def _save_last_good_state(
    trainer: Trainer, manager: CheckpointManager, group: ProcessGroup, layout: RunLayout
) -> None:
    """After a step failed without changing anything (out of memory, an error in the batch), keep the
    state it started from. Not in a job of several processes: the others may not be able to join."""
    if group.distributed or manager.failed_saves >= manager.config.max_failed_saves:
        return
    try:
        saved = manager.save(CheckpointTag(trainer.sampler.epoch, trainer.state.global_step))
    except (ResumableStop, CheckpointError) as error:
        logger.warning("Could not save the last good state: %s", error)
        return
    if saved is not None:
        logger.warning(
            "Saved the last good state as %s; resume with: topoclass resume %s", saved.name, layout.root
        )


def _checkpoint_size_estimate(trainer: Trainer) -> int:
    """A checkpoint: the weights, their average and the optimizer's two moments, plus a margin."""
    parameters = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    return 4 * parameters + (1 << 20)


def _status(group: ProcessGroup, layout: RunLayout, state: str, **extra: object) -> None:
    if group.is_primary:
        layout.write_status(state, **extra)


def _write_run_files(config: Config, layout: RunLayout, data: RunData) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.write_status("preparing")
    atomic_write(layout.config_file(), config_yaml(config))
    if data.split_is_new:
        save_split(layout.split_file(), data.split, data.prepared.features.ids)
    atomic_write(layout.fingerprint_file(), json.dumps(data.fingerprint))
    write_rejects(layout.rejects_file(), data.prepared.rejects)
    atomic_write(layout.data_report_file(), json.dumps(data.prepared.counts, indent=2))
    logger.info("%s", format_report(data.prepared.counts))
    layout.write_status("running")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
