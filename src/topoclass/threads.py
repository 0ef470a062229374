"""How many CPU threads PyTorch may use: the CPUs this process was given, set once and logged.

PyTorch's default (every core it sees) is fast on an idle machine and slow on a shared
one: its threads wait for each other at every operation, so one busy core stalls them
all (measured on two cores with another process busy on one: 3.5x slower than one
thread). Shared login nodes and Slurm jobs on part of a node are the normal case, so:

- CPUs given to this process alone (an affinity mask, ``SLURM_CPUS_PER_TASK``, a cgroup
  quota smaller than the machine) are all used;
- on a machine it merely shares, one CPU is left for the others;
- processes of one job on one node (torchrun, ``serve --workers``) split the CPUs between them;
- ``train.num_threads`` overrides all of this.

The thread count can change floating-point reductions, so a run resumed with another
count continues correctly but not bit for bit; the count is logged at every start.

Python threads that share the work of one prediction (:func:`quick_switches`) hand Python's
lock over sooner than the interpreter's default allows.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


def available_cpus() -> tuple[int, bool]:
    """The CPUs this process may run on, and whether they were given to it (not just the machine's)."""
    machine = os.cpu_count() or 1
    limits = [machine]
    if hasattr(os, "sched_getaffinity"):
        limits.append(len(os.sched_getaffinity(0)))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits.append(int(slurm))
    quota = _cgroup_quota()
    if quota is not None:
        limits.append(quota)
    cpus = max(1, min(limits))
    return cpus, cpus < machine or bool(slurm)


def _cgroup_quota() -> int | None:
    """CPUs a cgroup quota allows (v2 ``cpu.max``, or v1 ``cfs_quota_us``), rounded up; None if unlimited."""
    candidates = [
        (Path("/sys/fs/cgroup/cpu.max"), None),
        (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")),
    ]
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()[:2]
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        except (OSError, ValueError):
            continue
        if quota in ("max", "-1"):
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    return None


# Set by a process that starts several topoclass processes on this node (``serve --workers``).
PROCESSES_ENV = "TOPOCLASS_PROCESSES_PER_NODE"


def node_processes() -> int | None:
    """Processes of this job on this node, as topoclass, torchrun or Slurm say (None when none does)."""
    for key in (PROCESSES_ENV, "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def cpu_share() -> int:
    """The CPUs this process may count on: those available, shared among the job's processes here."""
    return max(1, available_cpus()[0] // (node_processes() or 1))


def choose_threads(setting: int, local_processes: int | None = None) -> tuple[int, str]:
    """The thread count for ``train.num_threads`` (0: automatic), and why. ``local_processes``:
    this job's processes on this node (default: as torchrun or Slurm say)."""
    if setting > 0:
        return setting, "train.num_threads"
    if local_processes is None:
        local_processes = node_processes() or 1
    cpus, given = available_cpus()
    share = max(1, cpus // max(local_processes, 1))
    if given:
        return share, f"{cpus} CPUs given to this job" + (
            f", shared by {local_processes} processes" if local_processes > 1 else ""
        )
    if share > 1:
        return share - 1, f"{cpus} CPUs of a shared machine, one left for other processes"
    return share, f"{cpus} CPU"


def configure_threads(setting: int, local_processes: int = 1, *, announce: bool = True) -> int:
    """Set PyTorch's thread count once for this process, and say so (in the debug log only when
    not ``announce``: prediction's output stays the predictions)."""
    import torch  # here, not at the top: the thread policy serves runtimes without PyTorch too

    threads, reason = choose_threads(setting, local_processes)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    logger.log(
        logging.INFO if announce else logging.DEBUG,
        "Using %d CPU thread%s (%s; train.num_threads overrides)",
        threads,
        "s" * (threads > 1),
        reason,
    )
    return threads


# How long a thread that wants Python's lock waits before the holder must give it up, while
# threads share a prediction (the interpreter's default: 5 ms).
SWITCH_INTERVAL_S = 0.0001
_switching = threading.Lock()
_switch_users = 0
_switch_default = 0.0


@contextmanager
def quick_switches() -> Iterator[None]:
    """Python's thread switch interval lowered to :data:`SWITCH_INTERVAL_S` within the block
    (restored when the last such block ends: blocks may run in several threads at once).

    A thread that computes in a C library (ONNX Runtime, LightGBM) leaves the lock while it
    does, but needs it back for the few Python lines between two calls. Beside a thread that
    runs Python, it waited 5 ms for it each time: measured on two cores, ONNX Runtime beside a
    busy Python thread took 2.0x its time alone at the default, 1.0x at 0.1 ms, the Python
    thread not slower. Nothing else changes: it only decides when the lock changes hands.
    """
    global _switch_users, _switch_default
    with _switching:
        if _switch_users == 0:
            _switch_default = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_default, SWITCH_INTERVAL_S))
        _switch_users += 1
    try:
        yield
    finally:
        with _switching:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_default)
