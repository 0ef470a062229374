"""An exponential moving average of the model's weights.

The average is what gets validated, kept as ``best`` and used for prediction:
it moves less from one noisy step to the next than the live weights. Its state
has exactly the model's keys, so exported weights load into a plain model.
"""

from __future__ import annotations

import copy
from typing import Any, Generic, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


class WeightAverage(Generic[M]):
    """EMA of a model's parameters, with a warm-up so early steps are not dominated by the initial weights."""

    def __init__(self, model: M, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for averaged, live in zip(self.model.parameters(), model.parameters(), strict=True):
            averaged.lerp_(live, 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)


def inference_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to predict with from a checkpoint's state: the average when there is one."""
    return state.get("averaged_model") or state["model"]
