"""What does each modality add? Composition + symmetry model, full multimodal model and the
gradient-boosting baselines, side by side on one split of a structure dataset.

Both neural runs and the baselines use the same formula-grouped split (same dataset,
same split seed), so the table compares like with like. The second baseline also gets
the cell facts (electrons and atoms per cell) that the structure encoder is given.

Usage: ``python benchmarks/compare_models.py [--data-dir DIR] [--dataset tqc2020] [--epochs 30]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from cli_runner import topoclass

from topoclass.app.report import format_results_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TOPOCLASS_DATA_DIR"))
    parser.add_argument("--dataset", default="tqc2020")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir or set TOPOCLASS_DATA_DIR")
    env = {**os.environ, "TOPOCLASS_DATA_DIR": str(Path(args.data_dir).resolve())}
    common = [
        "--dataset",
        args.dataset,
        "--epochs",
        str(args.epochs),
        "--resume",
        "never",
        "--set",
        "train.progress_bar=false",
    ]
    runs = tuple(args.out / f"{args.dataset}-{kind}" for kind in ("composition", "structure"))
    results = compare_modalities(common, runs, ("composition+symmetry", "multimodal (+structure)"), env)
    print(format_results_table(results))


def compare_modalities(
    train_args: list[str], runs: tuple[Path, Path], names: tuple[str, str], env: dict[str, str]
) -> dict[str, dict]:
    """Train into fresh run folders without, then with structures; test metrics of both networks and of
    the two tree references (fitted in the structure run's evaluation)."""
    results = {}
    for name, run, extra in zip(names, runs, ([], ["--use-structure"]), strict=True):
        shutil.rmtree(run, ignore_errors=True)
        _, seconds = topoclass(["-q", "train", *train_args, *extra, "--run-dir", str(run)], env)
        print(f"{name}: trained in {seconds / 60:.1f} min", flush=True)
        topoclass(["-q", "evaluate", str(run), *([] if extra else ["--no-baseline"])], env)
        metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
        results[name] = metrics["neural"]
        if "baseline" in metrics:
            results["gradient boosting"] = metrics["baseline"]
            results["gradient boosting + cell facts"] = metrics["baseline_cell_facts"]
    return results


if __name__ == "__main__":
    main()
