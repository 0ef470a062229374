"""Run the ``topoclass`` command as a user would, in a fresh process, and time it."""

from __future__ import annotations

import subprocess
import sys
import time


def topoclass(args: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Standard output and wall seconds of ``topoclass ARGS``; exits with its output if it fails."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "topoclass.cli", *args], capture_output=True, text=True, env=env, check=False
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"topoclass {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout, elapsed
