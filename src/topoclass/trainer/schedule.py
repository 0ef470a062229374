"""Learning-rate schedules.

Cosine decay with linear warm-up is a pure function of the step (nothing to
checkpoint). ReduceLROnPlateau has memory (best value, bad epochs), so it is
checkpointed through the same state protocol as everything else.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class LearningRateSchedule:
    """Sets the optimizer's learning rate each step (cosine) or each epoch (plateau)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        kind: str,
        base_lr: float,
        total_steps: int,
        warmup_steps: int,
        patience: int,
    ) -> None:
        self.optimizer = optimizer
        self.kind = kind
        self.base_lr = base_lr
        self.total_steps = max(total_steps, 1)
        self.warmup_steps = warmup_steps
        self.scale = 1.0  # lowered by each rollback of a diverging run
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=max(1, patience // 3))
            if kind == "plateau"
            else None
        )

    def lr_at(self, step: int) -> float:
        """Cosine schedule value at a global step (1-based)."""
        if self.warmup_steps and step <= self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.base_lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))

    def on_step(self, step: int) -> None:
        if self.kind == "cosine":
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(step) * self.scale * group.get("lr_factor", 1.0)

    def on_epoch_end(self, val_loss: float) -> None:
        if self.plateau is not None:
            self.plateau.step(val_loss)

    @property
    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def rescale(self, factor: float) -> None:
        """Multiply the learning rate by ``factor`` from now on (a rollback of a diverging run)."""
        if self.kind != "cosine":  # plateau and constant rates live in the optimizer: scale them there
            for group in self.optimizer.param_groups:
                group["lr"] *= factor
        self.scale *= factor

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scale": self.scale,
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"checkpoint used the '{state['kind']}' schedule, not '{self.kind}'")
        self.scale = float(state.get("scale", 1.0))
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
