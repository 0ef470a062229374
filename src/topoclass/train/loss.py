"""Masked multitask loss: a sample without a label for a task adds nothing to that task."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from topoclass.config import TaskConfig


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, weight: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy down-weighted on easy examples by (1 - p_true) ** gamma."""
    log_p = F.log_softmax(logits, dim=-1)
    log_p_true = log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1 - log_p_true.exp()) ** gamma) * log_p_true
    if weight is not None:
        w = weight[target]
        return (loss * w).sum() / w.sum()
    return loss.mean()


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1) from the training labels of one task."""
    present = labels[~torch.isnan(labels)].long()
    counts = torch.bincount(present, minlength=num_classes).float().clamp_min(1.0)
    weights = counts.sum() / (num_classes * counts)
    return weights / weights.mean()


class MultitaskLoss:
    """Weighted sum of per-task losses over the labelled rows of each task."""

    def __init__(
        self,
        tasks: list[TaskConfig],
        *,
        focal_gamma: float,
        weights: dict[str, torch.Tensor],
        label_smoothing: float = 0.0,
    ) -> None:
        self.tasks = tasks
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing
        self.class_weights = weights

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
            out = outputs[task.name][labelled]
            if task.type == "classification":
                target_class = target[labelled].long()
                weight = self.class_weights.get(task.name)
                if task.loss == "focal":
                    loss = focal_loss(out, target_class, self.focal_gamma, weight)
                else:
                    loss = F.cross_entropy(
                        out, target_class, weight=weight, label_smoothing=self.label_smoothing
                    )
            else:
                loss = F.mse_loss(out, target[labelled])
            parts[task.name] = float(loss.detach())
            total = total + task.weight * loss
        return total, parts
