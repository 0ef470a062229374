"""Running a model over rows of a feature set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from topoclass.config import TaskConfig
from topoclass.data.featureset import FeatureSet
from topoclass.data.loader import ordered_batches
from topoclass.model.multitask import MultitaskModel
from topoclass.tasks import task_type


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy a batch's tensors (and its graph batch) to ``device``."""
    return {key: value.to(device) for key, value in batch.items()}


@torch.no_grad()
def raw_outputs(
    model: MultitaskModel, features: FeatureSet, rows: torch.Tensor, *, batch_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Logits (classification) or values (regression) per task, on the CPU, in the order of ``rows``."""
    was_training = model.training
    model.eval()
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in model.task_names}
    for batch_rows in ordered_batches(rows, batch_size):
        batch = move_batch(features.batch(batch_rows, with_graphs=model.structure is not None), device)
        for name, out in model(batch).items():
            collected[name].append(out.float().cpu())
    model.train(was_training)
    return {name: torch.cat(parts) for name, parts in collected.items()}


def predictions(tasks: Sequence[TaskConfig], outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Raw outputs to what each task predicts (class probabilities, values)."""
    return {task.name: task_type(task).predictions(outputs[task.name]) for task in tasks}
