"""Evaluating a finished run on its test split, beside the gradient-boosting baseline."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import torch

from topoclass.config import Config
from topoclass.data.prepare import PreparedDataset
from topoclass.evaluation.baseline import fit_and_evaluate_baseline
from topoclass.evaluation.metrics import evaluate_tasks
from topoclass.evaluation.predict import load_run
from topoclass.evaluation.report import format_results_table, write_evaluation
from topoclass.model.inference import raw_outputs, to_probabilities
from topoclass.train.run import RunPaths, load_or_make_split, prepare_data

logger = logging.getLogger(__name__)


def evaluate_run(
    run_dir: Path, *, with_baseline: bool = True, split_name: str = "test"
) -> tuple[dict[str, Any], str]:
    """Metrics of the run's best model (and the baseline) on a split; writes JSON and figures."""
    run = load_run(run_dir)
    data = prepare_data(run.config)
    split = load_or_make_split(run.config, data, run.paths)
    rows = split[split_name]
    outputs = raw_outputs(run.model, data.features, rows, batch_size=1024, device=run.device)
    labels = data.features.labels[rows].numpy()
    results: dict[str, Any] = {
        "neural": evaluate_tasks(data.features.tasks, labels, to_probabilities(outputs))
    }
    if with_baseline:
        results.update(_baselines(run.config, data, split, split_name))
    history = _read_history(run.paths.root / "metrics.jsonl")
    written = write_evaluation(run.paths.root / "evaluation", results, history)
    table = format_results_table(results)
    (run.paths.root / "evaluation" / "results.md").write_text(table + "\n")
    logger.info("Evaluation written to %s", written["metrics"].parent)
    return results, table


def _baselines(
    config: Config, data: PreparedDataset, split: dict[str, torch.Tensor], split_name: str
) -> dict[str, Any]:
    """The tree baseline, plus one that also gets the cell facts when the run uses structures."""
    fit = functools.partial(
        fit_and_evaluate_baseline,
        data.features,
        split,
        seed=config.train.seed,
        eval_split=split_name,
        use_structure=config.data.use_structure,  # the same descriptor columns as the network
    )
    results = {"baseline": fit()}
    if config.data.use_structure and data.features.graphs is not None:
        results["baseline_cell_facts"] = fit(with_cell_facts=True)
    return results


def _read_history(path: Path) -> list[dict[str, Any]] | None:
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_baseline(config: Config, split_name: str = "test") -> tuple[dict[str, Any], str]:
    """Baseline metrics on the split of the run a config describes (made and saved if new)."""
    paths = RunPaths.for_config(config)
    paths.root.mkdir(parents=True, exist_ok=True)
    data = prepare_data(config)
    split = load_or_make_split(config, data, paths)
    results = _baselines(config, data, split, split_name)
    out = paths.root / "baseline.json"
    out.write_text(json.dumps(results, indent=2))
    logger.info("Baseline metrics written to %s", out)
    return results, format_results_table(results)
