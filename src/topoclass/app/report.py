"""Evaluation outputs for people: figures, a Markdown table and ``metrics.json``.

Figures are drawn on ``matplotlib.figure.Figure`` objects, which render PNGs
through Agg without touching pyplot or the global backend, so importing this
module (or calling it from a training process) has no side effects.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc, roc_curve

from topoclass.calibration import expected_calibration_error, reliability_bins
from topoclass.errors import WriteError
from topoclass.files import atomic_write

CLASSIFICATION_COLUMNS = [
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_f1", "macro-F1"),
    ("roc_auc", "ROC-AUC"),
    ("ece", "calibration error (ECE)"),
]
REGRESSION_COLUMNS = [("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R2")]
_DPI = 120


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]] | np.ndarray, classes: Sequence[str], title: str, path: Path
) -> Path:
    """Confusion matrix coloured by row-normalised recall, each cell labelled with count and share."""
    counts = np.asarray(matrix, dtype=int)
    row_totals = counts.sum(axis=1, keepdims=True)
    # A class with no true samples gets an empty row rather than a division by zero.
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    size = 2.5 + 0.9 * len(classes)
    figure = Figure(figsize=(size + 1.2, size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="fraction of true class")
    for row in range(counts.shape[0]):
        for col in range(counts.shape[1]):
            colour = "white" if shares[row, col] > 0.6 else "black"
            text = f"{counts[row, col]}\n{shares[row, col]:.0%}"
            axes.text(col, row, text, ha="center", va="center", color=colour, fontsize=9)
    ticks = range(len(classes))
    axes.set_xticks(ticks, labels=list(classes), rotation=30, ha="right")
    axes.set_yticks(ticks, labels=list(classes))
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    return _save(figure, path)


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Loss curves in one panel, validation accuracy / macro-F1 in another, learning rate below."""
    if not history:
        raise ValueError("no training history to plot")
    rows = _last_row_per_epoch(history)
    epochs = [row.get("epoch", index + 1) for index, row in enumerate(rows)]
    keys = list(dict.fromkeys(key for row in rows for key in row))
    loss_keys = [key for key in keys if key == "loss" or key.endswith("_loss")]
    score_keys = [
        key
        for key in keys
        if key.startswith("val_") and (key.endswith("_accuracy") or key.endswith("_macro_f1"))
    ]
    panels = [("loss", loss_keys), ("validation score", score_keys)]
    if "lr" in keys:
        panels.append(("learning rate", ["lr"]))
    figure = Figure(figsize=(7.5, 2.8 * len(panels)), layout="constrained")
    all_axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axes, (ylabel, series_keys) in zip(all_axes, panels, strict=True):
        for key in series_keys:
            axes.plot(epochs, [_as_float(row.get(key)) for row in rows], marker=".", label=key)
        if series_keys:
            axes.legend(fontsize=8, loc="best")
        else:
            axes.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=axes.transAxes)
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
    all_axes[-1].set_xlabel("epoch")
    all_axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(figure, path)


def plot_roc_curves(
    y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], title: str, path: Path
) -> Path:
    """One-vs-rest ROC curve of every class present in ``y_true`` (the positive class when binary)."""
    y_true = np.asarray(y_true).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    shown = [1] if len(classes) == 2 else range(len(classes))
    figure = Figure(figsize=(5.5, 5.0), layout="constrained")
    axes = figure.subplots()
    drawn = 0
    for class_id in shown:
        is_class = y_true == class_id
        if is_class.all() or not is_class.any():
            continue  # a ROC curve needs both positives and negatives
        false_positive, true_positive, _ = roc_curve(is_class, probabilities[:, class_id])
        area = auc(false_positive, true_positive)
        axes.plot(false_positive, true_positive, label=f"{classes[class_id]} (AUC {area:.3f})")
        drawn += 1
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title(title)
    if drawn:
        axes.legend(fontsize=8, loc="lower right")
    else:
        axes.text(0.5, 0.5, "undefined: one class only", ha="center", va="center")
    return _save(figure, path)


def format_results_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown table: one row per task and metric, one column per model."""
    models = list(results)
    tasks = list(dict.fromkeys(task for model in models for task in results[model]))
    lines = [
        "| task | metric | " + " | ".join(models) + " |",
        "|---|---|" + "---:|" * len(models),
    ]
    for task in tasks:
        per_model = [results[model].get(task, {}) for model in models]
        metric_rows = [("n", "n"), *_columns_for(per_model)]
        for key, label in metric_rows:
            cells = [_format_cell(metrics.get(key)) for metrics in per_model]
            lines.append(f"| {task} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_served(served: dict[str, dict[str, Any]], choices: dict[str, str]) -> str:
    """The served predictor per task, and its per-class precision, recall and F1."""
    lines = [
        "Served predictor per task (chosen on validation): "
        + ", ".join(f"{t} by the {s}" for t, s in choices.items())
    ]
    for task, metrics in served.items():
        per_class = metrics.get("per_class")
        if not per_class:
            continue
        lines += ["", f"| {task} (served) | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        for name, values in per_class.items():
            cells = [_format_cell(values.get(key)) for key in ("precision", "recall", "f1", "support")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_reliability(probabilities: np.ndarray, labels: np.ndarray, title: str, path: Path) -> Path:
    """Reliability diagram: accuracy against confidence of the predicted class, bins sized by count."""
    accuracy, confidence, counts = reliability_bins(probabilities, labels)
    ece = expected_calibration_error(probabilities, labels)
    figure = Figure(figsize=(5.0, 5.0), layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfect calibration")
    axes.scatter(
        confidence, accuracy, s=20 + 300 * counts / counts.max(), alpha=0.7, label="bins (area: count)"
    )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (probability of the predicted class)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"{title}\nECE {ece:.3f}, n={len(labels)}")
    axes.legend(fontsize=8, loc="upper left")
    return _save(figure, path)


def write_evaluation(
    out_dir: Path, results: dict[str, dict[str, dict[str, Any]]], history: Sequence[dict] | None
) -> dict[str, Path]:
    """Write ``metrics.json``, a confusion matrix per model and task, and the training curves.

    Returns the written files keyed ``metrics``, ``confusion_<model>_<task>`` and
    ``training_curves``.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(out_dir, error) from error
    written = {"metrics": _write_json(out_dir / "metrics.json", results)}
    for model, tasks in results.items():
        for task, metrics in tasks.items():
            if "confusion_matrix" not in metrics:
                continue
            name = f"confusion_{_safe_name(model)}_{_safe_name(task)}"
            title = f"{model}: {task} (n={metrics.get('n', '?')})"
            written[name] = plot_confusion_matrix(
                metrics["confusion_matrix"], metrics["classes"], title, out_dir / f"{name}.png"
            )
    if history:
        written["training_curves"] = plot_training_curves(history, out_dir / "training_curves.png")
    return written


def _columns_for(per_model: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The metric rows for a task, from whichever model has scores for it."""
    if any("accuracy" in metrics for metrics in per_model):
        return CLASSIFICATION_COLUMNS
    if any("mae" in metrics for metrics in per_model):
        return REGRESSION_COLUMNS
    return []


def _format_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.3f}"


def _last_row_per_epoch(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    # After a resume an epoch can be logged twice; the later row is the one that counted.
    if not all("epoch" in row for row in history):
        return list(history)
    by_epoch = {row["epoch"]: row for row in history}
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _as_float(value: Any) -> float:
    """A plottable number; NaN (a gap in the line) for missing or non-numeric values."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-") or "unnamed"


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy values unwrapped, NaN as null, paths as strings."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json(path: Path, data: Any) -> Path:
    atomic_write(path, json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n", durable=False)
    return path


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    image = io.BytesIO()
    figure.savefig(image, dpi=_DPI, format="png")
    atomic_write(path, image.getvalue(), durable=False)
    return path
