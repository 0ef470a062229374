"""One output head per task."""

from __future__ import annotations

from torch import nn

from topoclass.config import TaskConfig
from topoclass.model.encoders import mlp
from topoclass.tasks import task_type


class TaskHeads(nn.ModuleDict):
    """Maps the fused material embedding to each task's raw outputs."""

    def __init__(self, tasks: list[TaskConfig], hidden_dim: int, dropout: float) -> None:
        super().__init__(
            {
                task.name: mlp(hidden_dim, hidden_dim, task_type(task).output_width(task), dropout)
                for task in tasks
            }
        )
