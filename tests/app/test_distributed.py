"""Several processes, as torchrun starts them (Gloo on the CPU): same results, same data, same guarantees."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from tests.helpers import cli_env, run_cli, start_ranks, write_small_config, write_synthetic_table
from topoclass.checkpoint.manager import read_checkpoint

pytestmark = pytest.mark.integration  # several training processes

TORCHRUN = Path(sys.executable).with_name("torchrun")


def config_for(tmp_path: Path, *, batch: int, accumulate: int = 1, epochs: int = 3, n: int = 150) -> Path:
    table = tmp_path / "t.csv"
    if not table.exists():
        write_synthetic_table(table, n)
    return write_small_config(
        tmp_path / f"c-{batch}-{accumulate}-{epochs}.yaml",
        table,
        train=f"epochs: {epochs}, batch_size: {batch}, accumulate_steps: {accumulate}, "
        "collective_timeout_s: 20",
        checkpoint="every_epochs: 1, every_minutes: 0, every_steps: 2",
    )


def model_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(checkpoint).state["model"]


def train_args(config: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--run-dir", str(run), "--resume", "auto", *extra]


def test_torchrun_with_two_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    one = run_cli(
        train_args(config_for(tmp_path, batch=16), tmp_path / "one", "--set", "model.dropout=0"), tmp_path
    )
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run(
        [
            str(TORCHRUN),
            *("--standalone", "--nproc_per_node", "2", "-m", "topoclass"),
            *train_args(config_for(tmp_path, batch=8), tmp_path / "two", "--set", "model.dropout=0"),
        ],
        capture_output=True,
        text=True,
        env=cli_env(tmp_path),
        timeout=600,
    )
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = (
        model_of(tmp_path / "one" / "checkpoints" / "checkpoint_epoch_3"),
        model_of(tmp_path / "two" / "checkpoints" / "checkpoint_epoch_3"),
    )
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-3, rtol=1e-3)
    # Logs and metrics come from the first process only.
    assert two.stdout.count("Starting epoch 2/3") == 1
    history = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3]


def sample_counts(prefix_glob: list[Path], attempts: list[str]) -> dict[int, dict[int, int]]:
    """Per epoch, how often each sample was trained on, counting for each step only its last attempt."""
    by_step: dict[tuple[int, int], tuple[int, list[int]]] = {}
    for attempt, name in enumerate(attempts):
        steps: dict[tuple[int, int], list[int]] = defaultdict(list)
        for path in prefix_glob:
            if not path.name.startswith(name):
                continue
            for line in path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    steps[(record["epoch"], record["position"])] += record["rows"]
        for key, rows in steps.items():
            by_step[key] = (attempt, rows)  # a step redone after a resume replaces the first try
    counts: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for (epoch, _), (_, rows) in by_step.items():
        for row in rows:
            counts[epoch][row] += 1
    return counts


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_killed_and_resumed_with_another_number_of_processes_every_sample_once_per_epoch(
    tmp_path, first, then
):
    epochs, n = 3, 150
    config = {w: config_for(tmp_path, batch=8, accumulate=2 // w, epochs=epochs, n=n) for w in (1, 2)}
    run = tmp_path / "run"
    processes = start_ranks(train_args(config[first], run), tmp_path, first, record_to=tmp_path / "first")
    for line in processes[0].stdout:
        if "Starting epoch 2" in line:
            break
    time.sleep(random.Random(first).uniform(0.2, 1.0))
    for process in processes:
        process.kill()  # the node is gone
        process.wait()
    resumed = start_ranks(train_args(config[then], run), tmp_path, then, record_to=tmp_path / "then")
    outputs = [process.communicate(timeout=600)[0] for process in resumed]
    assert [process.returncode for process in resumed] == [0] * then, outputs[0][-3000:]
    assert "Checkpoint loaded from epoch" in outputs[0]
    final = read_checkpoint(run / "checkpoints" / f"checkpoint_epoch_{epochs}")
    assert final.state["trainer"]["completed_epochs"] == epochs
    split = json.loads((run / "split.json").read_text())
    train_rows = len(split["train"])
    counts = sample_counts(sorted(tmp_path.glob("*.jsonl")), ["first", "then"])
    assert sorted(counts) == list(range(1, epochs + 1))
    for epoch, seen in counts.items():
        assert len(seen) == train_rows and set(seen.values()) == {1}, f"epoch {epoch}"


def test_a_stop_signal_to_one_process_stops_all_at_the_same_step(tmp_path):
    config = config_for(tmp_path, batch=8, epochs=4, n=200)
    run = tmp_path / "run"
    processes = start_ranks(train_args(config, run), tmp_path, 2)
    for line in processes[0].stdout:
        if "Starting epoch 2" in line:
            processes[1].send_signal(signal.SIGTERM)
            break
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [75, 75], outputs
    assert "Stop requested (another process)" in outputs[0]
    mid_epoch = list((run / "checkpoints").glob("checkpoint_epoch_2_step_*"))
    assert len(mid_epoch) == 1  # one checkpoint, committed once, at the step both stopped at
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    resumed = run_cli(["resume", str(run)], tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr


def test_a_killed_process_takes_the_job_down_with_a_message_and_the_job_resumes(tmp_path):
    config = config_for(tmp_path, batch=8, epochs=4, n=200)
    run = tmp_path / "run"
    processes = start_ranks(train_args(config, run), tmp_path, 2)
    for line in processes[0].stdout:
        if "Starting epoch 2" in line:
            processes[1].kill()
            break
    started = time.monotonic()
    output = processes[0].communicate(timeout=120)[0]
    processes[1].wait()
    assert time.monotonic() - started < 60, "the surviving process waited too long"
    assert processes[0].returncode == 75, output
    assert "another process of this training job stopped answering" in output
    resumed = run_cli(["resume", str(run)], tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr


def test_the_slurm_template_is_valid_bash_and_requeues_on_75(tmp_path):
    template = run_cli(
        ["slurm-template", "--gpus", "2", "--nodes", "2", "--", "--config", "my.yaml"], tmp_path
    )
    assert template.returncode == 0, template.stderr
    script = tmp_path / "job.sbatch"
    script.write_text(template.stdout)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    for line in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@", "--resume auto", "scontrol requeue"):
        assert line in template.stdout
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for tool, code in (("srun", 75), ("scontrol", 0), ("sbatch", 0)):
        fake = bin_dir / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit {code}\n')
        fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "n1"}
    finished = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    logged = calls.read_text()
    assert "srun" in logged and "scontrol requeue 4242" in logged, logged + finished.stderr
    shutil.rmtree(bin_dir)
