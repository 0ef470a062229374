"""Evaluating a trained run on a split of its data: every source, the served choice, the baseline."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from topoclass.app.baseline import fit_and_evaluate_baseline
from topoclass.app.predict import load_run
from topoclass.app.prepare import RunData, make_split, prepare_data, run_data
from topoclass.app.report import format_results_table, format_served, plot_reliability, write_evaluation
from topoclass.app.runs import RunLayout
from topoclass.app.torch_network import torch_network
from topoclass.app.training import fit_serving_rules
from topoclass.config import Config, config_yaml
from topoclass.data.split import load_split, save_split
from topoclass.files import atomic_write
from topoclass.inference.rules import SOURCES
from topoclass.model.inference import predictions, raw_outputs
from topoclass.tasks import score_tasks
from topoclass.trainer.loop import VALIDATION_BATCH

logger = logging.getLogger(__name__)


def evaluate_run(
    run_dir: Path, *, with_baseline: bool = True, split_name: str = "test", accept_data_change: bool = False
) -> tuple[dict[str, Any], str]:
    """Metrics on a split of the run's data: the network as trained, each source under its validation-fitted
    rules (network, trees, blend), the served choice and the baseline; figures, JSON and a report."""
    run = load_run(run_dir, backend="torch")
    network = torch_network(run)
    data = run_data(run.config, run.layout, resuming=True, accept_data_change=accept_data_change)
    serving = run.serving or fit_serving_rules(run.layout, data)
    features, tasks = data.prepared.features, data.prepared.features.tasks
    split = data.split_tensors()
    rows = split[split_name]
    outputs = raw_outputs(network.model, features, rows, batch_size=VALIDATION_BATCH, device=network.device)
    labels = features.labels[rows].numpy()
    subset = features.subset(rows)
    network_outputs = {name: values.numpy() for name, values in outputs.items()}
    sources = serving.source_outputs(
        tasks, subset.arrays(), network_outputs, use_structure=run.config.data.use_structure
    )
    results: dict[str, Any] = {"network": score_tasks(tasks, labels, predictions(tasks, outputs))}
    served_probabilities: dict[str, Any] = {}
    for source in (*SOURCES, "served"):
        choice = {t.name: serving.rules[t.name].predictor if source == "served" else source for t in tasks}
        chosen = {t.name: sources[t.name][choice[t.name]] for t in tasks}
        decisions = serving.decide(tasks, sources, choice)
        results[source if source == "served" else f"{source} + rules"] = score_tasks(
            tasks, labels, chosen, decisions
        )
        if source == "served":
            served_probabilities = chosen
    if with_baseline:
        results.update(_baselines(run.config, data, split, split_name))
    out_dir = run.layout.evaluation_dir()
    write_evaluation(out_dir, results, _read_history(run.layout.metrics_file()))
    for task in tasks:
        known = ~np.isnan(labels[:, tasks.index(task)])
        if task.type == "classification" and known.any():
            plot_reliability(
                served_probabilities[task.name][known],
                labels[known, tasks.index(task)].astype(int),
                f"served ({serving.rules[task.name].predictor}): {task.name}",
                out_dir / f"reliability_served_{task.name}.png",
            )
    choices = {t.name: serving.rules[t.name].predictor for t in tasks}
    table = format_results_table(results) + "\n\n" + format_served(results["served"], choices)
    atomic_write(out_dir / "results.md", table + "\n", durable=False)
    logger.info("Evaluation of %s written to %s", run.checkpoint, out_dir)
    return results, table


def _baselines(
    config: Config, data: RunData, split: dict[str, torch.Tensor], split_name: str
) -> dict[str, Any]:
    """The tree baseline, plus one that also gets the cell facts when the run uses structures."""
    features = data.prepared.features
    fit = functools.partial(
        fit_and_evaluate_baseline,
        features,
        split,
        seed=config.train.seed,
        eval_split=split_name,
        use_structure=config.data.use_structure,  # the same descriptor columns as the network
    )
    results = {"baseline": fit()}
    if config.data.use_structure and features.graphs is not None:
        results["baseline_cell_facts"] = fit(with_cell_facts=True)
    return results


def _read_history(path: Path) -> list[dict[str, Any]] | None:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None


def run_baseline(config: Config, split_name: str = "test") -> tuple[dict[str, Any], str]:
    """Baseline metrics on the split of the run a config describes (made and saved if new)."""
    layout = RunLayout.for_config(config)
    prepared = prepare_data(config)
    if layout.split_file().is_file():
        split = load_split(layout.split_file(), prepared.features.ids)
    else:
        split = make_split(config, prepared)
        layout.root.mkdir(parents=True, exist_ok=True)
        save_split(layout.split_file(), split, prepared.features.ids)
        atomic_write(layout.config_file(), config_yaml(config))  # the directory is a run a trainer may use
    data = RunData(prepared, split, split_is_new=False, fingerprint={})
    results = _baselines(config, data, data.split_tensors(), split_name)
    atomic_write(layout.baseline_file(), json.dumps(results, indent=2))
    logger.info("Baseline metrics written to %s", layout.baseline_file())
    return results, format_results_table(results)
