"""What a kind of task means: one class per task type.

A :class:`TaskConfig` says *which* label to learn; its :class:`TaskType` says what
learning it involves: how wide the model's output is, how a raw label is checked
and encoded, the loss, how outputs become predictions, the metrics, the split
strata and the gradient-boosted reference. Nothing else in topoclass branches
on ``task.type``: adding a kind of task (ordinal, multi-label) is one class here
plus its name among the choices of ``TaskConfig.type``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from topoclass.config import TaskConfig
from topoclass.errors import DataError

if TYPE_CHECKING:
    import torch

# PyTorch is imported by the methods that train (losses, weights, predictions from tensors):
# labelling, decoding and laying out a prediction stay free of it, for serving without it.

LabelValue = str | float | None

# Quantile bins that stand in for classes when a split is stratified by a number.
REGRESSION_STRATA = 5


class TaskType(ABC):
    """The behaviour shared by every task of one type."""

    name: ClassVar[str]

    @abstractmethod
    def output_width(self, task: TaskConfig) -> int:
        """Raw outputs per material."""

    @abstractmethod
    def canonical(self, task: TaskConfig, value: LabelValue) -> LabelValue:
        """The label as stored (exact class name, finite float), or None when it is not valid."""

    @abstractmethod
    def expected(self, task: TaskConfig) -> str:
        """What a valid label looks like, for reject reasons."""

    def resolve(self, task: TaskConfig, values: Iterable[LabelValue]) -> TaskConfig:
        """The task with anything left to the data (a classifier's classes) filled in."""
        return task

    @abstractmethod
    def encode(self, task: TaskConfig, value: LabelValue) -> float:
        """A canonical label as the float stored in the label tensor."""

    @abstractmethod
    def decode(self, task: TaskConfig, value: float) -> LabelValue:
        """Inverse of :meth:`encode`; NaN (missing) becomes None."""

    def row_weights(self, task: TaskConfig, targets: torch.Tensor, settings: LossSettings) -> torch.Tensor:
        """How much each labelled row counts in the task's mean loss (from the labels alone)."""
        import torch

        return torch.ones_like(targets)

    @abstractmethod
    def row_losses(
        self, task: TaskConfig, outputs: torch.Tensor, targets: torch.Tensor, settings: LossSettings
    ) -> torch.Tensor:
        """Each labelled row's loss, already multiplied by its row weight (``targets`` has no NaN).

        The task's loss is their sum over the row weights' sum; keeping the two apart lets a
        batch split into micro-batches (or shared by processes) give exactly the same mean.
        """

    @abstractmethod
    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        """Class probabilities [n, C], or values [n]."""

    @abstractmethod
    def metrics(
        self,
        task: TaskConfig,
        y_true: np.ndarray,
        predictions: np.ndarray,
        decisions: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Scores of labelled rows; ``decisions`` replace the predictions' own (a decision rule's)."""

    headline_metrics: ClassVar[tuple[str, ...]]

    @abstractmethod
    def strata(self, values: Sequence[LabelValue]) -> list[str]:
        """A stratum per label for stratified splitting; 'missing' for None."""

    @abstractmethod
    def prediction_columns(
        self, task: TaskConfig, predictions: np.ndarray, decisions: np.ndarray
    ) -> dict[str, list[Any]]:
        """The columns the materials' predictions (and the decisions taken on them) add to a
        predictions table, a value per material in each."""

    @abstractmethod
    def tree_model(self, params: dict[str, Any]) -> Any:
        """An untrained gradient-boosted model for this type (the classical reference)."""

    @abstractmethod
    def tree_predictions(self, task: TaskConfig, model: Any, x: np.ndarray) -> np.ndarray:
        """The same kind of predictions as :meth:`predictions`, from a trained tree model."""

    def class_weights(self, task: TaskConfig, labels: torch.Tensor) -> torch.Tensor | None:
        """Per-class loss weights from the training labels, when the task asks for them."""
        return None


@dataclass(frozen=True)
class LossSettings:
    """Training settings that shape a task's loss; ``weight`` holds per-class weights."""

    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    weight: torch.Tensor | None = None


class Classification(TaskType):
    """One class out of a fixed list; outputs are logits, predictions probabilities."""

    name = "classification"
    headline_metrics = ("accuracy", "macro_f1")

    def output_width(self, task: TaskConfig) -> int:
        return len(task.classes or [])

    def canonical(self, task: TaskConfig, value: LabelValue) -> LabelValue:
        by_key = {name.strip().casefold(): name for name in task.classes or []}
        return by_key.get(label_text(value).casefold())

    def expected(self, task: TaskConfig) -> str:
        return ", ".join(task.classes or [])

    def resolve(self, task: TaskConfig, values: Iterable[LabelValue]) -> TaskConfig:
        if task.classes is not None:
            return task
        spelled: dict[str, str] = {}
        for value in values:
            text = label_text(value) if value is not None else ""
            if text:
                key = text.casefold()
                spelled[key] = min(spelled.get(key, text), text)
        classes = sorted(spelled.values())
        if len(classes) < 2:
            raise DataError(
                f"task '{task.name}': found {len(classes)} distinct class(es) {classes}; "
                "a classifier needs 2 or more",
                field=task.label_column,
            )
        return TaskConfig.model_validate({**task.model_dump(), "classes": classes})

    def encode(self, task: TaskConfig, value: LabelValue) -> float:
        return float((task.classes or []).index(str(value)))

    def decode(self, task: TaskConfig, value: float) -> LabelValue:
        return None if math.isnan(value) else (task.classes or [])[int(value)]

    def row_weights(self, task: TaskConfig, targets: torch.Tensor, settings: LossSettings) -> torch.Tensor:
        import torch

        if settings.weight is None:
            return torch.ones_like(targets)
        return settings.weight.to(targets.device)[targets.long()]

    def row_losses(
        self, task: TaskConfig, outputs: torch.Tensor, targets: torch.Tensor, settings: LossSettings
    ) -> torch.Tensor:
        from torch.nn import functional as F

        target = targets.long()
        if task.loss == "focal":
            log_p_true = F.log_softmax(outputs, dim=-1).gather(1, target.unsqueeze(1)).squeeze(1)
            focal = -((1 - log_p_true.exp()) ** settings.focal_gamma) * log_p_true
            return focal * self.row_weights(task, targets, settings)
        # With class weights, cross-entropy's "none" reduction already multiplies each row by its weight.
        return F.cross_entropy(
            outputs,
            target,
            weight=settings.weight,
            label_smoothing=settings.label_smoothing,
            reduction="none",
        )

    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        import torch

        return torch.softmax(outputs.float(), dim=-1).numpy()

    def metrics(
        self,
        task: TaskConfig,
        y_true: np.ndarray,
        predictions: np.ndarray,
        decisions: np.ndarray | None = None,
    ) -> dict[str, Any]:
        from topoclass.metrics import classification_metrics

        if predictions.ndim != 2:
            raise ValueError(f"task '{task.name}': expected [n, C] probabilities, got {predictions.shape}")
        classes = task.classes or [str(i) for i in range(predictions.shape[1])]
        try:
            return classification_metrics(y_true, predictions, classes, decisions)
        except ValueError as exc:
            raise ValueError(f"task '{task.name}': {exc}") from None

    def strata(self, values: Sequence[LabelValue]) -> list[str]:
        return ["missing" if value is None else str(value) for value in values]

    def prediction_columns(
        self, task: TaskConfig, predictions: np.ndarray, decisions: np.ndarray
    ) -> dict[str, list[Any]]:
        classes = task.classes or []
        columns: dict[str, list[Any]] = {task.name: [classes[decision] for decision in decisions.tolist()]}
        # Python floats, rounded as Python rounds (correctly, unlike numpy's scaled rounding).
        for c, probabilities in zip(classes, predictions.T.tolist(), strict=True):
            columns[f"{task.name}:p({c})"] = [round(p, 6) for p in probabilities]
        return columns

    def tree_model(self, params: dict[str, Any]) -> Any:
        import lightgbm

        return lightgbm.LGBMClassifier(**params)

    def tree_predictions(self, task: TaskConfig, model: Any, x: np.ndarray) -> np.ndarray:
        # A class absent from the training rows has no column in predict_proba.
        probabilities = np.zeros((len(x), len(task.classes or [])))
        probabilities[:, model.classes_.astype(int)] = model.predict_proba(x)
        return probabilities

    def class_weights(self, task: TaskConfig, labels: torch.Tensor) -> torch.Tensor | None:
        if not task.class_weighting:
            return None
        import torch

        num_classes = len(task.classes or [])
        present = labels[~torch.isnan(labels)].long()
        counts = torch.bincount(present, minlength=num_classes).float().clamp_min(1.0)
        weights = counts.sum() / (num_classes * counts)
        return weights / weights.mean()


class Regression(TaskType):
    """A real number; outputs are the predicted values, scored by MAE, RMSE and R2."""

    name = "regression"
    headline_metrics = ("mae",)

    def output_width(self, task: TaskConfig) -> int:
        return 1

    def canonical(self, task: TaskConfig, value: LabelValue) -> LabelValue:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None

    def expected(self, task: TaskConfig) -> str:
        return "a finite number"

    def encode(self, task: TaskConfig, value: LabelValue) -> float:
        return float(value)  # type: ignore[arg-type]

    def decode(self, task: TaskConfig, value: float) -> LabelValue:
        return None if math.isnan(value) else float(value)

    def row_losses(
        self, task: TaskConfig, outputs: torch.Tensor, targets: torch.Tensor, settings: LossSettings
    ) -> torch.Tensor:
        return (outputs - targets) ** 2

    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        return outputs.float().reshape(-1).numpy()

    def metrics(
        self,
        task: TaskConfig,
        y_true: np.ndarray,
        predictions: np.ndarray,
        decisions: np.ndarray | None = None,
    ) -> dict[str, Any]:
        from topoclass.metrics import regression_metrics

        try:
            return regression_metrics(y_true, predictions if decisions is None else decisions)
        except ValueError as exc:
            raise ValueError(f"task '{task.name}': {exc}") from None

    def strata(self, values: Sequence[LabelValue]) -> list[str]:
        present = [float(v) for v in values if v is not None]
        if not present:
            return ["missing"] * len(values)
        edges = np.quantile(np.asarray(present), np.linspace(0, 1, REGRESSION_STRATA + 1)[1:-1])
        return ["missing" if v is None else f"bin{int(np.searchsorted(edges, float(v)))}" for v in values]

    def prediction_columns(
        self, task: TaskConfig, predictions: np.ndarray, decisions: np.ndarray
    ) -> dict[str, list[Any]]:
        return {task.name: np.asarray(decisions, dtype=float).tolist()}

    def tree_model(self, params: dict[str, Any]) -> Any:
        import lightgbm

        return lightgbm.LGBMRegressor(**params)

    def tree_predictions(self, task: TaskConfig, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(x), dtype=float)


_TYPES: dict[str, TaskType] = {kind.name: kind for kind in (Classification(), Regression())}


def task_type(task: TaskConfig) -> TaskType:
    """The behaviour of ``task``'s type."""
    return _TYPES[task.type]


def label_text(value: LabelValue) -> str:
    """A raw label as text: ``1.0`` reads as ``1``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def score_tasks(
    tasks: Sequence[TaskConfig],
    labels: np.ndarray,
    predictions: dict[str, np.ndarray],
    decisions: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score every task on its labelled rows (NaN labels are skipped).

    ``labels`` is ``[n, len(tasks)]`` in task order; ``predictions[task.name]`` is
    what :meth:`TaskType.predictions` gives for that task; ``decisions`` (class ids or
    values per task), when given, are what is scored instead of the predictions' own.
    """
    labels = np.asarray(labels, dtype=float)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[1] != len(tasks):
        raise ValueError(f"labels have shape {labels.shape}, expected [n, {len(tasks)}] for the tasks")
    results: dict[str, dict[str, Any]] = {}
    for column, task in enumerate(tasks):
        if task.name not in predictions:
            raise ValueError(f"task '{task.name}': no model output given")
        output = np.asarray(predictions[task.name])
        if len(output) != len(labels):
            raise ValueError(f"task '{task.name}': {len(output)} outputs for {len(labels)} label rows")
        labelled = ~np.isnan(labels[:, column])
        decided = None if decisions is None else np.asarray(decisions[task.name])[labelled]
        results[task.name] = task_type(task).metrics(
            task, labels[labelled, column], output[labelled], decided
        )
    return results
