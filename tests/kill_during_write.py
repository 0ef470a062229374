"""Run the topoclass command line with a SIGKILL injected into its N-th checkpoint commit.

Crash tests start this instead of ``python -m topoclass``: ``python kill_during_write.py N ARGS...``.
The hook runs after a checkpoint's files are in place and before its manifest, so the process
dies leaving a torn, uncommitted checkpoint behind.
"""

from __future__ import annotations

import os
import signal
import sys

from topoclass.checkpoint import storage
from topoclass.cli import main


def kill_at(commit: int) -> None:
    """Inject the kill into this process's ``commit``-th checkpoint commit (counted from 1)."""

    def hook(count: int) -> None:
        if count == commit:
            os.kill(os.getpid(), signal.SIGKILL)

    storage.COMMIT_HOOKS.append(hook)


if __name__ == "__main__":
    kill_at(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
