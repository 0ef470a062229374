"""The classical reference: gradient-boosted trees on the same features and the same split.

Every neural result is shown beside this one. The features are what the
composition and symmetry encoders see, flattened into a fixed-length vector:
element fractions, fraction-weighted statistics of element properties, and the
space group's number and derived facts. For runs with crystal structures a second
reference also gets the cell facts the structure encoder is given (electrons per cell
modulo 2, 4 and 8, atoms per cell), so a structure model is measured against trees
that know as much about band filling as it is told.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from topoclass.data.featureset import FeatureSet
from topoclass.features.composition import MAX_Z, element_property_table
from topoclass.features.graph import NUM_CELL_FACTS
from topoclass.features.symmetry import spacegroup_feature_table
from topoclass.tasks import score_tasks, task_type

logger = logging.getLogger(__name__)


def baseline_features(features: FeatureSet, *, use_structure: bool = False) -> np.ndarray:
    """Fixed-length descriptor per material, [N, D]: what the neural encoders see, flattened."""
    index = features.element_index.numpy()
    fraction = features.element_fraction.numpy().astype(np.float64)
    n = len(index)
    fractions = np.zeros((n, MAX_Z + 1))
    np.add.at(fractions, (np.arange(n)[:, None], index), fraction)
    props = element_property_table()[index]  # [N, E, P]
    present = (index > 0)[..., None]
    weighted_mean = np.einsum("ne,nep->np", fraction, props)
    spread = np.sqrt(np.einsum("ne,nep->np", fraction, (props - weighted_mean[:, None, :]) ** 2))
    largest = np.where(present, props, -np.inf).max(axis=1)
    smallest = np.where(present, props, np.inf).min(axis=1)
    spacegroup = features.spacegroup.numpy()
    return np.hstack(
        [
            fractions[:, 1:],
            weighted_mean,
            spread,
            largest,
            smallest,
            largest - smallest,
            features.descriptors_read(torch.arange(n), with_graphs=use_structure).numpy(),
            spacegroup[:, None],
            spacegroup_feature_table()[spacegroup],
        ]
    ).astype(np.float32)


def tree_inputs(features: FeatureSet, *, use_structure: bool, with_cell_facts: bool) -> np.ndarray:
    """What the trees read: the network's inputs flattened, plus the cell facts when asked."""
    x = baseline_features(features, use_structure=use_structure)
    if with_cell_facts:
        x = np.hstack([x, cell_fact_features(features)]).astype(np.float32)
    return x


def cell_fact_features(features: FeatureSet) -> np.ndarray:
    """The structure encoder's cell facts per material, [N, NUM_CELL_FACTS]; NaN without a structure
    (the trees treat NaN as missing), also for materials predicted from formula and space group."""
    if features.graphs is None:
        return np.full((len(features), NUM_CELL_FACTS), np.nan, dtype=np.float32)
    facts = features.graphs.cell_facts().numpy()
    row = features.graph_index.numpy()
    return np.where((row >= 0)[:, None], facts[np.clip(row, 0, None)], np.nan)


TREE_PARAMS: dict[str, Any] = {
    "n_estimators": 2000,
    "learning_rate": 0.03,
    "num_leaves": 63,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.5,
    "verbose": -1,
    "n_jobs": 2,
}


def fit_and_evaluate_baseline(
    features: FeatureSet,
    split: dict[str, torch.Tensor],
    *,
    seed: int = 0,
    eval_split: str = "test",
    with_cell_facts: bool = False,
    use_structure: bool = False,
) -> dict[str, dict[str, Any]]:
    """Fit one boosted-tree model per task on train (early-stopped on val); metrics on ``eval_split``."""
    import lightgbm as lgb

    x = tree_inputs(features, use_structure=use_structure, with_cell_facts=with_cell_facts)
    labels = features.labels.numpy()
    outputs: dict[str, np.ndarray] = {}
    rows = {name: idx.numpy() for name, idx in split.items()}
    for column, task in enumerate(features.tasks):
        kind = task_type(task)
        train = rows["train"][~np.isnan(labels[rows["train"], column])]
        val = rows["val"][~np.isnan(labels[rows["val"], column])]
        model = kind.tree_model({**TREE_PARAMS, "random_state": seed})
        model.fit(
            x[train],
            labels[train, column],
            eval_X=x[val],
            eval_y=labels[val, column],
            callbacks=[lgb.early_stopping(100, verbose=False)],
        )
        outputs[task.name] = kind.tree_predictions(task, model, x[rows[eval_split]])
        logger.info("Baseline %s: %d trees", task.name, model.best_iteration_ or TREE_PARAMS["n_estimators"])
    return score_tasks(features.tasks, labels[rows[eval_split]], outputs)
