"""Which chunks this process screens: a Slurm array task's share (``--shard I/N``), split again
among the processes torchrun (or srun) started for it.

Chunk ``c`` belongs to worker ``c % workers``, where the workers are the shards times the
processes of each: the same chunks for the same command, whatever was done before, so any
mix of reruns, arrays and process counts screens each chunk exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from topoclass.distributed import ProcessGroup
from topoclass.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1


def parse_shard(text: str) -> Shard:
    """``"I/N"`` with 0 <= I < N; ConfigError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise ConfigError(
            f"--shard must be I/N with 0 <= I < N (e.g. 3/10, or $SLURM_ARRAY_TASK_ID/10), not '{text}'"
        )
    return Shard(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class Assignment:
    """This process's place among every worker of a screen."""

    worker: int
    workers: int

    @classmethod
    def of(cls, shard: Shard, group: ProcessGroup) -> Assignment:
        return cls(shard.index * group.world_size + group.rank, shard.count * group.world_size)

    def owns(self, chunk: int) -> bool:
        return chunk % self.workers == self.worker

    def chunks(self, total: int) -> list[int]:
        return list(range(self.worker, total, self.workers))
