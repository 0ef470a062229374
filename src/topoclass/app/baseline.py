"""The classical reference: gradient-boosted trees on the same features and the same split.

Every neural result is shown beside this one. The trees read what the encoders see,
flattened (:mod:`topoclass.inference.tree_inputs`); for runs with crystal structures a
second reference also gets the cell facts the structure encoder is given, so a structure
model is measured against trees that know as much about band filling as it is told.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from topoclass.data.featureset import FeatureSet
from topoclass.inference.tree_inputs import tree_inputs
from topoclass.tasks import score_tasks, task_type

logger = logging.getLogger(__name__)


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

    x = tree_inputs(features.arrays(), use_structure=use_structure, with_cell_facts=with_cell_facts)
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
