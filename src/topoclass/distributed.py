"""The processes of one training job: who this one is, and the few collectives training needs.

torchrun (or Slurm's ``srun``) starts the processes; topoclass only reads the
standard environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` from torchrun, or ``SLURM_PROCID``, ``SLURM_NTASKS`` and
``SLURM_LOCALID`` from ``srun`` (then ``MASTER_ADDR`` and ``MASTER_PORT`` must be
exported by the job script). A single process is the same code with a world of
one, where every collective is a no-op, and PyTorch is not even imported (a screening
process needs none). Every collective has a timeout, so a process whose peer died fails
with a message instead of waiting for ever.
"""

from __future__ import annotations

import datetime
import gc
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from topoclass.errors import ConfigError

if TYPE_CHECKING:
    import torch


class PeerFailedError(RuntimeError):
    """Another process of the job stopped answering (it died, or its node did)."""


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_primary(self) -> bool:
        """Rank 0 writes logs, metrics and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over all processes (in place, and returned)."""
        if self.distributed:
            import torch.distributed as dist

            _collective(dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any (a stop request, say)."""
        if not self.distributed:
            return flag
        import torch

        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item() > 0)

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every process's rows concatenated in rank order, on every process (sizes may differ)."""
        if not self.distributed:
            return rows
        import torch
        import torch.distributed as dist

        sizes: list[Any] = [None] * self.world_size
        _collective(dist.all_gather_object, sizes, int(rows.shape[0]))
        width = max(int(size) for size in sizes if size is not None)
        padded = rows.new_zeros((width, *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        _collective(dist.all_gather, parts, padded.to(self.device))
        return torch.cat([part[: int(size)].to(rows.device) for part, size in zip(parts, sizes, strict=True)])

    def gather_objects(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order, on every process."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        _collective(dist.all_gather_object, values, value)
        return values

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            _collective(dist.barrier)

    @property
    def device(self) -> torch.device:
        """Where this group's collectives run: the local GPU with NCCL, else the CPU (Gloo)."""
        import torch
        import torch.distributed as dist

        if self.distributed and dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


# What a collective says when a peer's connection is gone (Gloo) or its communicator broke (NCCL).
_PEER_MESSAGES = (
    "connection closed",
    "connection reset",
    "broken pipe",
    "timed out",
    "timeout",
    "nccl",
    "gloo",
)


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` came from a collective whose peer died or stopped answering."""
    if isinstance(error, PeerFailedError):
        return True
    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _PEER_MESSAGES)


def peer_failed(error: BaseException) -> PeerFailedError:
    """The one-line error a process reports when the job lost one of its processes."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return PeerFailedError(
        f"another process of this training job stopped answering ({first}); every process stops, "
        "and the job resumes from its last checkpoint when restarted"
    )


def _collective(operation: Any, *args: Any, **kwargs: Any) -> None:
    try:
        operation(*args, **kwargs)
    except RuntimeError as error:
        raise peer_failed(error) from error


def environment_group() -> ProcessGroup:
    """This process's rank and world size from torchrun's or Slurm's environment (1 process if none)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        keys = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    else:
        return ProcessGroup()
    try:
        rank, world, local = (int(env.get(key, "0")) for key in keys)
    except ValueError:
        raise ConfigError(f"{', '.join(keys)} must be integers") from None
    return ProcessGroup(rank=rank, world_size=world, local_rank=local)


def start(group: ProcessGroup, device: torch.device | str, timeout_s: float) -> None:
    """Join the job's process group (NCCL on CUDA, Gloo on the CPU); nothing for a single process."""
    if not group.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        return
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ConfigError(f"{key} is not set: start with torchrun, or export it in the job script")
    dist.init_process_group(
        backend="nccl" if str(device).startswith("cuda") else "gloo",
        rank=group.rank,
        world_size=group.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def stop() -> None:
    """Leave the process group (after training, or when it failed)."""
    dist = sys.modules.get("torch.distributed")  # a job that never joined one never loaded it
    if dist is not None and dist.is_initialized():
        # A DistributedDataParallel model in a reference cycle keeps Gloo's pending work alive
        # until the interpreter is torn down, and freeing it then aborts the process (SIGABRT,
        # "terminate called without an active exception", about one stop in ten): freed now.
        gc.collect()
        dist.destroy_process_group()
