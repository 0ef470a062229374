"""One trainer per checkpoint directory.

The lock is ``<directory>/.lock``: a small JSON file naming the owner (PID,
host, start time) that the owner keeps ``fcntl.flock``-ed. The kernel drops a
flock when its process dies, however it dies (SIGKILL, OOM killer, power cut
followed by reboot), so a lock can never outlive its owner: a lock file whose
flock is free belongs to a dead process and is taken over with a warning. The
file itself is never deleted, because deleting a lock file races with another
process that has just opened it. flock is reliable on local filesystems; on
network filesystems it depends on the server.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from topoclass.errors import CheckpointLockedError, WriteError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class CheckpointLock:
    """Exclusive ownership of a checkpoint directory, for ``with`` or acquire()/release()."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object currently owns the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise CheckpointLockedError naming the live owner."""
        if self._fd is not None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise WriteError(self.path, error) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise CheckpointLockedError(
                f"checkpoint directory {self.directory} is in use by PID {owner.get('pid', '?')} "
                f"on {owner.get('host', '?')} since {owner.get('started', '?')}"
            ) from None
        previous = _read_owner(fd)
        if previous:
            log.warning(
                "Taking over stale lock of dead process PID %s (host %s, started %s) in %s",
                previous.get("pid", "?"),
                previous.get("host", "?"),
                previous.get("started", "?"),
                self.directory,
            )
        _write_owner(fd)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up; the file stays, emptied, so the next owner sees no stale owner."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> CheckpointLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _read_owner(fd: int) -> dict[str, object]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return {}
    try:
        owner = json.loads(raw)
    except ValueError:
        return {"pid": "?", "host": "?", "started": "?"}  # a torn write by an owner that died mid-write
    return owner if isinstance(owner, dict) else {}


def _write_owner(fd: int) -> None:
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(owner).encode())
    os.fsync(fd)


def live_writer(directory: Path) -> dict[str, object] | None:
    """The owner recorded in ``directory``'s lock if it may still be writing, else None.

    Read without taking the lock (a reader must never make a trainer's acquire fail). A
    released lock is empty; an owner on this host is live while its PID exists; one on
    another host is taken to be live (its PID cannot be checked from here).
    """
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        owner = _read_owner(fd)
    finally:
        os.close(fd)
    if not owner:
        return None
    if owner.get("host") != socket.gethostname():
        return owner
    try:
        os.kill(int(str(owner.get("pid"))), 0)
    except (ProcessLookupError, ValueError):
        return None
    except PermissionError:
        return owner  # exists, owned by someone else
    return owner
