"""Two Gloo processes against one, on this machine: throughput, scaling efficiency, gradient traffic.

Both train the default model on the default dataset for the same epochs with the same global
batch (one process: ``batch_size`` B; two: B/2 each). Wall time is measured from the first
epoch's start to the end of training, in fresh processes (the first started with plain
``python -m topoclass``, the second with ``torchrun``), alternating. On a 2-core machine the two
processes share the cores the single one already had, so the efficiency says what the
coordination costs, not what a second GPU would give. The gradient bytes all-reduced per
step (every parameter, float32) are what a reader can set against NCCL's bandwidth.

Usage: ``python benchmarks/scaling.py [--epochs 3] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from topoclass.config import load_config
from topoclass.data.datasets.tang2019 import tang2019_tasks
from topoclass.trainer.loop import build_model


def train_seconds(command: list[str], env: dict[str, str]) -> float:
    """Seconds from 'Starting epoch 1' to the end, from the log's timestamps (the first process's)."""
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    match = re.search(r"Checkpointing took [\d.]+ s of ([\d.]+) s training", result.stdout)
    if match is None:
        sys.exit(f"no training time in the output of {' '.join(command)}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TOPOCLASS_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or set TOPOCLASS_DATA_DIR")
    env = {**os.environ, "TOPOCLASS_DATA_DIR": str(Path(args.data_dir).resolve())}
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix=".scaling-bench-", dir=".") as scratch:
        for repeat in range(args.repeats):
            for world in (1, 2):
                run = Path(scratch) / f"run-{world}-{repeat}"
                train = ["train", "--epochs", str(args.epochs), "--run-dir", str(run), "--resume", "never"]
                train += ["--batch-size", str(args.batch_size // world), "--set", "train.progress_bar=false"]
                if world == 1:
                    command = [sys.executable, "-m", "topoclass", *train]
                else:
                    torchrun = str(Path(sys.executable).with_name("torchrun"))
                    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "topoclass", *train]
                times[world].append(train_seconds(command, env))
    one, two = statistics.median(times[1]), statistics.median(times[2])
    model = build_model(load_config(None, {}), tang2019_tasks())
    gradient_bytes = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    print(f"{args.epochs} epochs, global batch {args.batch_size}, median of {args.repeats}:")
    print(
        f"1 process {one:.1f} s, 2 Gloo processes {two:.1f} s: speed-up {one / two:.2f}x, "
        f"scaling efficiency {one / (2 * two):.0%}"
    )
    print(
        f"gradient all-reduced per optimizer step: {gradient_bytes / 1e6:.2f} MB "
        f"({gradient_bytes // 4:,} float32 parameters)"
    )


if __name__ == "__main__":
    main()
