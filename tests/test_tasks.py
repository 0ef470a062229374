"""Task types: what a classification or a regression task means, end to end."""

import math

import numpy as np
import pytest
import torch

from topoclass.config import TaskConfig
from topoclass.errors import DataError
from topoclass.tasks import score_tasks, task_type


def one_hot(ids, n):
    out = np.zeros((len(ids), n))
    out[np.arange(len(ids)), ids] = 1.0
    return out


def test_score_tasks_skips_missing_labels():
    tasks = [
        TaskConfig(name="topology", classes=["trivial", "topological"]),
        TaskConfig(name="gap", type="regression"),
    ]
    labels = np.array([[0.0, 1.0], [1.0, np.nan], [np.nan, 3.0], [1.0, 5.0]])
    # The row with a NaN topology label is predicted wrongly on purpose: it must not count.
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.0, 1.0], [0.3, 0.7]])
    gap = np.array([1.0, 100.0, 3.0, 4.0])

    results = score_tasks(tasks, labels, {"topology": probabilities, "gap": gap})

    assert results["topology"]["n"] == 3
    assert results["topology"]["accuracy"] == 1.0
    assert results["topology"]["classes"] == ["trivial", "topological"]
    assert results["gap"]["n"] == 3
    assert results["gap"]["mae"] == pytest.approx(1 / 3)


def test_score_tasks_without_labelled_rows_gives_n_zero():
    tasks = [TaskConfig(name="topology", classes=["a", "b"])]
    labels = np.full((3, 1), np.nan)

    results = score_tasks(tasks, labels, {"topology": np.full((3, 2), 0.5)})

    assert results == {"topology": {"n": 0}}


def test_score_tasks_names_classes_by_id_when_unnamed():
    tasks = [TaskConfig(name="kind")]
    results = score_tasks(tasks, np.array([[0.0], [2.0]]), {"kind": one_hot([0, 2], 3)})

    assert results["kind"]["classes"] == ["0", "1", "2"]


def test_score_tasks_names_the_task_on_errors():
    tasks = [TaskConfig(name="topology", classes=["a", "b"])]
    with pytest.raises(ValueError, match="topology"):
        score_tasks(tasks, np.zeros((2, 1)), {})
    with pytest.raises(ValueError, match="topology"):
        score_tasks(tasks, np.array([[0.0], [5.0]]), {"topology": np.full((2, 2), 0.5)})
    with pytest.raises(ValueError, match="expected"):
        score_tasks(tasks, np.zeros((2, 3)), {"topology": np.full((2, 2), 0.5)})


def test_class_weights_favour_rare_classes_only_when_asked():
    task = TaskConfig(name="t", classes=["a", "b"], class_weighting=True)
    weights = task_type(task).class_weights(task, torch.tensor([0.0, 0, 0, 1, math.nan]))
    assert weights is not None and weights[1] > weights[0]
    assert torch.isclose(weights.mean(), torch.tensor(1.0))
    plain = TaskConfig(name="t", classes=["a", "b"])
    assert task_type(plain).class_weights(plain, torch.tensor([0.0, 1.0])) is None


def test_labels_round_trip_and_invalid_ones_are_refused():
    classes = TaskConfig(name="c", classes=["trivial", "TI"])
    kind = task_type(classes)
    assert kind.canonical(classes, " ti ") == "TI" and kind.canonical(classes, "TCI") is None
    assert kind.decode(classes, kind.encode(classes, "TI")) == "TI"
    assert kind.decode(classes, math.nan) is None
    number = TaskConfig(name="gap", type="regression")
    kind = task_type(number)
    assert kind.canonical(number, "1.5") == 1.5 and kind.canonical(number, "inf") is None
    assert kind.canonical(number, "abc") is None


def test_classes_are_inferred_from_the_data_and_one_class_is_an_error():
    task = TaskConfig(name="c")
    resolved = task_type(task).resolve(task, ["b", "a", "B", None, "a"])
    # One class per spelling up to case, spelled the way that sorts first.
    assert resolved.classes == ["B", "a"]
    with pytest.raises(DataError, match="2 or more"):
        task_type(task).resolve(task, ["a", "A"])


def test_regression_strata_are_quantile_bins_and_missing():
    task = TaskConfig(name="gap", type="regression")
    strata = task_type(task).strata([0.1, 0.2, None, 5.0, 9.0, 3.0])
    assert strata[2] == "missing" and strata[0] != strata[4]
    assert len(set(strata)) >= 4


def test_output_width_and_prediction_columns_by_type():
    classes = TaskConfig(name="c", classes=["x", "y", "z"])
    number = TaskConfig(name="v", type="regression")
    assert task_type(classes).output_width(classes) == 3 and task_type(number).output_width(number) == 1
    probabilities = task_type(classes).predictions(torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]))
    # The decisions, not the argmax; probabilities rounded as Python rounds each one.
    columns = task_type(classes).prediction_columns(classes, probabilities, np.array([2, 0]))
    assert list(columns) == ["c", "c:p(x)", "c:p(y)", "c:p(z)"] and columns["c"] == ["z", "x"]
    assert columns["c:p(y)"] == [round(float(p), 6) for p in probabilities[:, 1]]
    assert sum(columns[f"c:p({k})"][0] for k in "xyz") == pytest.approx(1.0, abs=1e-5)
    values = task_type(number).prediction_columns(number, np.ones(2, np.float32), np.float32([1.25, -3]))
    assert values == {"v": [1.25, -3.0]}
