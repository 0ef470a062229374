from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from topoclass.metrics import classification_metrics, regression_metrics

CLASSES = ["trivial", "TI", "TCI", "semimetal"]


def one_hot(ids: list[int], n_classes: int) -> np.ndarray:
    return np.eye(n_classes)[ids]


def test_perfect_classifier_scores_one_everywhere():
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    probabilities = 0.05 + 0.8 * one_hot(list(y), 4)  # rows sum to 1

    metrics = classification_metrics(y, probabilities, CLASSES)

    assert metrics["n"] == 8
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"):
        assert metrics[key] == pytest.approx(1.0), key
    assert all(auc == pytest.approx(1.0) for auc in metrics["roc_auc_per_class"].values())
    assert metrics["confusion_matrix"] == np.diag([2, 2, 2, 2]).tolist()
    assert metrics["classes"] == CLASSES


def test_known_confusion_matrix_and_per_class_scores():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = [0, 0, 1, 1, 2, 2]

    metrics = classification_metrics(y_true, one_hot(y_pred, 3), ["a", "b", "c"])

    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert metrics["per_class"]["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert metrics["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert metrics["per_class"]["c"]["support"] == 1
    expected_f1 = (0.8 + 0.5 + 2 / 3) / 3
    assert metrics["macro_f1"] == pytest.approx(expected_f1)


def test_confusion_matrix_keeps_classes_without_support():
    metrics = classification_metrics(np.array([0, 1, 1]), one_hot([0, 1, 0], 4), CLASSES)

    assert np.array(metrics["confusion_matrix"]).shape == (4, 4)
    assert metrics["per_class"]["semimetal"]["support"] == 0
    assert metrics["roc_auc_per_class"]["TCI"] is None
    assert metrics["roc_auc_per_class"]["semimetal"] is None


def test_binary_auc_is_auc_of_positive_class():
    y = np.array([0, 0, 1, 1, 0, 1])
    positive = np.array([0.1, 0.6, 0.4, 0.8, 0.3, 0.9])
    probabilities = np.column_stack([1 - positive, positive])

    metrics = classification_metrics(y, probabilities, ["no", "yes"])

    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, positive))
    assert metrics["roc_auc"] < 1.0


def test_multiclass_auc_matches_scikit_learn_one_vs_rest_macro():
    rng = np.random.default_rng(1)
    y = np.tile(np.arange(4), 25)
    probabilities = rng.dirichlet(np.ones(4), size=len(y))

    metrics = classification_metrics(y, probabilities, CLASSES)

    expected = roc_auc_score(y, probabilities, multi_class="ovr", average="macro")
    assert metrics["roc_auc"] == pytest.approx(expected)


def test_multiclass_auc_skips_absent_classes():
    y = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])

    metrics = classification_metrics(y, probabilities, ["a", "b", "c"])

    assert metrics["roc_auc_per_class"]["c"] is None
    defined = [metrics["roc_auc_per_class"]["a"], metrics["roc_auc_per_class"]["b"]]
    assert metrics["roc_auc"] == pytest.approx(np.mean(defined))


@pytest.mark.parametrize("n_classes", [2, 4])
def test_auc_is_none_with_one_class_only_and_no_warning(n_classes):
    y = np.zeros(5, dtype=int)
    probabilities = np.full((5, n_classes), 1.0 / n_classes)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = classification_metrics(y, probabilities, [f"c{i}" for i in range(n_classes)])

    assert metrics["roc_auc"] is None
    assert metrics["accuracy"] == 1.0
    json.dumps(metrics, allow_nan=False)


def test_classification_rejects_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.array([0, 1]), np.ones((3, 2)) / 2, ["a", "b"])
    with pytest.raises(ValueError, match="class ids"):
        classification_metrics(np.array([0, 2]), np.ones((2, 2)) / 2, ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(np.array([0, 1]), np.array([[0.5, 0.5], [np.nan, 0.5]]), ["a", "b"])


def test_regression_metrics_hand_checked():
    metrics = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))

    assert metrics == {
        "n": 3,
        "mae": pytest.approx(1 / 3),
        "rmse": pytest.approx(math.sqrt(1 / 3)),
        "r2": pytest.approx(0.5),
    }


def test_regression_r2_undefined_is_none():
    assert regression_metrics(np.array([2.0]), np.array([1.0]))["r2"] is None
    constant = regression_metrics(np.array([1.0, 1.0]), np.array([1.0, 2.0]))
    assert constant["r2"] is None
    assert constant["mae"] == pytest.approx(0.5)
