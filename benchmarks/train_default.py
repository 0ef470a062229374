"""Default training on a built-in dataset, end to end, with the figures the README reports.

In one run, with a fresh featurization cache in a temporary folder, it measures:

- data loading: first time (featurize and cache) against second time (from the
  cache), and their ratio;
- ``topoclass train`` with the default config: wall time, and the share of it
  spent writing checkpoints (at the default cadence);
- resume: the time to find, verify, load and restore the final checkpoint;
- ``topoclass evaluate``: test-split metrics of the neural model beside the
  gradient-boosting baseline on the same split.

Usage: ``python benchmarks/train_default.py [--data-dir DIR] [--dataset tang2019] [--load-only]
[-- extra train args]`` (``--dataset tqc2020 --load-only`` measures the structure cache).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cli_runner import topoclass


def load_twice(dataset: str, env: dict[str, str]) -> tuple[float, float]:
    """Seconds to prepare the dataset with an empty cache, then again from the cache (fresh processes)."""
    code = (
        "import time; from topoclass.config import load_config;"
        "from topoclass.data.build import prepare_dataset;"
        f"c = load_config(None, {{'data.dataset': '{dataset}'}}); t = time.perf_counter();"
        "d = prepare_dataset(c.data); print(time.perf_counter() - t, d.from_cache)"
    )
    times = []
    for expect_cache in ("False", "True"):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        seconds, from_cache = out.stdout.split()
        assert from_cache == expect_cache, out.stdout
        times.append(float(seconds))
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TOPOCLASS_DATA_DIR"))
    parser.add_argument("--dataset", default="tang2019")
    parser.add_argument("--load-only", action="store_true", help="only compare first and cached data loading")
    parser.add_argument("extra", nargs="*", help="extra arguments for topoclass train")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or set TOPOCLASS_DATA_DIR")
    with tempfile.TemporaryDirectory(dir=".", prefix=".benchmark-") as scratch:
        env = {
            **os.environ,
            "TOPOCLASS_DATA_DIR": str(Path(args.data_dir).resolve()),
            "TOPOCLASS_CACHE_DIR": str(Path(scratch, "cache").resolve()),
        }
        first, second = load_twice(args.dataset, env)
        print(
            f"data loading: first (featurize) {first:.2f} s, second (cache) {second:.3f} s, "
            f"ratio {first / second:.1f}x"
        )
        if args.load_only:
            return

        run = Path(scratch, "run")
        train_args = [
            "train",
            "--dataset",
            args.dataset,
            "--run-dir",
            str(run),
            "--set",
            "train.progress_bar=false",
            *args.extra,
        ]
        out, wall = topoclass(train_args, env)
        share = re.search(r"Checkpointing took ([\d.]+) s of ([\d.]+) s training \(([\d.]+)%\)", out)
        print(f"training wall time (process, default config): {wall:.1f} s = {wall / 60:.2f} min")
        if share:
            print(f"checkpointing: {share[1]} s of {share[2]} s training = {share[3]}% (default cadence)")
        out, _ = topoclass([*train_args, "--resume", "auto"], env)
        resume = re.search(r"Resume \(find, verify, load, restore\) took ([\d.]+) s", out)
        print(f"resume (find, verify, load, restore): {resume[1] if resume else '?'} s")
        out, _ = topoclass(["evaluate", str(run)], env)
        print(out)


if __name__ == "__main__":
    main()
