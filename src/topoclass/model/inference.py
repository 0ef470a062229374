"""Running a model over rows of a feature set."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from topoclass.config import TaskConfig
from topoclass.data.featureset import FeatureSet
from topoclass.data.loader import ordered_batches
from topoclass.errors import ResumableStop
from topoclass.memory import is_out_of_memory, release_memory
from topoclass.model.multitask import MultitaskModel
from topoclass.tasks import task_type

logger = logging.getLogger(__name__)


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy a batch's tensors (and its graph batch) to ``device``."""
    return {key: value.to(device) for key, value in batch.items()}


@torch.no_grad()
def raw_outputs(
    model: MultitaskModel,
    features: FeatureSet,
    rows: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    max_atoms: int = 0,
) -> dict[str, torch.Tensor]:
    """Logits (classification) or values (regression) per task, on the CPU, in the order of ``rows``.

    Batches hold at most ``batch_size`` materials and, with ``max_atoms``, at most that many
    atoms. When a batch runs out of memory, the batch size is halved for the rest of the call
    and the batch retried; a material that does not fit alone stops with its id named.
    """
    was_training = model.training
    model.eval()
    atoms = features.atoms() if max_atoms > 0 else None
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in model.task_names}
    position = 0
    while position < len(rows):
        piece = next(ordered_batches(rows[position:], batch_size, atoms=atoms, max_atoms=max_atoms))
        try:
            batch = move_batch(features.batch(piece, with_graphs=model.structure is not None), device)
            outputs = model(batch)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            release_memory(device)
            if len(piece) == 1:
                raise ResumableStop(
                    f"material {features.ids[int(piece[0])]} alone does not fit in memory on {device}"
                ) from error
            batch_size = max(1, len(piece) // 2)
            logger.warning("Out of memory on %s: evaluating in batches of %d", device, batch_size)
            continue
        for name, out in outputs.items():
            collected[name].append(out.float().cpu())
        position += len(piece)
    model.train(was_training)
    return {name: torch.cat(parts) if parts else torch.empty(0) for name, parts in collected.items()}


def predictions(tasks: Sequence[TaskConfig], outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Raw outputs to what each task predicts (class probabilities, values)."""
    return {task.name: task_type(task).predictions(outputs[task.name]) for task in tasks}
