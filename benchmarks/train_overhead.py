"""What the training infrastructure costs: the trainer against a minimal hand-written loop.

Both sides train the default model on the default dataset (Tang 2019, its formula-grouped
split) from the same initial weights, over the same batches in the same order, with the
same arithmetic: forward, loss, backward, gradient clipping, AdamW, the weight average and
a validation pass per epoch. The trainer adds what a user gets from it: checkpoints at the
default cadence, the non-finite guard, the memory report, logging, the metrics file and
the TensorBoard curves.
Whole runs alternate (trainer, loop, trainer, loop...) so both see the same machine.

It also times the memory report and the guard on their own, against the time of a step,
and the TensorBoard writer on its own, against the time of an epoch,
and measures the peak resident memory of a default ``topoclass train`` in a fresh process.

Usage: ``python benchmarks/train_overhead.py [--epochs 6] [--repeats 2] [--rss-epochs 3]``
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from topoclass.app.prepare import make_split, prepare_data
from topoclass.checkpoint.manager import CheckpointManager
from topoclass.config import load_config
from topoclass.data.fingerprint import split_digest
from topoclass.memory import memory_report
from topoclass.model.inference import raw_outputs
from topoclass.trainer.averaging import WeightAverage
from topoclass.trainer.device import seed_everything
from topoclass.trainer.loop import VALIDATION_BATCH, Trainer, build_model
from topoclass.trainer.loss import MultitaskLoss
from topoclass.trainer.schedule import LearningRateSchedule
from topoclass.trainer.signals import StopRequest
from topoclass.trainer.tracking import EpochLog, wanted_loggers


def trainer_run(config, prepared, split, scratch: Path) -> float:
    """Seconds for ``config.train.epochs`` epochs of the real trainer, checkpoints included."""
    digest = split_digest(prepared.features.ids, {k: v.numpy() for k, v in split.items()})
    with CheckpointManager(scratch / "checkpoints", config.checkpoint) as manager:
        trainer = Trainer(
            config,
            prepared.features,
            split,
            device=torch.device("cpu"),
            checkpoints=manager,
            stop=StopRequest(),
            metrics_file=scratch / "metrics.jsonl",
            run_metadata={"split_ids_sha256": digest, "data_fingerprint": "", "code_revision": None},
        )
        epoch_log = EpochLog(scratch / "tensorboard", wanted_loggers(None), resume_after_epoch=0)
        trainer.on_epoch = epoch_log.write
        started = time.perf_counter()
        trainer.fit()
        elapsed = time.perf_counter() - started
        epoch_log.close()
        return elapsed


def minimal_run(config, prepared, split) -> float:
    """Seconds for the same epochs written as the shortest loop that does the same arithmetic."""
    train = config.train
    features = prepared.features
    seed_everything(train.seed, deterministic=train.deterministic)
    model = build_model(config, features.tasks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    average = WeightAverage(model, train.ema_decay)
    loss_fn = MultitaskLoss(features.tasks, features.labels[split["train"]], focal_gamma=train.focal_gamma)
    rows = split["train"]
    steps = math.ceil(len(rows) / train.batch_size)
    schedule = LearningRateSchedule(
        optimizer,
        kind=train.scheduler,
        base_lr=train.lr,
        total_steps=train.epochs * steps,
        warmup_steps=train.warmup_epochs * steps,
        patience=train.patience,
    )
    started, step = time.perf_counter(), 0
    for epoch in range(1, train.epochs + 1):
        model.train()
        generator = torch.Generator().manual_seed(train.seed * 1_000_003 + epoch)
        order = rows[torch.randperm(len(rows), generator=generator)]
        for batch_rows in torch.split(order, train.batch_size):
            step += 1
            schedule.on_step(step)
            batch = features.batch(batch_rows, with_graphs=False)
            loss, _ = loss_fn(model(batch), batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            average.update(model, step)
        outputs = raw_outputs(
            average.model, features, split["val"], batch_size=VALIDATION_BATCH, device=torch.device("cpu")
        )
        loss_fn(outputs, features.labels[split["val"]])
    return time.perf_counter() - started


def guard_and_monitor_cost(steps_per_epoch: int, step_seconds: float) -> None:
    """The memory report and the guard's own work, timed alone, as a share of a step."""
    repeats = 2000
    started = time.perf_counter()
    for _ in range(repeats):
        memory_report(torch.device("cpu"))
    report = (time.perf_counter() - started) / repeats
    loss, norm = torch.tensor([0.5]), torch.tensor(1.0)
    started = time.perf_counter()
    for _ in range(repeats):  # what the guard adds per step: read the loss and the norm, test them
        _ = math.isfinite(float(loss[0])) and math.isfinite(float(norm))
    guard = (time.perf_counter() - started) / repeats
    per_step = guard + report / steps_per_epoch  # one report per epoch (and per 10 steps on a terminal)
    print(f"memory report {report * 1e6:.0f} us per call; guard {guard * 1e6:.1f} us per step")
    print(
        f"guard + monitor per step {per_step * 1e6:.1f} us = {100 * per_step / step_seconds:.3f}% of a step"
    )
    terminal = guard + report / 10
    print(f"  with the progress bar's memory figures on a terminal: {100 * terminal / step_seconds:.3f}%")


def tracking_cost(epoch_seconds: float) -> None:
    """One epoch's TensorBoard figures, written and flushed, as a share of an epoch."""
    row = {"epoch": 1, "lr": 1e-3, "samples_per_s": 900.0, "rss_gib": 0.5, "peak_rss_gib": 0.6}
    row |= {f"{split}_{name}": 0.5 for split in ("train", "val") for name in ("loss", "acc", "f1", "ece")}
    repeats = 200
    with tempfile.TemporaryDirectory(prefix=".tracking-bench-", dir=".") as scratch:
        epoch_log = EpochLog(Path(scratch), ["tensorboard"], resume_after_epoch=0)
        started = time.perf_counter()
        for epoch in range(1, repeats + 1):
            epoch_log.write(row | {"epoch": epoch})
        per_epoch = (time.perf_counter() - started) / repeats
        epoch_log.close()
    share = 100 * per_epoch / epoch_seconds
    print(f"TensorBoard: {per_epoch * 1e3:.2f} ms per epoch = {share:.4f}% of an epoch")


def peak_rss_of_default_training(epochs: int, data_dir: str) -> None:
    with tempfile.TemporaryDirectory(prefix=".rss-bench-", dir=".") as scratch:
        command = [sys.executable, "-m", "topoclass", "-q", "train", "--data-dir", data_dir]
        command += ["--epochs", str(epochs), "--run-dir", f"{scratch}/run", "--resume", "never"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run(command, check=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    peak = max(peak, before) * 1024
    print(f"peak RSS of `topoclass train` ({epochs} epochs, default config): {peak / 2**30:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TOPOCLASS_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss-epochs", type=int, default=3)
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or set TOPOCLASS_DATA_DIR")
    config = load_config(
        None, {"data.data_dir": args.data_dir, "train.epochs": args.epochs, "train.progress_bar": False}
    )
    prepared = prepare_data(config)
    split = {k: torch.as_tensor(v) for k, v in make_split(config, prepared).items()}
    import topoclass.metrics  # noqa: F401  (scikit-learn: imported once, outside the timed runs)

    times: dict[str, list[float]] = {"trainer": [], "loop": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix=".overhead-bench-", dir=".") as scratch:
            times["trainer"].append(trainer_run(config, prepared, split, Path(scratch)))
        times["loop"].append(minimal_run(config, prepared, split))
    trainer, loop = (statistics.median(times[k]) for k in ("trainer", "loop"))
    steps = math.ceil(len(split["train"]) / config.train.batch_size)
    print(f"{args.epochs} epochs, {steps} steps each, median of {args.repeats} alternating runs:")
    print(f"trainer {trainer:.1f} s, minimal loop {loop:.1f} s: ratio {trainer / loop:.3f} (target <= 1.05)")
    guard_and_monitor_cost(steps, loop / (args.epochs * steps))
    if wanted_loggers(None):
        tracking_cost(loop / args.epochs)
    peak_rss_of_default_training(args.rss_epochs, args.data_dir)


if __name__ == "__main__":
    main()
