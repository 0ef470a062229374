"""Is the gap between the network and the trees on Tang 2019 more than one split's luck?

Trains the default model on several formula-grouped splits (``data.split.seed``) and
evaluates it beside the gradient-boosting baseline fitted on the same split. Prints one
row per split and the mean and spread of the accuracy difference on ``topological``.

Usage: ``python benchmarks/tang_split_seeds.py [--seeds 0 1 2 3 4]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from cli_runner import topoclass
from tang_ablations import metrics_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TOPOCLASS_DATA_DIR"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("runs/tang-split-seeds"))
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or set TOPOCLASS_DATA_DIR")
    env = {**os.environ, "TOPOCLASS_DATA_DIR": str(Path(args.data_dir).resolve())}
    print("| split seed | split | neural accuracy | trees accuracy | difference |")
    print("|---|---|---:|---:|---:|", flush=True)
    differences: dict[str, list[float]] = {"val": [], "test": []}
    for seed in args.seeds:
        run = args.out / f"split-{seed}"
        train = ["train", "--resume", "never", "--run-dir", str(run), "--set", "train.progress_bar=false"]
        topoclass([*train, "--set", f"data.split.seed={seed}"], env)
        for split in ("val", "test"):
            metrics = metrics_of(run, split, env, baseline=True)
            neural = metrics["neural"]["topological"]["accuracy"]
            trees = metrics["baseline"]["topological"]["accuracy"]
            differences[split].append(neural - trees)
            print(f"| {seed} | {split} | {neural:.3f} | {trees:.3f} | {neural - trees:+.3f} |", flush=True)
    for split, values in differences.items():
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"{split}: neural minus trees, mean {statistics.mean(values):+.4f}, sd {spread:.4f}")


if __name__ == "__main__":
    main()
