"""Deciding whether to resume, and whether a changed config may resume at all."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from topoclass.config import config_diff, config_from_dict
from topoclass.errors import ConfigError

logger = logging.getLogger(__name__)

# Keys that may differ on resume: they change how long or where the run goes, not what it computes.
SAFE_TO_CHANGE = (
    "train.epochs",
    "train.patience",
    # With another number of processes, accumulation keeps the global batch (and the data order).
    "train.accumulate_steps",
    "train.collective_timeout_s",
    "train.num_threads",
    "train.loggers",
    "train.progress_bar",
    "train.export_onnx",
    "train.device",
    "checkpoint.",
    "run_dir",
    "output_root",
    # Where the data is read from may change; what it holds is checked by the data fingerprint.
    "data.data_dir",
    "data.table",
    "data.cache_dir",
    "data.featurize_workers",
)

RESUME_MODES = ("auto", "ask", "never")


def resolve_resume_mode(requested: str, *, interactive: bool | None = None) -> str:
    """``default`` means ``ask`` on a terminal, ``auto`` otherwise: batch jobs never wait on a prompt."""
    if requested != "default":
        return requested
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    return "ask" if interactive else "auto"


def ask_to_resume(
    path: Path, *, ask: Callable[[str], str] = input, say: Callable[[str], None] = print
) -> bool:
    """Ask until the answer is y or n."""
    say(f"Found existing checkpoint: {path}")
    while True:
        try:
            answer = ask("Do you want to resume from this checkpoint? (y/n): ").strip().lower()
        except EOFError:
            raise ConfigError(
                "no answer to the resume question (stdin closed); use --resume auto|never"
            ) from None
        if answer in ("y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
        say("Please answer y or n.")


def check_config_drift(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Refuse changes that cannot apply to a resumed run; return the safe ones (to warn about).

    ``stored`` may come from an older release: it is read as a config first, so keys that
    were renamed since compare under their new names.
    """
    changed = config_diff(config_from_dict(stored, "checkpoint config").to_dict(), current)
    unsafe = [key for key in changed if not key.startswith(SAFE_TO_CHANGE)]
    if unsafe:
        raise ConfigError(
            "cannot resume: the config differs from the checkpoint's in "
            + ", ".join(unsafe)
            + " (start a new run with --run-dir, or restore these settings)"
        )
    return changed
