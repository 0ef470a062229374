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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from topoclass import __version__
from topoclass.app.baseline import TREE_PARAMS, tree_inputs
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
from topoclass.model.backbones import backbone_info, used_backbone

logger = logging.getLogger(__name__)

SOURCES = ("network", "trees", "blend")
_TAUS = np.round(np.arange(0.0, 2.01, 0.05), 2)
_EPS = 1e-12


@dataclass
class TaskRule:
    """How one task is served."""

    predictor: str  # "network", "trees" or "blend"
    blend_weight: float  # the network's weight in the pool
    temperature: dict[str, float] = field(default_factory=dict)  # per source (classification)
    tau: dict[str, float] = field(default_factory=dict)  # logit adjustment per source (classification)
    prior: list[float] = field(default_factory=list)  # training class frequencies
    validation: dict[str, dict[str, float]] = field(default_factory=dict)  # per source


@dataclass
class Serving:
    """Every task's rule and its trees, as fitted on a run's validation split."""

    rules: dict[str, TaskRule]
    tree_models: dict[str, Any] | Callable[[], dict[str, Any]]  # or how to load them when first needed
    use_cell_facts: bool

    @property
    def trees(self) -> dict[str, Any]:
        """The LightGBM boosters per task (loaded on first use: importing LightGBM costs a second)."""
        if callable(self.tree_models):
            self.tree_models = self.tree_models()
        return self.tree_models

    def source_outputs(
        self,
        tasks: list[TaskConfig],
        features: FeatureSet,
        network: dict[str, np.ndarray],
        *,
        use_structure: bool,
        only: dict[str, str] | None = None,
    ) -> dict[str, dict[str, np.ndarray]]:
        """Calibrated probabilities (or values) of each source, per task (with ``only``, of just the
        source given per task: the trees are not needed to serve the network)."""
        need_trees = only is None or any(source != "network" for source in only.values())
        x = (
            tree_inputs(features, use_structure=use_structure, with_cell_facts=self.use_cell_facts)
            if need_trees
            else None
        )
        out: dict[str, dict[str, np.ndarray]] = {}
        for task in tasks:
            rule = self.rules[task.name]
            if x is None:
                net = network[task.name]
                if task.type == "classification":
                    net = apply_temperature(net, rule.temperature["network"])
                out[task.name] = {"network": net}
                continue
            trees = _tree_predictions(task, self.trees[task.name], x)
            if task.type != "classification":
                blend = rule.blend_weight * network[task.name] + (1 - rule.blend_weight) * trees
                out[task.name] = {"network": network[task.name], "trees": trees, "blend": blend}
                continue
            net = apply_temperature(network[task.name], rule.temperature["network"])
            tree = apply_temperature(np.log(np.clip(trees, _EPS, 1)), rule.temperature["trees"])
            pool = rule.blend_weight * net + (1 - rule.blend_weight) * tree
            blend = apply_temperature(np.log(np.clip(pool, _EPS, 1)), rule.temperature["blend"])
            out[task.name] = {"network": net, "trees": tree, "blend": blend}
        return out

    def decide(
        self, tasks: list[TaskConfig], outputs: dict[str, dict[str, np.ndarray]], choice: dict[str, str]
    ) -> dict[str, np.ndarray]:
        """Class ids (or values) per task from the chosen sources, coarse tasks first (top-down)."""
        decisions: dict[str, np.ndarray] = {}
        ordered = sorted(tasks, key=lambda t: t.coarse_task is not None)
        for task in ordered:
            source, rule = choice[task.name], self.rules[task.name]
            values = outputs[task.name][source]
            if task.type != "classification":
                decisions[task.name] = values
                continue
            scores = adjusted_scores(values, rule.prior, rule.tau[source])
            if task.coarse_task in decisions and task.coarse_classes:
                coarse = next(t for t in tasks if t.name == task.coarse_task)
                allowed = _allowed(task, coarse)[decisions[coarse.name]]
                scores = np.where(allowed, scores, -np.inf)
            decisions[task.name] = scores.argmax(axis=1)
        return decisions


def not_applicable(tasks: list[TaskConfig], decisions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per task with ``applies_when``: the materials the other tasks' decisions put outside it."""
    by_name = {task.name: task for task in tasks}
    outside: dict[str, np.ndarray] = {}
    for task in tasks:
        for name, classes in (task.applies_when or {}).items():
            ids = [(by_name[name].classes or []).index(label) for label in classes]
            miss = ~np.isin(decisions[name], ids)
            outside[task.name] = outside[task.name] | miss if task.name in outside else miss
    return outside


def adjusted_scores(probabilities: np.ndarray, prior: list[float], tau: float) -> np.ndarray:
    """``log p - tau log prior``: the scores whose argmax is the decision."""
    return np.log(np.clip(probabilities, _EPS, 1)) - tau * np.log(np.clip(np.asarray(prior), _EPS, 1))


def _allowed(task: TaskConfig, coarse: TaskConfig) -> np.ndarray:
    """[coarse classes, fine classes]: which fine classes a coarse decision leaves open."""
    fine, parent = task.classes or [], task.coarse_classes or {}
    return np.array(
        [[parent[name] == coarse_class for name in fine] for coarse_class in coarse.classes or []]
    )


def _tree_predictions(task: TaskConfig, booster: Any, x: np.ndarray) -> np.ndarray:
    raw = np.asarray(booster.predict(x), dtype=float)
    if task.type != "classification":
        return raw
    classes = len(task.classes or [])
    if raw.ndim == 1:  # binary: the probability of class 1
        raw = np.stack([1 - raw, raw], axis=1)
    return raw[:, :classes]


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
    x = tree_inputs(features, use_structure=use_structure, with_cell_facts=with_cell_facts)
    boosters = fit_trees(features, split["train"], x, seed=seed)
    val = split["val"]
    trees = {task.name: _tree_predictions(task, boosters[task.name], x[val]) for task in features.tasks}
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
    tree_logits = np.log(np.clip(tree_probs, _EPS, 1))
    temperature["trees"] = fit_temperature(tree_logits, y)
    net, tree = (
        apply_temperature(logits, temperature["network"]),
        apply_temperature(tree_logits, temperature["trees"]),
    )
    weight = fit_blend_weight(net, tree, y)
    pool = np.log(np.clip(weight * net + (1 - weight) * tree, _EPS, 1))
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
            "log_loss": float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1)))),
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
        _trees_file(name): gzip.compress(booster.model_to_string().encode(), mtime=0)
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


def load_serving(layout: RunLayout) -> Serving | None:
    """The run's serving rules and trees, verified; None when the run has none (or they are damaged)."""
    path = layout.serving_dir()
    if not path.is_dir():
        return None
    try:
        storage.verify(path)
        metadata = storage.read_metadata(path)
        rules = {name: TaskRule(**rule) for name, rule in metadata["rules"].items()}
        texts = {name: gzip.decompress(storage.read_file(path, _trees_file(name))).decode() for name in rules}
    except (CheckpointError, KeyError, TypeError, ValueError, OSError) as error:
        logger.warning("Serving rules of %s unusable (%s): serving the network alone", layout.root, error)
        return None

    def load_trees() -> dict[str, Any]:
        import lightgbm

        return {name: lightgbm.Booster(model_str=text) for name, text in texts.items()}

    return Serving(rules, load_trees, bool(metadata.get("use_cell_facts")))


def _trees_file(task: str) -> str:
    return f"trees-{task}.txt.gz"


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


def predictions_for(
    serving: Serving | None,
    tasks: list[TaskConfig],
    features: FeatureSet,
    network_outputs: dict[str, torch.Tensor],
    *,
    use_structure: bool,
    predictor: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    """Served probabilities (or values), decisions and the source used, per task.

    Without serving rules (a run from before them), the network's softmax and argmax.
    """
    network = {name: out.float().numpy() for name, out in network_outputs.items()}
    if serving is None:
        if predictor not in (None, "network"):
            raise CheckpointError(
                f"this run has no trees to serve ('{predictor}'): run topoclass evaluate first"
            )
        probabilities = {
            t.name: apply_temperature(network[t.name], 1.0) if t.type == "classification" else network[t.name]
            for t in tasks
        }
        decisions = {
            t.name: probabilities[t.name].argmax(axis=1)
            if t.type == "classification"
            else probabilities[t.name]
            for t in tasks
        }
        return probabilities, decisions, {t.name: "network" for t in tasks}
    choice = {t.name: predictor or serving.rules[t.name].predictor for t in tasks}
    outputs = serving.source_outputs(tasks, features, network, use_structure=use_structure, only=choice)
    decisions = serving.decide(tasks, outputs, choice)
    return {t.name: outputs[t.name][choice[t.name]] for t in tasks}, decisions, choice
