"""Masked multitask loss: a sample without a label for a task adds nothing to that task.

Each task's loss is a weighted mean over its labelled rows. The mean's denominator
(the sum of row weights) can be given for a whole optimizer step, so a step split
into micro-batches, or shared by several processes, adds up to the same loss and
the same gradients as the step taken in one piece.
"""

from __future__ import annotations

import torch

from topoclass.config import TaskConfig
from topoclass.tasks import LossSettings, task_type


class MultitaskLoss:
    """Weighted sum of per-task losses over the labelled rows of each task.

    Each task's row losses come from its type (:meth:`topoclass.tasks.TaskType.row_losses`);
    per-class weights come from the training labels when a task asks for them.
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

    def normalizers(self, labels: torch.Tensor, row_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Per task, the sum of the weights of the labelled rows: each task mean's denominator, [T]."""
        sums = []
        for column, task in enumerate(self.tasks):
            target = labels[:, column]
            labelled = ~torch.isnan(target)
            weights = task_type(task).row_weights(task, target[labelled], self.settings[task.name])
            if row_weight is not None:
                weights = weights * row_weight[labelled]
            sums.append(weights.sum())
        return torch.stack(sums) if sums else labels.new_zeros(0)

    def __call__(
        self,
        outputs: dict[str, torch.Tensor],
        labels: torch.Tensor,
        *,
        normalizers: torch.Tensor | None = None,
        row_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of these rows, divided by ``normalizers`` (default: these rows' own)."""
        if normalizers is None:
            normalizers = self.normalizers(labels, row_weight)
        total = labels.new_zeros(())
        parts: dict[str, float] = {}
        for column, task in enumerate(self.tasks):
            target = labels[:, column]
            labelled = ~torch.isnan(target)
            if not labelled.any() or float(normalizers[column]) == 0.0:
                continue
            losses = task_type(task).row_losses(
                task, outputs[task.name][labelled], target[labelled], self.settings[task.name]
            )
            if row_weight is not None:
                losses = losses * row_weight[labelled]
            loss = losses.sum() / normalizers[column]
            parts[task.name] = float(loss.detach())
            total = total + task.weight * loss
        return total, parts
