"""A resumable data order: the position inside an epoch is state, not something to replay.

The permutation of epoch ``e`` is a pure function of (seed, e). An optimizer step
takes the next ``batch_size x accumulate_steps x world_size`` samples of it; each
process takes every ``world_size``-th of them. The sampler's whole state is the
epoch and the number of samples already taken in it, so a run resumes at the
exact sample where it stopped, also with another number of processes: the global
order does not depend on how many share it. When the last step of an epoch does
not divide evenly, a process that would get fewer rows is padded with a repeated
row of weight 0 (it adds nothing to the loss): every sample is seen once per
epoch, none is skipped and none counts twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

SAMPLER_STATE_VERSION = 2


class ResumableSampler:
    """Shuffled optimizer steps of row indices, shared between processes, with an exact position."""

    def __init__(
        self,
        indices: torch.Tensor,
        batch_size: int,
        *,
        seed: int,
        accumulate_steps: int = 1,
        world_size: int = 1,
        rank: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.indices = indices
        self.batch_size = batch_size
        self.accumulate_steps = accumulate_steps
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 1
        self.position = 0  # samples of this epoch already taken, by all processes together
        self._order: tuple[int, torch.Tensor] | None = None

    @property
    def step_size(self) -> int:
        """Samples in one optimizer step, all processes together."""
        return self.batch_size * self.accumulate_steps * self.world_size

    def __len__(self) -> int:
        """Optimizer steps per epoch."""
        return -(-len(self.indices) // self.step_size)

    @property
    def steps_taken(self) -> int:
        return -(-self.position // self.step_size)

    def order(self, epoch: int) -> torch.Tensor:
        """Every training row of ``epoch``, in the order the epoch takes them."""
        if not self.shuffle:
            return self.indices
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, self.indices[torch.randperm(len(self.indices), generator=generator)])
        return self._order[1]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first sample (a no-op if already positioned inside it)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    @property
    def epoch_done(self) -> bool:
        return self.position >= len(self.indices)

    def next_rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This process's rows of the next optimizer step and their weights (None: all 1), not yet taken."""
        chunk = self.order(self.epoch)[self.position : self.position + self.step_size]
        if self.world_size == 1:
            return chunk, None
        share = chunk[self.rank :: self.world_size]
        width = -(-len(chunk) // self.world_size)
        weight = torch.ones(width)
        if len(share) < width:
            padding = chunk[:1].repeat(width - len(share))
            weight[len(share) :] = 0.0
            share = torch.cat([share, padding])
        return share, weight

    def advance(self) -> None:
        """Mark the next optimizer step's samples as taken."""
        self.position = min(self.position + self.step_size, len(self.indices))

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


def ordered_batches(
    indices: torch.Tensor, batch_size: int, *, atoms: torch.Tensor | None = None, max_atoms: int = 0
) -> Iterator[torch.Tensor]:
    """Consecutive batches of at most ``batch_size`` rows and, with ``max_atoms``, at most that many
    atoms (by ``atoms[row]``; a single larger material is a batch of its own)."""
    if atoms is None or max_atoms <= 0:
        yield from torch.split(indices, batch_size)
        return
    start, total = 0, 0
    counts = atoms[indices].tolist()
    for end, count in enumerate(counts):
        if end > start and (end - start >= batch_size or total + count > max_atoms):
            yield indices[start:end]
            start, total = end, 0
        total += count
    if start < len(counts):
        yield indices[start:]
