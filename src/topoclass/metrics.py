"""Scores of predictions against labels, as JSON-ready dicts (a leaf: imports nothing of topoclass).

Every number comes from scikit-learn. Metrics that are undefined on the given
data (an AUC with one class present, an R2 on one sample) are ``None`` rather
than an exception or a NaN, so a small or lopsided test split still yields a
complete, serialisable report.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
)

from topoclass.calibration import expected_calibration_error


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], predicted: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, ROC-AUC, calibration error, per-class scores, confusion matrix.

    ``y_true`` holds class ids in ``range(len(classes))``; ``probabilities`` is
    ``[n, len(classes)]``. The prediction is ``predicted`` when given (a decision rule's),
    else the most probable class; ROC-AUC and the calibration error read the probabilities.
    """
    classes = list(classes)
    y_true, probabilities = _check_classification_inputs(y_true, probabilities, len(classes))
    if len(y_true) == 0:
        return {"n": 0}
    labels = list(range(len(classes)))
    y_pred = probabilities.argmax(axis=1) if predicted is None else np.asarray(predicted, dtype=int).ravel()
    with _quiet_undefined_metrics():
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0
        )
        per_class_auc = _one_vs_rest_auc(y_true, probabilities)
        return {
            "n": len(y_true),
            "accuracy": _number(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": _number(balanced_accuracy_score(y_true, y_pred)),
            # Macro over the classes that occur in y_true or y_pred (scikit-learn's
            # default): a class absent from both says nothing about this model.
            "macro_f1": _number(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "roc_auc": _overall_auc(probabilities, per_class_auc),
            "ece": _number(expected_calibration_error(probabilities, y_true)),
            "roc_auc_per_class": dict(zip(classes, per_class_auc, strict=True)),
            "per_class": {
                name: {
                    "precision": _number(precision[i]),
                    "recall": _number(recall[i]),
                    "f1": _number(f1[i]),
                    "support": int(support[i]),
                }
                for i, name in enumerate(classes)
            },
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
            "classes": classes,
        }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE and R2 (``None`` when fewer than two samples or a constant target)."""
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"regression: {len(y_true)} labels but {len(y_pred)} predictions")
    if not np.isfinite(y_pred).all():
        raise ValueError("regression: predictions contain NaN or infinity")
    if len(y_true) == 0:
        return {"n": 0}
    # A constant target makes R2 a division by zero: undefined, reported as None.
    with _quiet_undefined_metrics(), np.errstate(divide="ignore", invalid="ignore"):
        r2 = r2_score(y_true, y_pred, force_finite=False) if len(y_true) >= 2 else float("nan")
    return {
        "n": len(y_true),
        "mae": _number(mean_absolute_error(y_true, y_pred)),
        "rmse": _number(math.sqrt(mean_squared_error(y_true, y_pred))),
        "r2": _number(r2),
    }


def _check_classification_inputs(
    y_true: np.ndarray, probabilities: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).ravel()
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or probabilities.shape != (len(y_true), n_classes):
        raise ValueError(
            f"probabilities have shape {probabilities.shape}, expected ({len(y_true)}, {n_classes})"
        )
    if not np.isfinite(probabilities).all():
        raise ValueError("probabilities contain NaN or infinity")
    if y_true.size and (np.any(y_true != np.round(y_true)) or y_true.min() < 0 or y_true.max() >= n_classes):
        raise ValueError(f"labels must be class ids in 0..{n_classes - 1}")
    return y_true.astype(int), probabilities


def _one_vs_rest_auc(y_true: np.ndarray, probabilities: np.ndarray) -> list[float | None]:
    """AUC of each class against the rest; ``None`` for a class absent (or alone) in y_true."""
    aucs: list[float | None] = []
    for class_id in range(probabilities.shape[1]):
        is_class = y_true == class_id
        if is_class.all() or not is_class.any():
            aucs.append(None)
        else:
            aucs.append(_number(roc_auc_score(is_class, probabilities[:, class_id])))
    return aucs


def _overall_auc(probabilities: np.ndarray, per_class_auc: list[float | None]) -> float | None:
    """Binary: AUC of the positive class. Multiclass: macro mean of the defined one-vs-rest AUCs.

    scikit-learn's multiclass ``roc_auc_score`` refuses a class missing from
    y_true, so the macro mean is taken here over the classes that are present.
    """
    if probabilities.shape[1] == 2:
        return per_class_auc[1]
    defined = [auc for auc in per_class_auc if auc is not None]
    return float(np.mean(defined)) if defined else None


def _number(value: Any) -> float | None:
    """A plain float, or ``None`` for NaN or infinity (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


@contextmanager
def _quiet_undefined_metrics() -> Iterator[None]:
    # Undefined cases are reported as None/0 in the result; the warnings would
    # only repeat that, once per task and per model, in every evaluation log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        warnings.filterwarnings("ignore", message="R\\^2 score is not well-defined")
        yield
