"""How topoclass's log lines look: one format for every command and every server process."""

from __future__ import annotations

import logging
from typing import TextIO


def configure_logging(level: int, stream: TextIO) -> None:
    """Send log records at ``level`` and above to ``stream``, each line with its time and severity."""
    # Batch-job logs are read hours later: every line says when and how serious.
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=stream,
    )
