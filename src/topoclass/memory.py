"""Memory: what the process and each CUDA device hold, releasing caches, and telling an OOM apart.

A multi-day run should say how close it is to the limit before it hits it: the
trainer logs one :class:`MemoryReport` line per epoch, writes its figures to the
metrics file and shows the current ones in the progress bar. When a step does run
out of memory, :func:`is_out_of_memory` recognizes it (CUDA's ``OutOfMemoryError``,
Python's ``MemoryError``, or an allocator's ``RuntimeError``) so the trainer can
retry the step in smaller pieces instead of dying.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
from dataclasses import dataclass, field

import torch

GIB = 1 << 30
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# Allocator messages of an out-of-memory failure that surfaces as a plain RuntimeError.
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "defaultcpuallocator")


def process_rss_bytes() -> int:
    """Resident memory of this process now (Linux: /proc; elsewhere the peak, the best available)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The most resident memory this process has held."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS reports bytes, Linux KiB


@dataclass(frozen=True)
class DeviceMemory:
    """One CUDA device: what tensors use, what the caching allocator holds, the peak and the total."""

    name: str
    allocated: int
    reserved: int
    peak: int
    total: int


@dataclass(frozen=True)
class MemoryReport:
    """Memory of the process and of the CUDA devices it uses."""

    rss: int
    peak_rss: int
    devices: list[DeviceMemory] = field(default_factory=list)

    def line(self) -> str:
        """``memory: RSS 1.4 GiB (peak 1.6 GiB); cuda:0 5.2/80.0 GiB, peak 7.9 GiB``."""
        parts = [f"RSS {self.rss / GIB:.1f} GiB (peak {self.peak_rss / GIB:.1f} GiB)"]
        parts += [
            f"{d.name} {d.allocated / GIB:.1f}/{d.total / GIB:.1f} GiB, peak {d.peak / GIB:.1f} GiB"
            for d in self.devices
        ]
        return "memory: " + "; ".join(parts)

    def short(self) -> str:
        """The current figures for a progress bar."""
        text = f"{self.rss / GIB:.1f}G"
        return text + "".join(f" {d.name} {d.allocated / GIB:.1f}G" for d in self.devices)

    def fields(self) -> dict[str, float]:
        """Figures in GiB for the metrics file."""
        values = {"rss_gib": self.rss / GIB, "peak_rss_gib": self.peak_rss / GIB}
        for d in self.devices:
            values.update(
                {
                    f"{d.name}_allocated_gib": d.allocated / GIB,
                    f"{d.name}_reserved_gib": d.reserved / GIB,
                    f"{d.name}_peak_gib": d.peak / GIB,
                }
            )
        return values


def memory_report(device: torch.device) -> MemoryReport:
    """Memory now, with the CUDA device's figures when ``device`` is one."""
    devices = []
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        devices.append(
            DeviceMemory(
                name=f"cuda:{index}",
                allocated=torch.cuda.memory_allocated(index),
                reserved=torch.cuda.memory_reserved(index),
                peak=torch.cuda.max_memory_allocated(index),
                total=torch.cuda.get_device_properties(index).total_memory,
            )
        )
    return MemoryReport(process_rss_bytes(), peak_rss_bytes(), devices)


def release_memory(device: torch.device) -> None:
    """Collect garbage and hand cached CUDA blocks back to the driver (other processes may want them)."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` means an allocation failed (CUDA or host)."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _OOM_MESSAGES)
