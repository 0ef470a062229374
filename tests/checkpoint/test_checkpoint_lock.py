from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from topoclass.checkpoint.lock import LOCK_FILE, CheckpointLock
from topoclass.errors import CheckpointLockedError

pytestmark = pytest.mark.integration  # starts topoclass processes


def _start_holder(directory: Path) -> subprocess.Popen:
    """A real process that takes the lock, says so, and sleeps."""
    script = textwrap.dedent(
        f"""
        import time
        from topoclass.checkpoint.lock import CheckpointLock
        lock = CheckpointLock({str(directory)!r})
        lock.acquire()
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_live_owner_blocks_a_second_trainer(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        with pytest.raises(CheckpointLockedError) as caught:
            CheckpointLock(tmp_path).acquire()
        message = str(caught.value)
        assert f"checkpoint directory {tmp_path} is in use by PID {holder.pid}" in message
        assert f"on {socket.gethostname()} since " in message
    finally:
        holder.terminate()
        holder.wait(timeout=10)


def test_lock_of_a_sigkilled_owner_is_taken_over_with_a_warning(tmp_path, caplog):
    holder = _start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid

    lock = CheckpointLock(tmp_path)
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    try:
        assert f"Taking over stale lock of dead process PID {holder.pid}" in caplog.text
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] != holder.pid
    finally:
        lock.release()


def test_clean_release_lets_the_next_owner_in_silently(tmp_path, caplog):
    with CheckpointLock(tmp_path) as lock:
        assert lock.held
        with pytest.raises(CheckpointLockedError):
            CheckpointLock(tmp_path).acquire()  # a second handle, even in the same process
    assert not lock.held
    with caplog.at_level(logging.WARNING), CheckpointLock(tmp_path):
        pass
    assert "stale" not in caplog.text
    assert (tmp_path / LOCK_FILE).read_text() == ""
