"""Which training choices move the neural model on Tang 2019? One row per variant, val and test.

Every variant trains the default model on the default dataset with one change (``--set`` overrides),
on the same formula-grouped split, and is evaluated on the validation split (what a choice
may be made on) and the test split (what is reported). The gradient-boosting baseline is
evaluated once, on both splits, as the reference row. Variants run one after another:
two jobs sharing a small machine only slow each other down.

Usage: ``python benchmarks/tang_ablations.py [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from cli_runner import topoclass

TASK_WEIGHTS = (
    "data.tasks=[{name: topological, classes: [trivial, topological]},"
    " {name: topo_class, classes: [trivial, TI, TCI, semimetal], weight: 0.25}]"
)

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "seed 1": ["--seed", "1"],
    "seed 2": ["--seed", "2"],
    "15 epochs": ["--epochs", "15"],
    "20 epochs": ["--epochs", "20"],
    "lr 1e-3, 50 epochs, patience 15": ["--lr", "0.001", "--epochs", "50", "--set", "train.patience=15"],
    "hidden 64": ["--set", "model.hidden_dim=64"],
    "dropout 0": ["--set", "model.dropout=0.0"],
    "weight decay 0.05": ["--set", "train.weight_decay=0.05"],
    "no weight averaging (EMA off)": ["--set", "train.ema_decay=0"],
    "batch 32": ["--set", "train.batch_size=32"],
    "batch 512, 60 epochs, patience 20": [
        "--set",
        "train.batch_size=512",
        "--epochs",
        "60",
        "--set",
        "train.patience=20",
    ],
    "topo_class loss weight 0.25": ["--set", TASK_WEIGHTS],
}


def metrics_of(run: Path, split: str, env: dict[str, str], *, baseline: bool) -> dict:
    topoclass(["evaluate", str(run), "--split", split, *([] if baseline else ["--no-baseline"])], env)
    return json.loads((run / "evaluation" / "metrics.json").read_text())


def row(name: str, val: dict, test: dict) -> str:
    cells = [
        val["topological"]["accuracy"],
        test["topological"]["accuracy"],
        val["topo_class"]["macro_f1"],
        test["topo_class"]["macro_f1"],
    ]
    return f"| {name} | " + " | ".join(f"{value:.3f}" for value in cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TOPOCLASS_DATA_DIR"))
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="run just these variants")
    parser.add_argument("--out", type=Path, default=Path("runs/tang-ablations"))
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or set TOPOCLASS_DATA_DIR")
    env = {**os.environ, "TOPOCLASS_DATA_DIR": str(Path(args.data_dir).resolve())}
    print(
        "| variant | val topological accuracy | test topological accuracy | val topo_class macro-F1 "
        "| test topo_class macro-F1 |"
    )
    print("|---|---:|---:|---:|---:|", flush=True)
    for number, name in enumerate(args.only or VARIANTS):
        run = args.out / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        train = ["train", "--resume", "never", "--run-dir", str(run)]
        topoclass([*train, "--set", "train.progress_bar=false", *VARIANTS[name]], env)
        with_baseline = number == 0
        val = metrics_of(run, "val", env, baseline=with_baseline)
        test = metrics_of(run, "test", env, baseline=with_baseline)
        print(row(name, val["neural"], test["neural"]), flush=True)
        if with_baseline:
            print(row("gradient boosting (reference)", val["baseline"], test["baseline"]), flush=True)


if __name__ == "__main__":
    main()
