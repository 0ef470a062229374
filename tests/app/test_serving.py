"""The served predictor: rules fitted on validation only, trees verified, decisions that agree."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tests.helpers import make_checkpointed_run
from topoclass.app.runs import RunLayout
from topoclass.app.serving import fit_serving, save_serving
from topoclass.config import TaskConfig
from topoclass.data.clean import check_hierarchy
from topoclass.errors import DataError
from topoclass.inference.rules import Serving, TaskRule, load_serving, not_applicable, predictions_for


def network_outputs(prepared, rows, quality: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Noisy logits that point at the true class with some ``quality``, and noisy values."""
    rng = np.random.default_rng(seed)
    labels = prepared.features.labels.numpy()[rows]
    logits = rng.normal(size=(len(rows), 2))
    known = ~np.isnan(labels[:, 0])
    logits[known, labels[known, 0].astype(int)] += quality
    gap = np.nan_to_num(labels[:, 1]) + rng.normal(scale=0.3, size=len(rows))
    return {"topological": logits, "gap": gap}


def split_of(prepared) -> dict[str, np.ndarray]:
    n = len(prepared.features)
    return {"train": np.arange(0, 84), "val": np.arange(84, 102), "test": np.arange(102, n)}


def test_rules_are_fitted_on_validation_and_never_see_test_labels(prepared):
    split = split_of(prepared)
    val_outputs = network_outputs(prepared, split["val"], quality=1.5)
    first = fit_serving(prepared.features, split, val_outputs, use_structure=False, seed=0)
    original = prepared.features.labels.clone()
    try:
        # Scramble the test labels: nothing fitted may move.
        test = torch.as_tensor(split["test"])
        prepared.features.labels[test] = prepared.features.labels[test.flip(0)]
        again = fit_serving(prepared.features, split, val_outputs, use_structure=False, seed=0)
        assert again.rules == first.rules
        # Change the validation outputs: the blend weight and temperatures follow.
        other = fit_serving(
            prepared.features,
            split,
            network_outputs(prepared, split["val"], 4.0),
            use_structure=False,
            seed=0,
        )
        rule, moved = first.rules["topological"], other.rules["topological"]
        assert moved.blend_weight != rule.blend_weight or moved.temperature != rule.temperature
    finally:
        prepared.features.labels.copy_(original)
    rule = first.rules["topological"]
    assert 0.0 <= rule.blend_weight <= 1.0 and rule.predictor in ("network", "trees", "blend")
    assert set(rule.validation) == {"network", "trees", "blend"}


def test_saved_trees_are_verified_and_a_damaged_file_is_refused(prepared, tmp_path, caplog):
    layout = make_checkpointed_run(tmp_path / "run")
    split = split_of(prepared)
    serving = fit_serving(
        prepared.features, split, network_outputs(prepared, split["val"], 1.5), use_structure=False, seed=0
    )
    save_serving(layout, serving, checkpoint="best")
    loaded = load_serving(RunLayout.open(tmp_path / "run").serving_dir())
    assert loaded is not None and loaded.rules == serving.rules
    assert "| topological |" in layout.model_card_file().read_text()
    x_rows = torch.arange(len(prepared.features))
    net = {
        k: torch.as_tensor(v)
        for k, v in network_outputs(prepared, np.arange(len(prepared.features)), 1.5).items()
    }
    arrays = prepared.features.arrays()
    served = predictions_for(loaded, arrays.tasks, arrays, net, use_structure=False)
    reference = predictions_for(serving, arrays.tasks, arrays, net, use_structure=False)
    np.testing.assert_allclose(served[0]["topological"], reference[0]["topological"])
    assert len(x_rows) == len(served[1]["topological"])
    tree_file = layout.serving_dir() / "trees-topological.txt.gz"
    damaged = bytearray(tree_file.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    tree_file.write_bytes(bytes(damaged))
    assert load_serving(RunLayout.open(tmp_path / "run").serving_dir()) is None
    assert "sha256 mismatch" in caplog.text


def test_a_fine_task_never_contradicts_its_coarse_task():
    coarse = TaskConfig(name="topological", classes=["trivial", "topological"])
    fine = TaskConfig(
        name="topo_class",
        classes=["trivial", "TI", "TCI"],
        coarse_task="topological",
        coarse_classes={"trivial": "trivial", "TI": "topological", "TCI": "topological"},
    )
    rule = TaskRule("network", 1.0, {"network": 1.0}, {"network": 0.0}, [0.5, 0.5], {})
    fine_rule = TaskRule("network", 1.0, {"network": 1.0}, {"network": 0.0}, [0.4, 0.3, 0.3], {})
    serving = Serving({"topological": rule, "topo_class": fine_rule}, {}, use_cell_facts=False)
    # The heads disagree on every row: the coarse says trivial where the fine says TI, and back.
    outputs = {
        "topological": {"network": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])},
        "topo_class": {"network": np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])},
    }
    choice = {"topological": "network", "topo_class": "network"}
    decided = serving.decide([fine, coarse], outputs, choice)  # fine listed first: order must not matter
    assert decided["topological"].tolist() == [0, 1, 0]
    assert decided["topo_class"].tolist() == [0, 1, 0]
    mapping = np.array([0, 1, 1])
    assert (mapping[decided["topo_class"]] == decided["topological"]).all()


def test_a_task_is_answered_only_where_its_label_applies():
    main = TaskConfig(name="topo_class", classes=["trivial", "TI", "SM"])
    crossing = TaskConfig(
        name="cross_type", classes=["Point", "Line"], applies_when={"topo_class": ["SM", "TI"]}
    )
    decisions = {"topo_class": np.array([0, 1, 2, 0]), "cross_type": np.array([1, 0, 1, 1])}
    outside = not_applicable([crossing, main], decisions)
    assert set(outside) == {"cross_type"}
    assert outside["cross_type"].tolist() == [True, False, False, True]
    for wrong, message in (
        ({"nope": ["SM"]}, "not another classification task"),
        ({"topo_class": ["X"]}, "['X']"),
    ):
        with pytest.raises(DataError, match=re.escape(message)):
            check_hierarchy([main, crossing.model_copy(update={"applies_when": wrong})])
    check_hierarchy([main, crossing])


def test_logit_adjustment_moves_rare_classes_into_the_decisions():
    task = TaskConfig(name="t", classes=["common", "rare"])
    rule = TaskRule("network", 1.0, {"network": 1.0}, {"network": 1.0}, [0.9, 0.1], {})
    serving = Serving({"t": rule}, {}, use_cell_facts=False)
    outputs = {"t": {"network": np.array([[0.7, 0.3], [0.95, 0.05]])}}
    decided = serving.decide([task], outputs, {"t": "network"})
    assert decided["t"].tolist() == [1, 0]  # 0.3 against a prior of 0.1 outweighs 0.7 against 0.9
    with pytest.raises(KeyError):
        serving.decide([task], outputs, {"t": "trees"})
