"""Masked multitask loss: a sample without a label for a task adds nothing to that task."""

from __future__ import annotations

import torch

from topoclass.config import TaskConfig
from topoclass.tasks import LossSettings, task_type


class MultitaskLoss:
    """Weighted sum of per-task losses over the labelled rows of each task.

    Each task's loss is its type's (:meth:`topoclass.tasks.TaskType.loss`); per-class
    weights come from the training labels when a task asks for them.
    """

    def __init__(
        self,
        tasks: list[TaskConfig],
        train_labels: torch.Tensor,
        *,
        focal_gamma: float,
        label_smoothing: float = 0.0,
        device: torch.device | None = None,
    ) -> None:
        self.tasks = tasks
        self.settings = {}
        for column, task in enumerate(tasks):
            weight = task_type(task).class_weights(task, train_labels[:, column])
            self.settings[task.name] = LossSettings(
                focal_gamma=focal_gamma,
                label_smoothing=label_smoothing,
                weight=None if weight is None else weight.to(device),
            )

    def __call__(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = labels.new_zeros(())
        parts: dict[str, float] = {}
        for column, task in enumerate(self.tasks):
            target = labels[:, column]
            labelled = ~torch.isnan(target)
            if not labelled.any():
                continue
            loss = task_type(task).loss(
                task, outputs[task.name][labelled], target[labelled], settings=self.settings[task.name]
            )
            parts[task.name] = float(loss.detach())
            total = total + task.weight * loss
        return total, parts
