"""Training throughput when another process takes a core: the thread policy against PyTorch's default.

Each measurement is a fresh process that trains the default Tang model for a fixed number of
steps (same batches) and reports its median step time. It runs with topoclass's thread policy
(``train.num_threads: 0``: the CPUs this process was given, one left free on a shared machine)
or with PyTorch's own default (one thread per core), on a quiet machine and with a CPU hog (a
busy loop the benchmark starts beside it). The ratio that matters is throughput with the hog
against throughput on the quiet machine, for each side.

Usage: ``python benchmarks/threads.py [--steps 40] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

HOG = "while True: pass"


def child(policy: str, steps: int, data_dir: str) -> None:
    """Train ``steps`` steps and print the median seconds per step (the parent reads it)."""
    import torch

    from topoclass.app.prepare import prepare_data
    from topoclass.config import load_config
    from topoclass.threads import configure_threads
    from topoclass.trainer.loop import adamw, build_model
    from topoclass.trainer.loss import MultitaskLoss

    if policy == "topoclass":
        configure_threads(0)
    config = load_config(None, {"data.data_dir": data_dir})
    features = prepare_data(config).features
    torch.manual_seed(0)
    model = build_model(config, features.tasks)
    optimizer = adamw(model, lr=1e-3, weight_decay=0.01)
    loss_fn = MultitaskLoss(features.tasks, features.labels, focal_gamma=2.0)
    generator = torch.Generator().manual_seed(1)
    times = []
    for index in range(steps + 5):
        rows = torch.randperm(len(features), generator=generator)[: config.train.batch_size]
        started = time.perf_counter()
        batch = features.batch(rows, with_graphs=False)
        loss, _ = loss_fn(model(batch), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if index >= 5:  # the first steps warm up the allocator and the kernels
            times.append(time.perf_counter() - started)
    print(f"{torch.get_num_threads()} {statistics.median(times)}")


@contextmanager
def cpu_hog(on: bool) -> Iterator[None]:
    hog = subprocess.Popen([sys.executable, "-c", HOG]) if on else None
    try:
        yield
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def measure(policy: str, hog: bool, steps: int, data_dir: str) -> tuple[int, float]:
    with cpu_hog(hog):
        out = subprocess.run(
            [sys.executable, __file__, "--child", policy, "--steps", str(steps), "--data-dir", data_dir],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    return int(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TOPOCLASS_DATA_DIR"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=["topoclass", "pytorch"])
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or set TOPOCLASS_DATA_DIR")
    if args.child:
        child(args.child, args.steps, args.data_dir)
        return
    cases = [(policy, hog) for policy in ("topoclass", "pytorch") for hog in (False, True)]
    seconds: dict[tuple[str, bool], list[float]] = {case: [] for case in cases}
    threads: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved, so a change in the machine touches every case
        for policy, hog in cases:
            threads[policy], step = measure(policy, hog, args.steps, args.data_dir)
            seconds[(policy, hog)].append(step)
    print(f"{os.cpu_count()} CPUs; median step time of {args.steps} steps, median of {args.repeats} runs:")
    for policy in ("topoclass", "pytorch"):
        quiet, busy = (statistics.median(seconds[(policy, hog)]) for hog in (False, True))
        print(
            f"{policy:9s} policy ({threads[policy]} thread(s)): quiet {quiet * 1e3:.1f} ms, "
            f"with a CPU hog {busy * 1e3:.1f} ms: throughput {quiet / busy:.2f}x of quiet"
        )
    quiet_ratio = statistics.median(seconds[("pytorch", False)]) / statistics.median(
        seconds[("topoclass", False)]
    )
    print(f"quiet machine: the policy runs at {quiet_ratio:.2f}x PyTorch's default")


if __name__ == "__main__":
    main()
