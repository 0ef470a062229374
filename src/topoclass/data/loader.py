"""A resumable batch order: the position inside an epoch is state, not something to replay.

The permutation of epoch ``e`` is a pure function of (seed, e), so the sampler's
whole state is two integers; restoring it puts the next batch exactly where an
interrupted run would have taken it, without drawing the skipped batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

SAMPLER_STATE_VERSION = 1


class ResumableBatchSampler:
    """Shuffled mini-batches of row indices with an exact, checkpointable position."""

    def __init__(self, indices: torch.Tensor, batch_size: int, *, seed: int, shuffle: bool = True) -> None:
        self.indices = indices
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 1
        self.position = 0  # batches already taken in this epoch

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return self.indices
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return self.indices[torch.randperm(len(self.indices), generator=generator)]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (a no-op if already positioned inside it)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = self._order(self.epoch)
        while self.position < len(self):
            start = self.position * self.batch_size
            batch = order[start : start + self.batch_size]
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": SAMPLER_STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_indices": len(self.indices),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != SAMPLER_STATE_VERSION:
            raise ValueError(f"unsupported sampler state version {state.get('version')}")
        if state["num_indices"] != len(self.indices) or state["seed"] != self.seed:
            raise ValueError("the training split or seed differs from the checkpoint's")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def ordered_batches(indices: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Fixed-order batches for evaluation."""
    yield from torch.split(indices, batch_size)
