"""Serving rules applied: calibrated sources, the logit adjustment, the top-down hierarchy.

What :mod:`topoclass.app.serving` fits on a run's validation split is applied here, with
NumPy alone, by both prediction paths (PyTorch and ONNX Runtime): the network's raw
outputs and the trees' probabilities become served probabilities and decisions.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from topoclass.calibration import apply_temperature
from topoclass.checkpoint import storage
from topoclass.config import TaskConfig
from topoclass.data.arrays import FeatureArrays
from topoclass.errors import CheckpointError
from topoclass.inference.boosters import Booster
from topoclass.inference.tree_inputs import tree_inputs

logger = logging.getLogger(__name__)

SOURCES = ("network", "trees", "blend")
EPS = 1e-12

# A source's outputs per task (the network's raw ones, the trees' probabilities), or a call that
# returns them once computed (elsewhere, meanwhile).
Outputs = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


def resolved(outputs: Outputs) -> Mapping[str, Any]:
    """The outputs themselves (waiting for them when given a call)."""
    return outputs() if callable(outputs) else outputs


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
    _loading: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def trees(self) -> dict[str, Any]:
        """The LightGBM boosters per task (parsed on first use: the network alone does not need them)."""
        with self._loading:  # two threads may ask first
            if callable(self.tree_models):
                self.tree_models = self.tree_models()
            return self.tree_models

    def choice(self, tasks: list[TaskConfig], predictor: str | None = None) -> dict[str, str]:
        """The source that serves each task: its rule's, or ``predictor`` for all."""
        return {task.name: predictor or self.rules[task.name].predictor for task in tasks}

    def tree_outputs(
        self, tasks: list[TaskConfig], features: FeatureArrays, *, use_structure: bool
    ) -> Mapping[str, np.ndarray]:
        """The trees' probabilities (or values) per task, uncalibrated."""
        x = tree_inputs(features, use_structure=use_structure, with_cell_facts=self.use_cell_facts)
        return {task.name: tree_predictions(task, self.trees[task.name], x) for task in tasks}

    def source_outputs(
        self,
        tasks: list[TaskConfig],
        features: FeatureArrays,
        network: Outputs,
        *,
        use_structure: bool,
        only: dict[str, str] | None = None,
        trees: Outputs | None = None,
    ) -> dict[str, dict[str, np.ndarray]]:
        """Calibrated probabilities (or values) of each source, per task (with ``only``, of just the
        source given per task: the trees are not needed to serve the network). ``network``: the
        network's raw outputs, or a call that waits for them; the trees predict before it is made.
        ``trees``: their :meth:`tree_outputs`, or a call for them, where computed elsewhere."""
        need_trees = only is None or reads_trees(only)
        tree_outputs: Mapping[str, Any] = {}
        if need_trees and trees is not None:
            tree_outputs = resolved(trees)
        elif need_trees:
            tree_outputs = self.tree_outputs(tasks, features, use_structure=use_structure)
        network = resolved(network)  # the trees went first: the network may be computing meanwhile
        out: dict[str, dict[str, np.ndarray]] = {}
        for task in tasks:
            rule = self.rules[task.name]
            if not need_trees:
                net = network[task.name]
                if task.type == "classification":
                    net = apply_temperature(net, rule.temperature["network"])
                out[task.name] = {"network": net}
                continue
            raw_trees = tree_outputs[task.name]
            if task.type != "classification":
                blend = rule.blend_weight * network[task.name] + (1 - rule.blend_weight) * raw_trees
                out[task.name] = {"network": network[task.name], "trees": raw_trees, "blend": blend}
                continue
            net = apply_temperature(network[task.name], rule.temperature["network"])
            tree = apply_temperature(np.log(np.clip(raw_trees, EPS, 1)), rule.temperature["trees"])
            pool = rule.blend_weight * net + (1 - rule.blend_weight) * tree
            blend = apply_temperature(np.log(np.clip(pool, EPS, 1)), rule.temperature["blend"])
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


def reads_trees(choice: Mapping[str, str]) -> bool:
    """Whether serving by ``choice`` (a source per task) needs the trees."""
    return any(source != "network" for source in choice.values())


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
    return np.log(np.clip(probabilities, EPS, 1)) - tau * np.log(np.clip(np.asarray(prior), EPS, 1))


def _allowed(task: TaskConfig, coarse: TaskConfig) -> np.ndarray:
    """[coarse classes, fine classes]: which fine classes a coarse decision leaves open."""
    fine, parent = task.classes or [], task.coarse_classes or {}
    return np.array(
        [[parent[name] == coarse_class for name in fine] for coarse_class in coarse.classes or []]
    )


def tree_predictions(task: TaskConfig, booster: Any, x: np.ndarray) -> np.ndarray:
    raw = np.asarray(booster.predict(x), dtype=float)
    if task.type != "classification":
        return raw
    classes = len(task.classes or [])
    if raw.ndim == 1:  # binary: the probability of class 1
        raw = np.stack([1 - raw, raw], axis=1)
    return raw[:, :classes]


def load_serving(path: Path, *, threads: int = 1) -> Serving | None:
    """The serving rules and trees saved in ``path`` (a run's ``serving/``), verified; None when
    there are none (or they are damaged). The trees predict with ``threads`` threads."""
    if not path.is_dir():
        return None
    try:
        storage.verify(path)
        metadata = storage.read_metadata(path)
        rules = {name: TaskRule(**rule) for name, rule in metadata["rules"].items()}
        texts = {name: gzip.decompress(storage.read_file(path, trees_file(name))).decode() for name in rules}
    except (CheckpointError, KeyError, TypeError, ValueError, OSError) as error:
        logger.warning("Serving rules in %s unusable (%s): serving the network alone", path, error)
        return None

    def load_trees() -> dict[str, Any]:
        return {name: Booster(text, threads=threads) for name, text in texts.items()}

    return Serving(rules, load_trees, bool(metadata.get("use_cell_facts")))


def trees_file(task: str) -> str:
    return f"trees-{task}.txt.gz"


def predictions_for(
    serving: Serving | None,
    tasks: list[TaskConfig],
    features: FeatureArrays,
    network_outputs: Outputs,
    *,
    use_structure: bool,
    predictor: str | None = None,
    trees: Outputs | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    """Served probabilities (or values), decisions and the source used, per task.

    ``network_outputs``, ``trees``: the sources' outputs, or calls that wait for them (see
    :meth:`Serving.source_outputs`). Without serving rules (a run from before them), the
    network's softmax and argmax.
    """

    def network() -> dict[str, np.ndarray]:
        return {name: np.asarray(out, dtype=np.float32) for name, out in resolved(network_outputs).items()}

    if serving is None:
        if predictor not in (None, "network"):
            raise CheckpointError(
                f"this run has no trees to serve ('{predictor}'): run topoclass evaluate first"
            )
        raw = network()
        probabilities = {
            t.name: apply_temperature(raw[t.name], 1.0) if t.type == "classification" else raw[t.name]
            for t in tasks
        }
        decisions = {
            t.name: probabilities[t.name].argmax(axis=1)
            if t.type == "classification"
            else probabilities[t.name]
            for t in tasks
        }
        return probabilities, decisions, {t.name: "network" for t in tasks}
    choice = serving.choice(tasks, predictor)
    outputs = serving.source_outputs(
        tasks, features, network, use_structure=use_structure, only=choice, trees=trees
    )
    decisions = serving.decide(tasks, outputs, choice)
    return {t.name: outputs[t.name][choice[t.name]] for t in tasks}, decisions, choice
