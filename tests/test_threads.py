"""The thread policy: the CPUs a process was given, one left on a shared machine, an override."""

from __future__ import annotations

import logging

import pytest
import torch

from topoclass import threads


@pytest.fixture
def machine(monkeypatch):
    """A 16-CPU machine with no cgroup quota; tests narrow it down."""
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    for name in ("SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", threads.PROCESSES_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_shared_machine_keeps_one_cpu_for_the_others(machine):
    assert threads.choose_threads(0) == (15, "16 CPUs of a shared machine, one left for other processes")


def test_the_cpus_of_an_affinity_mask_slurm_or_a_quota_are_all_used(machine):
    machine.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert threads.choose_threads(0)[0] == 4
    machine.setenv("SLURM_CPUS_PER_TASK", "3")
    assert threads.choose_threads(0)[0] == 3
    machine.setattr(threads, "_cgroup_quota", lambda: 2)
    assert threads.choose_threads(0)[0] == 2


def test_processes_of_one_job_share_the_cpus_and_the_setting_wins(machine):
    machine.setenv("SLURM_CPUS_PER_TASK", "8")
    assert threads.choose_threads(0, local_processes=4)[0] == 2
    assert threads.choose_threads(6, local_processes=4) == (6, "train.num_threads")


def test_torchrun_processes_share_the_node_without_being_told(machine):
    # A screen or a prediction under torchrun: each process gets its part of the node.
    machine.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads.node_processes() == 4
    machine.delenv("LOCAL_WORLD_SIZE")
    assert threads.node_processes() is None and threads.cpu_share() == 16
    machine.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads.choose_threads(0)[0] == 3  # 16 // 4, one left on a shared machine
    assert threads.cpu_share() == 4
    machine.setenv("LOCAL_WORLD_SIZE", "32")
    assert threads.choose_threads(0)[0] == 1 and threads.cpu_share() == 1


def test_server_workers_share_the_node_whatever_torchrun_says(machine):
    machine.setenv("LOCAL_WORLD_SIZE", "1")
    machine.setenv(threads.PROCESSES_ENV, "8")  # what `serve --workers 8` tells its workers
    assert threads.node_processes() == 8 and threads.cpu_share() == 2


def test_a_one_cpu_machine_gets_one_thread(machine):
    machine.setattr(threads.os, "cpu_count", lambda: 1)
    machine.setattr(threads.os, "sched_getaffinity", lambda pid: {0})
    assert threads.choose_threads(0)[0] == 1


def test_configure_sets_torch_and_logs(machine, caplog):
    caplog.set_level(logging.INFO)
    before = torch.get_num_threads()
    try:
        assert threads.configure_threads(3) == 3 and torch.get_num_threads() == 3
        assert "Using 3 CPU threads (train.num_threads" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_the_cgroup_v2_quota_is_read(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("250000 100000\n")
    monkeypatch.setattr(threads, "Path", lambda p: cpu_max if p.endswith("cpu.max") else tmp_path / "none")
    assert threads._cgroup_quota() == 3
    cpu_max.write_text("max 100000\n")
    assert threads._cgroup_quota() is None


def test_quick_switches_lower_the_interval_until_the_last_overlapping_block_ends():
    import sys
    import threading

    default = sys.getswitchinterval()
    assert default > threads.SWITCH_INTERVAL_S
    inside, release = threading.Event(), threading.Event()

    def other_block() -> None:
        with threads.quick_switches():
            inside.set()
            release.wait(10)

    with threads.quick_switches():
        assert sys.getswitchinterval() == pytest.approx(threads.SWITCH_INTERVAL_S)
        other = threading.Thread(target=other_block)
        other.start()
        assert inside.wait(10)
    assert sys.getswitchinterval() == pytest.approx(threads.SWITCH_INTERVAL_S)  # the other block still runs
    release.set()
    other.join(10)
    assert sys.getswitchinterval() == default
