"""The protocol of things a checkpoint can hold, and the random-number state.

Anything with ``state_dict()``/``load_state_dict()`` (models, optimizers,
schedulers, grad scalers, the trainer's own counters) is :class:`Stateful`.
:class:`RNGState` makes every random generator a run depends on Stateful too, so
that a resumed run draws exactly the numbers the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from topoclass.distributed import ProcessGroup
from topoclass.errors import CheckpointError

log = logging.getLogger(__name__)


@runtime_checkable
class Stateful(Protocol):
    """An object whose state can be captured as a tree and restored from it."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RNGState:
    """Python ``random``, NumPy's legacy global generator, torch CPU and every CUDA device.

    Restoring is bit-exact on the same kind of machine. CUDA generator states are
    per device: when the checkpoint holds a different number of CUDA devices
    than this machine has (for example a GPU run resumed on a CPU-only machine),
    the CUDA states are left as they are and a warning says so, because the run
    can continue correctly, it just will not draw the same GPU random numbers.
    """

    def state_dict(self) -> dict[str, Any]:
        """Capture all generator states now."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "python": random.getstate(),
            "numpy": np.random.get_state(legacy=True),
            "torch": torch.get_rng_state(),
            "cuda": list(cuda),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore generator states captured by :meth:`state_dict` (possibly via a checkpoint)."""
        try:
            version, internal, gauss_next = state["python"]
            # JSON has no tuples; random.setstate insists on them, all the way down.
            random.setstate((version, tuple(internal), gauss_next))
            np.random.set_state(tuple(state["numpy"]))
            torch.set_rng_state(_byte_tensor(state["torch"]))
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"cannot restore random-number state: {error}") from None
        self._load_cuda([_byte_tensor(item) for item in state.get("cuda", [])])

    @staticmethod
    def _load_cuda(saved: list[torch.Tensor]) -> None:
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if len(saved) != available:
            if saved or available:
                log.warning(
                    "CUDA random state not restored: the checkpoint holds %d device(s), this machine has %d; "
                    "the run continues but GPU random numbers differ from an uninterrupted run",
                    len(saved),
                    available,
                )
            return
        if saved:
            torch.cuda.set_rng_state_all(saved)


def _byte_tensor(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
        raise CheckpointError("cannot restore random-number state: generator state is not a uint8 tensor")
    return value.cpu()


class JobRNGState:
    """The random streams of every process of a job, saved together and restored per process.

    Saving gathers each process's :class:`RNGState` (a collective: every process saves at
    the same step). Restoring gives each process its own stream back. When the job now has
    another number of processes, process r takes stream r modulo the saved count: the run
    continues correctly, but its random draws (dropout) are not those of the original job.
    """

    def __init__(self, group: ProcessGroup | None = None) -> None:
        self.group = group or ProcessGroup()
        self.local = RNGState()

    def state_dict(self) -> dict[str, Any]:
        return {"processes": self.group.gather_objects(self.local.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        processes = state.get("processes") if isinstance(state, dict) else None
        if not isinstance(processes, list) or not processes:
            raise CheckpointError("cannot restore random-number state: no per-process streams")
        if len(processes) != self.group.world_size:
            log.warning(
                "The checkpoint holds the random streams of %d process(es), this job has %d: the run "
                "continues from the same sample, with other random draws than the original job",
                len(processes),
                self.group.world_size,
            )
        self.local.load_state_dict(processes[self.group.rank % len(processes)])
