"""The best answer a run can give: the network, the trees, or their blend, chosen per task on validation.

After training, a run fits gradient-boosted trees on the same features (early-stopped on
a formula-grouped slice of the training split, so validation stays untouched), then on
the validation split, per task:

- a temperature for each source (network, trees, and their linear pool, whose weight is
  fitted by validation log-loss), so the probabilities mean what they say;
- a logit adjustment (Menon et al., ICLR 2021): decisions are ``argmax log p - tau log prior``,
  ``tau`` chosen for validation macro-F1 (accuracy for two classes), which lifts the rare
  classes the argmax passes over;
- the source ``predict`` serves: the one with the best validation score.

A task with ``coarse_task`` is decided top-down: its class must belong to the coarse
task's decided class, so the two answers never contradict. Everything is saved in
``<run>/serving/`` (verified like a checkpoint: the trees in LightGBM's own text format,
gzipped, the rules as JSON, a SHA-256 manifest) and summarized in ``<run>/model_card.md``.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from topoclass import __version__
from topoclass.app.baseline import TREE_PARAMS
from topoclass.app.runs import RunLayout
from topoclass.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_blend_weight,
    fit_temperature,
)
from topoclass.checkpoint import storage
from topoclass.config import TaskConfig
from topoclass.data.clean import formula_key
from topoclass.data.featureset import FeatureSet
from topoclass.errors import CheckpointError
from topoclass.files import atomic_write
from topoclass.inference.rules import (
    EPS,
    SOURCES,
    Serving,
    TaskRule,
    adjusted_scores,
    tree_predictions,
    trees_file,
)
from topoclass.inference.tree_inputs import tree_inputs
from topoclass.model.backbones import backbone_info, used_backbone

logger = logging.getLogger(__name__)

_TAUS = np.round(np.arange(0.0, 2.01, 0.05), 2)


def fit_trees(features: FeatureSet, train_rows: np.ndarray, x: np.ndarray, *, seed: int) -> dict[str, Any]:
    """One LightGBM booster per task on the training rows. The number of trees is found by early
    stopping on a formula-grouped sixth of them, then the trees are refitted on all of them:
    validation is never seen, so the rules fitted on it later are not fitted to a leak."""
    import lightgbm
    from sklearn.model_selection import GroupShuffleSplit

    labels = features.labels.numpy()
    groups = np.array([formula_key(f) for f in features.formulas])
    boosters = {}
    for column, task in enumerate(features.tasks):
        rows = train_rows[~np.isnan(labels[train_rows, column])]
        inner, held = next(
            GroupShuffleSplit(n_splits=1, test_size=1 / 6, random_state=seed).split(rows, groups=groups[rows])
        )
        params = {**TREE_PARAMS, "random_state": seed}
        model = _tree_model(task, params)
        model.fit(
            x[rows[inner]],
            labels[rows[inner], column],
            eval_X=x[rows[held]],
            eval_y=labels[rows[held], column],
            callbacks=[lightgbm.early_stopping(100, verbose=False)],
        )
        trees = model.best_iteration_ or TREE_PARAMS["n_estimators"]
        final = _tree_model(task, {**params, "n_estimators": trees})
        final.fit(x[rows], labels[rows, column])
        boosters[task.name] = final.booster_
        logger.info(
            "Trees for %s: %d (found on a formula-grouped sixth of the training split)", task.name, trees
        )
    return boosters


def _tree_model(task: TaskConfig, params: dict[str, Any]) -> Any:
    import lightgbm

    if task.type == "classification":
        return lightgbm.LGBMClassifier(**params)
    return lightgbm.LGBMRegressor(**params)


def fit_serving(
    features: FeatureSet,
    split: dict[str, np.ndarray],
    val_outputs: dict[str, np.ndarray],
    *,
    use_structure: bool,
    seed: int,
) -> Serving:
    """Trees on the training rows, then every task's rule on the validation rows.

    ``val_outputs`` are the network's raw outputs (logits, values) on ``split["val"]``, in that order.
    """
    with_cell_facts = use_structure and features.graphs is not None
    x = tree_inputs(features.arrays(), use_structure=use_structure, with_cell_facts=with_cell_facts)
    boosters = fit_trees(features, split["train"], x, seed=seed)
    val = split["val"]
    trees = {task.name: tree_predictions(task, boosters[task.name], x[val]) for task in features.tasks}
    labels = features.labels.numpy()
    rules = fit_rules(features.tasks, labels[val], labels[split["train"]], val_outputs, trees)
    return Serving(rules, boosters, with_cell_facts)


def fit_rules(
    tasks: list[TaskConfig],
    labels: np.ndarray,
    train_labels: np.ndarray,
    network: dict[str, np.ndarray],
    trees: dict[str, np.ndarray],
) -> dict[str, TaskRule]:
    """Every task's rule from validation outputs: ``network`` raw logits (values), ``trees`` probabilities."""
    rules = {}
    for column, task in enumerate(tasks):
        known = ~np.isnan(labels[:, column])
        y = labels[known, column]
        if task.type != "classification":
            rules[task.name] = _regression_rule(y, network[task.name][known], trees[task.name][known])
            continue
        counts = np.bincount(
            train_labels[~np.isnan(train_labels[:, column]), column].astype(int),
            minlength=len(task.classes or []),
        )
        prior = (counts + 1) / (counts + 1).sum()
        rules[task.name] = _classification_rule(
            y.astype(int), network[task.name][known], trees[task.name][known], prior
        )
    return rules


def _classification_rule(
    y: np.ndarray, logits: np.ndarray, tree_probs: np.ndarray, prior: np.ndarray
) -> TaskRule:
    classes = logits.shape[1]
    temperature = {"network": fit_temperature(logits, y)}
    tree_logits = np.log(np.clip(tree_probs, EPS, 1))
    temperature["trees"] = fit_temperature(tree_logits, y)
    net, tree = (
        apply_temperature(logits, temperature["network"]),
        apply_temperature(tree_logits, temperature["trees"]),
    )
    weight = fit_blend_weight(net, tree, y)
    pool = np.log(np.clip(weight * net + (1 - weight) * tree, EPS, 1))
    temperature["blend"] = fit_temperature(pool, y)
    probabilities = {"network": net, "trees": tree, "blend": apply_temperature(pool, temperature["blend"])}
    metric = "macro_f1" if classes > 2 else "accuracy"
    tau, validation = {}, {}
    for source, p in probabilities.items():
        scores = [
            _score(metric, y, adjusted_scores(p, list(prior), t).argmax(axis=1), classes) for t in _TAUS
        ]
        tau[source] = float(_TAUS[int(np.argmax(scores))])  # the smallest tau among the best
        decided = adjusted_scores(p, list(prior), tau[source]).argmax(axis=1)
        validation[source] = {
            "accuracy": _score("accuracy", y, decided, classes),
            "macro_f1": _score("macro_f1", y, decided, classes),
            "ece": expected_calibration_error(p, y),
            "log_loss": float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1)))),
        }
    best = max(SOURCES, key=lambda s: (validation[s][metric], -validation[s]["log_loss"]))
    return TaskRule(best, weight, temperature, tau, [float(v) for v in prior], validation)


def _regression_rule(y: np.ndarray, network: np.ndarray, trees: np.ndarray) -> TaskRule:
    grid = np.linspace(0, 1, 101)
    weight = float(grid[int(np.argmin([np.mean((w * network + (1 - w) * trees - y) ** 2) for w in grid]))])
    values = {"network": network, "trees": trees, "blend": weight * network + (1 - weight) * trees}
    validation = {source: {"mae": float(np.mean(np.abs(v - y)))} for source, v in values.items()}
    best = min(SOURCES, key=lambda s: validation[s]["mae"])
    return TaskRule(best, weight, validation=validation)


def _score(metric: str, y: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    from sklearn.metrics import f1_score

    if metric == "accuracy":
        return float(np.mean(predicted == y))
    return float(f1_score(y, predicted, labels=list(range(classes)), average="macro", zero_division=0))


# -- on disk ---------------------------------------------------------------------------------------


def save_serving(
    layout: RunLayout, serving: Serving, *, checkpoint: str, fitted_for: dict[str, str] | None = None
) -> Path:
    """Write ``<run>/serving/`` (rules, trees, manifest) and ``<run>/model_card.md``; ``fitted_for``
    names the weights and data the rules were fitted with (see :func:`serving_fitted_for`)."""
    path = layout.serving_dir()
    trees = {  # mtime 0: the same trees give the same bytes
        trees_file(name): gzip.compress(booster.model_to_string().encode(), mtime=0)
        for name, booster in serving.trees.items()
    }
    metadata = {
        "package_version": __version__,
        "checkpoint": checkpoint,
        "use_cell_facts": serving.use_cell_facts,
        "rules": {name: asdict(rule) for name, rule in serving.rules.items()},
        "fitted_for": fitted_for,
    }
    with storage.CheckpointStorage() as writer:
        writer.write(path, {}, metadata=metadata, epoch=0, step=None, extra_files=trees)
    atomic_write(layout.model_card_file(), model_card(layout, serving, checkpoint))
    return path


def serving_fitted_for(layout: RunLayout) -> dict[str, str] | None:
    """The weights and data the run's serving rules were fitted with, as saved; None when the run
    has no intact rules (or they predate the record)."""
    path = layout.serving_dir()
    if not path.is_dir():
        return None
    try:
        storage.verify(path)
        return storage.read_metadata(path).get("fitted_for")
    except (CheckpointError, OSError):
        return None


def model_card(layout: RunLayout, serving: Serving, checkpoint: str) -> str:
    """A short Markdown card: what serves each task, and the validation figures that chose it."""
    lines = [
        f"# Model card: {layout.root.name}",
        "",
        f"topoclass {__version__}; network weights from `{checkpoint}`; trees and rules fitted on the",
        "validation split (`serving/`). `topoclass predict` serves, per task, the source below;",
        "`--predictor network|trees|blend` overrides it.",
        "",
        *_structure_encoder_lines(layout),
        "| task | served | blend weight of the network | " + " | ".join(f"val {s}" for s in SOURCES) + " |",
        "|---|---|---:|" + "---:|" * len(SOURCES),
    ]
    for name, rule in serving.rules.items():
        cells = []
        for source in SOURCES:
            figures = rule.validation[source]
            cells.append(", ".join(f"{k} {v:.3f}" for k, v in figures.items() if k != "log_loss"))
        lines.append(
            f"| {name} | **{rule.predictor}** | {rule.blend_weight:.2f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def _structure_encoder_lines(layout: RunLayout) -> list[str]:
    """The pretrained backbone the run's structures went through, when it has one."""
    config = layout.read_config()
    name = used_backbone(config)
    info = backbone_info(name) if name is not None else None
    if info is None:
        return []
    if config.data.use_structure and config.model.structure_encoder == name:
        how = "fine-tuned" if config.model.backbone_lr is not None else "frozen"
        return [f"Structure encoder: {info.describe()}, {how}.", ""]
    return [f"Element vectors from {info.describe()}.", ""]
