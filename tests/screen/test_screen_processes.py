"""Real processes: a screen killed (SIGKILL) and stopped (SIGTERM) continues to the same rows;
two torchrun processes give the rows of one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.helpers import cli_env, free_port, run_cli, start_cli
from tests.screen.conftest import write_folder
from topoclass.errors import EXIT_RESUMABLE

pytestmark = pytest.mark.integration


def read_rows(out: Path) -> pd.DataFrame:
    return pq.read_table(sorted(out.glob("part-*.parquet"))).to_pandas()


def committed(out: Path) -> int:
    return len(list((out / "_chunks").glob("chunk-*.json"))) if (out / "_chunks").is_dir() else 0


def signal_after_commits(process: subprocess.Popen, out: Path, commits: int, signum: int) -> None:
    """Send ``signum`` once ``commits`` chunks are committed in ``out``."""
    deadline = time.monotonic() + 300
    while committed(out) < commits and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, process.stdout.read()
    process.send_signal(signum)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("inputs") / "cifs", 40)


def test_killed_then_stopped_screen_continues_to_the_rows_of_an_uninterrupted_one(model, folder, tmp_path):
    reference = tmp_path / "reference"
    model.screen([folder], reference, chunk_size=1)
    out = tmp_path / "out"
    args = ["screen", "tqc2020", str(folder), "-o", str(out), "--chunk-size", "1"]

    killed = start_cli(args, tmp_path)
    signal_after_commits(killed, out, 3, signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    after_kill = committed(out)
    assert 3 <= after_kill < 40

    stopped = start_cli(args, tmp_path)
    signal_after_commits(stopped, out, after_kill + 2, signal.SIGTERM)
    output = stopped.communicate(timeout=120)[0]
    assert stopped.returncode == EXIT_RESUMABLE, output
    assert "stopped" in output and committed(out) < 40

    finished = run_cli(args, tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "Screened 40 inputs" in finished.stdout and "40 answered, 0 skipped" in finished.stdout
    rows = read_rows(out)
    assert rows["id"].is_unique
    pd.testing.assert_frame_equal(rows, read_rows(reference))


def test_two_torchrun_processes_give_the_rows_of_one(model, folder, tmp_path):
    reference = tmp_path / "reference"
    model.screen([folder], reference, chunk_size=7)
    out = tmp_path / "out"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    screen = ["-m", "topoclass", "screen", "tqc2020", str(folder), "-o", str(out), "--chunk-size", "7"]
    command = [*launcher, "--master_port", str(free_port()), *screen]
    done = subprocess.run(command, capture_output=True, text=True, env=cli_env(tmp_path), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Screened 40 inputs") == 1  # rank 0 merges and reports
    pd.testing.assert_frame_equal(read_rows(out), read_rows(reference))
    assert (out / "candidates.csv").read_text() == (reference / "candidates.csv").read_text()
